"""The ``render`` stage: approved → rendered. Clips from the approved images, then the music video.

How this works: the timeline (pure math, ``timeline.py``) turns the segment
plan into clip requests with exact frame counts: one per segment for a backend
that makes any length, a trimmed, slowed or chained clip for a capped one.
Each clip is a job (``jobs.ensure_job``): recorded before it starts, checked
after it ends (a clip that is not a readable video of the requested frames is
made again, never passed on), never made twice once done. Then one ffmpeg
pass assembles the video with the song's audio, verifies it, and writes it
under its final name; the thumbnail and contact sheet follow. Only then does
the engine move the run to ``rendered/``, so nothing half-made is ever there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.approval.store import ApprovalStore, approved_images
from daemon.backends.base import Job, VideoBackend, job_id
from daemon.config import Settings
from daemon.errors import PermanentError, TransientError
from daemon.music.plan import Segment
from daemon.music.segments_file import read_segments
from daemon.runs.engine import StageRun
from daemon.runs.states import State
from daemon.stages.candidates import seed_for
from daemon.stages.jobs import Attempt, ensure_checked, ensure_job, start_job
from daemon.video import media, qc
from daemon.video.timeline import ClipRequest, Timeline, build_timeline

log = structlog.get_logger("tandava.render")

CLIPS_DIR = "clips"
THUMBNAIL = "thumbnail.jpg"
CONTACT_SHEET = "contact_sheet.png"
ASSEMBLY_TIMEOUT_BASE = 120.0


def make_video_backend(settings: Settings) -> VideoBackend:
    """The configured video backend."""
    from daemon.backends.kenburns import KenBurnsBackend

    return KenBurnsBackend(media.find_ffmpeg(settings.assembly.ffmpeg))


def plan_timeline(settings: Settings, segments: list[Segment], max_frames: int | None) -> Timeline:
    """The timeline for a run's segments under this installation's settings."""
    cfg = settings.assembly
    fps = settings.video.fps
    return build_timeline(
        [s.start for s in segments] + [segments[-1].end],
        fps=fps,
        max_frames=max_frames,
        max_slowdown=settings.clips.max_slowdown,
        section_cuts=[b.section != a.section for a, b in zip(segments, segments[1:], strict=False)],
        transition=cfg.transition,
        transition_frames=round(cfg.transition_seconds * fps) if cfg.transition != "none" else 0,
    )


class Render:
    """approved → rendered."""

    def __init__(
        self, settings: Settings, backend_for: Callable[[Settings], VideoBackend] = make_video_backend
    ) -> None:
        self.settings = settings
        self.backend_for = backend_for

    def __call__(self, job: StageRun) -> None:
        from daemon.stages.song import song_of
        from daemon.video.assembly import (
            assemble,
            thumbnail_time,
            write_contact_sheet,
            write_thumbnail,
        )

        song = song_of(job)
        ffmpeg = media.find_ffmpeg(self.settings.assembly.ffmpeg)
        segments = read_segments(job.ref.path)
        backend: VideoBackend = self.backend_for(self.settings)
        timeline = plan_timeline(self.settings, segments, backend.max_frames)
        images = approved_images(job.ref, job.manifest, ApprovalStore(job.store).load(job.ref), len(segments))
        clips: list[Path] = []
        # Every clip that does not start from another clip's last frame is
        # handed to the backend first, so a GPU server always has one queued.
        for request in timeline.clips:
            if request.chained_from is None:
                jid, make = self._attempt(job, backend, request, segments[request.segment], images, [], ffmpeg)(0)
                existing = job.manifest.jobs.get(jid)
                if existing is None or existing.status != "failed":
                    start_job(job, backend, jid, make)
        for request in timeline.clips:
            record = self._clip(job, backend, request, segments[request.segment], images, clips, ffmpeg)
            clips.append(job.ref.path / record.output)
        if not job.is_done("assembly") or not (job.ref.path / "final.mp4").is_file():
            result = assemble(
                timeline, clips, song, job.ref.path,
                width=self.settings.video.width, height=self.settings.video.height,
                cfg=self.settings.assembly, ffmpeg=ffmpeg,
                # A hung ffmpeg must not hold the run forever; even a slow machine
                # assembles faster than twice real time.
                timeout=ASSEMBLY_TIMEOUT_BASE + 2 * timeline.duration,
            )
            job.done("assembly", video=result.final.name, frames=result.info.frames,
                     seconds=round(result.seconds, 2), exports=",".join(p.name for p in result.exports.values()))
        if not job.is_done("thumbnail"):
            write_thumbnail(job.ref.path / "final.mp4", job.ref.path / THUMBNAIL,
                            at_seconds=thumbnail_time(segments), ffmpeg=ffmpeg)
            labels = [f"{s.index:02d} {s.start:05.1f}-{s.end:05.1f}s {s.mood}" for s in segments]
            write_contact_sheet(list(zip(images, labels, strict=True)), job.ref.path / CONTACT_SHEET)
            job.done("thumbnail")
        # The engine moves the run to rendered/ next: name the video where it will
        # stay, not in approved/, which it leaves a moment later.
        log.info("render.done", video="final.mp4",
                 path=str(job.store.dir_for(State.RENDERED) / job.ref.run_id / "final.mp4"))

    def _attempt(self, job: StageRun, backend: VideoBackend, request: ClipRequest, segment: Segment,
                 images: list[Path], clips: list[Path], ffmpeg: str) -> Attempt:
        """Attempt ``n`` at a clip: its job id and record; each attempt has a new seed."""
        output = f"{CLIPS_DIR}/s{segment.index:03d}_p{request.part:02d}.mp4"
        source = images[segment.index].relative_to(job.ref.path).as_posix()
        if request.chained_from is not None:
            source = self._chain_start(clips[request.chained_from], request, job, ffmpeg)

        def attempt(n: int) -> tuple[str, Callable[[], Job]]:
            seed = seed_for(job.manifest.song.sha256, segment.index, 1000 + request.part,
                            self.settings.analysis.seed + 7919 * n)
            jid = job_id(job.ref.run_id, "clip", segment.index, request.part, seed)
            return jid, lambda: Job(
                id=jid, kind="clip", backend=backend.name, segment=segment.index, seed=seed,
                index=request.part, prompt=segment.motion_prompt, negative_prompt=segment.negative_prompt,
                width=self.settings.video.width, height=self.settings.video.height,
                frames=request.frames, fps=self.settings.video.fps, source=source, output=output,
            )

        return attempt

    def _clip(self, job: StageRun, backend: VideoBackend, request: ClipRequest, segment: Segment,
              images: list[Path], clips: list[Path], ffmpeg: str) -> Job:
        attempt = self._attempt(job, backend, request, segment, images, clips, ffmpeg)
        if not getattr(backend, "checks_output", False):
            jid, record = attempt(0)
            return ensure_job(job, backend, jid, record, check=_check_clip)

        def check(path: Path, record: Job) -> None:
            stats = qc.check_clip(path, expected_frames=record.frames, start_image=job.ref.path / record.source)
            record.detail.update({k: round(v, 3) for k, v in stats.figures().items()})

        return ensure_checked(job, backend, attempt, attempts=self.settings.clips.qc_attempts, check=check,
                              what=f"clip {request.part} of segment {segment.index}")

    def _chain_start(self, previous_clip: Path, request: ClipRequest, job: StageRun, ffmpeg: str) -> str:
        """The frame a chained clip starts from, taken from the clip before it."""
        name = f"{CLIPS_DIR}/s{request.segment:03d}_p{request.part:02d}_start.png"
        if not (job.ref.path / name).is_file():
            media.extract_frame(ffmpeg, previous_clip, request.chain_frame or 0, job.ref.path / name)
        return name


def _check_clip(path: Path, record: Job) -> None:
    """A clip must be a readable video with at least the frames asked for."""
    try:
        info = media.probe(path)
    except PermanentError as exc:
        raise TransientError(
            f"the {record.backend} backend made a broken clip for segment {record.segment}: {exc}",
            "It will be made again; if this repeats, check the backend, then `tandava retry <run>`.",
            cause="BrokenClip",
        ) from exc
    if info.frames < record.frames:
        raise TransientError(
            f"the {record.backend} backend made {info.frames} frames for segment {record.segment}, "
            f"{record.frames} were asked for",
            "It will be made again; if this repeats, check the backend, then `tandava retry <run>`.",
            cause="BrokenClip",
        )
