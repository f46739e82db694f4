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

from daemon.approval.store import ApprovalStore, approved_images, candidates_of, statuses
from daemon.backends.base import SAFETY_FILTERED, Job, VideoBackend, job_id
from daemon.config import Settings
from daemon.errors import PermanentError, TransientError
from daemon.music.plan import Segment
from daemon.music.segments_file import read_segments
from daemon.runs.stage import StageRun
from daemon.runs.states import State
from daemon.stages.candidates import seed_for
from daemon.stages.jobs import Attempt, ensure_checked, ensure_job, start_job
from daemon.video import media, qc
from daemon.video.timeline import ClipRequest, Timeline, plan_timeline

log = structlog.get_logger("tandava.render")

CLIPS_DIR = "clips"
THUMBNAIL = "thumbnail.jpg"
CONTACT_SHEET = "contact_sheet.png"
ASSEMBLY_TIMEOUT_BASE = 120.0


def make_video_backend(settings: Settings) -> VideoBackend:
    """The configured video backend."""
    from daemon.backends.kenburns import KenBurnsBackend

    return KenBurnsBackend(media.find_ffmpeg(settings.assembly.ffmpeg))


# How many clips a run's images stage hands over early (see ``head_start``): enough to keep the
# server busy across the stage change, few enough to leave the queue to the swap-aware scheduler.
HEAD_START_CLIPS = 2


def head_start(settings: Settings, backend_for: Callable[[Settings], VideoBackend], job: StageRun,
               *, count: int = HEAD_START_CLIPS) -> int:
    """Queue the first clips of approved segments while the run's last images are still being made.

    The jobs are recorded in the run's manifest with the ids the render stage
    will compute, so that stage re-attaches to them instead of submitting them
    again; on ComfyUI the pool keeps them behind the image model's jobs and
    dispatches them the moment the last image is done, so the server does not
    wait for the stage change (offer, gate, render set-up). Returns how many it queued.
    """
    segments = read_segments(job.ref.path)
    backend = backend_for(settings)
    if getattr(backend, "bills_by_second", False):
        return 0  # a paid clip is sent only by the render stage, once the whole plan is approved
    approvals = ApprovalStore(job.store).load(job.ref)
    approved = {s.segment: s.approved for s in statuses(job.manifest, approvals, len(segments))
                if s.approved is not None}
    by_segment = candidates_of(job.manifest)
    images: dict[int, Path] = {seg: job.ref.path / next(j.output for j in by_segment[seg] if j.index == cand)
                               for seg, cand in approved.items()}
    render = Render(settings, backend_for)
    queued = 0
    from daemon.stages.options import scene_cuts, segments_meta

    cuts = scene_cuts(segments_meta(job.ref.path), len(segments))
    for request in plan_timeline(settings, segments, backend.max_frames, cuts).clips:
        if queued >= count:
            break
        if request.chained_from is not None or request.segment not in images:
            continue
        # Only the approved segments' entries are ever read (the others are skipped above).
        by_index = [images.get(i, job.ref.path) for i in range(len(segments))]
        attempt = render._attempt(job, backend, request, segments[request.segment],
                                  by_index, [], media.find_ffmpeg(settings.assembly.ffmpeg))
        jid, make = attempt(0)
        if jid not in job.manifest.jobs:
            start_job(job, backend, jid, make)
            queued += 1
    if queued:
        log.info("render.head_start", clips=queued)
    return queued


class Render:
    """approved → rendered.

    A clip a backend's safety filter refuses (cause ``SafetyFiltered``) is made
    once more with its prompt rewritten (``rewrite``); refused again, the
    segment gets a Ken Burns clip of its approved image (``[clips] fallback``),
    recorded on the job and in the stage's ``fallbacks``, and shown by
    ``tandava show``. In Veo's interpolate mode a segment's last clip ends on
    the next segment's approved image (``detail.last_frame``).
    """

    def __init__(
        self, settings: Settings, backend_for: Callable[[Settings], VideoBackend] = make_video_backend,
        rewrite: Callable[[str, str], str] | None = None,
    ) -> None:
        from daemon.stages.google import gentle_prompt

        self.settings = settings
        self.backend_for = backend_for
        self.rewrite = rewrite or gentle_prompt

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
        from daemon.stages.options import scene_cuts, segments_meta

        cuts = scene_cuts(segments_meta(job.ref.path), len(segments))
        timeline = plan_timeline(self.settings, segments, backend.max_frames, cuts,
                                 shortest=getattr(backend, "bills_by_second", False))
        images = approved_images(job.ref, job.manifest, ApprovalStore(job.store).load(job.ref), len(segments))
        from daemon.stages.google import write_estimate

        write_estimate(self.settings, job.ref.path, segments)  # before the first paid clip
        last_frames = self._interpolation(job, timeline, images)
        clips: list[Path] = []
        # Every clip that does not start from another clip's last frame is
        # handed to the backend first, so a GPU server always has one queued.
        for i, request in enumerate(timeline.clips):
            if request.chained_from is None:
                jid, make = self._attempt(job, backend, request, segments[request.segment], images, [], ffmpeg,
                                          last_frame=last_frames.get(i, ""))(0)
                existing = job.manifest.jobs.get(jid)
                if existing is None or existing.status != "failed":
                    start_job(job, backend, jid, make)
        for i, request in enumerate(timeline.clips):
            record = self._clip(job, backend, request, segments[request.segment], images, clips, ffmpeg,
                                last_frames.get(i, ""))
            clips.append(job.ref.path / record.output)
            job.report("clips", len(clips), len(timeline.clips))
        if not job.is_done("assembly") or not (job.ref.path / "final.mp4").is_file():
            result = assemble(
                timeline, clips, song, job.ref.path,
                width=self.settings.video.width, height=self.settings.video.height,
                cfg=self.settings.assembly, ffmpeg=ffmpeg,
                # A hung ffmpeg must not hold the run forever; even a slow machine
                # assembles faster than twice real time.
                timeout=ASSEMBLY_TIMEOUT_BASE + 2 * timeline.duration,
                # ffmpeg's position in the video: the assembly's percentage, in run.json once a second.
                progress=lambda seconds: job.report("assembly", seconds, timeline.duration, unit="s", save=True),
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

    def _interpolation(self, job: StageRun, timeline: Timeline, images: list[Path]) -> dict[int, str]:
        """Veo interpolate mode: the clip index → the next segment's approved image it ends on."""
        if self.settings.clips.backend != "veo" or self.settings.clips.veo_mode != "interpolate":
            return {}
        last_part = {request.segment: i for i, request in enumerate(timeline.clips)}
        return {i: images[seg + 1].relative_to(job.ref.path).as_posix()
                for seg, i in last_part.items() if seg + 1 < len(images)}

    def _attempt(self, job: StageRun, backend: VideoBackend, request: ClipRequest, segment: Segment,
                 images: list[Path], clips: list[Path], ffmpeg: str, *, prompt: str | None = None,
                 offset: int = 0, last_frame: str = "") -> Attempt:
        """Attempt ``n`` at a clip: its job id and record; each attempt has a new seed.

        ``offset`` sets apart a rewritten prompt's attempts (100) and a fallback's (200)."""
        output = f"{CLIPS_DIR}/s{segment.index:03d}_p{request.part:02d}.mp4"
        source = images[segment.index].relative_to(job.ref.path).as_posix()
        if request.chained_from is not None:
            source = self._chain_start(clips[request.chained_from], request, job, ffmpeg)

        def attempt(n: int) -> tuple[str, Callable[[], Job]]:
            seed = seed_for(job.manifest.song.sha256, segment.index, 1000 + request.part,
                            self.settings.analysis.seed + 7919 * (n + offset))
            jid = job_id(job.ref.run_id, "clip", segment.index, request.part, seed)
            return jid, lambda: Job(
                id=jid, kind="clip", backend=backend.name, segment=segment.index, seed=seed,
                index=request.part, prompt=prompt or segment.motion_prompt,
                negative_prompt=segment.negative_prompt,
                width=self.settings.video.width, height=self.settings.video.height,
                frames=request.frames, fps=self.settings.video.fps, source=source, output=output,
                detail={"last_frame": last_frame} if last_frame else {},
            )

        return attempt

    def _clip(self, job: StageRun, backend: VideoBackend, request: ClipRequest, segment: Segment,
              images: list[Path], clips: list[Path], ffmpeg: str, last_frame: str = "") -> Job:
        """The clip, or after a safety refusal: a rewritten prompt once, then the fallback."""
        args = (job, backend, request, segment, images, clips, ffmpeg)
        try:
            return self._make(*args, last_frame=last_frame)
        except PermanentError as exc:
            if exc.cause != SAFETY_FILTERED:
                raise
            first = exc
        rewritten = self.rewrite(segment.motion_prompt, first.reason)
        log.warning("clip.filtered", segment=segment.index, part=request.part, next="rewrite")
        try:
            return self._make(*args, prompt=rewritten, offset=100, last_frame=last_frame)
        except PermanentError as exc:
            if exc.cause != SAFETY_FILTERED or self.settings.clips.fallback == "none":
                raise
            second = exc
        from daemon.backends.kenburns import KenBurnsBackend

        kenburns = KenBurnsBackend(ffmpeg)
        jid, make = self._attempt(job, kenburns, request, segment, images, clips, ffmpeg, offset=200)(0)
        record = ensure_job(job, kenburns, jid, make, check=_check_clip)
        note = (f"segment {segment.index} part {request.part}: Ken Burns clip of the approved image "
                f"(Veo's safety filter refused the prompt and its rewrite: {second.reason[:200]})")
        record.detail["fallback"] = note
        fallbacks = job.manifest.progress(job.stage).detail.setdefault("fallbacks", [])
        if note not in fallbacks:
            fallbacks.append(note)
        job.store.save(job.ref, job.manifest)
        log.warning("clip.fallback", segment=segment.index, part=request.part, backend="kenburns")
        return record

    def _make(self, job: StageRun, backend: VideoBackend, request: ClipRequest, segment: Segment,
              images: list[Path], clips: list[Path], ffmpeg: str, *, prompt: str | None = None,
              offset: int = 0, last_frame: str = "") -> Job:
        attempt = self._attempt(job, backend, request, segment, images, clips, ffmpeg, prompt=prompt,
                                offset=offset, last_frame=last_frame)
        jid, _ = attempt(0)
        existing = job.manifest.jobs.get(jid)
        if existing is not None and existing.status == "failed" and "filtered" in existing.detail:
            raise PermanentError(str(existing.detail["filtered"]), cause=SAFETY_FILTERED)  # before a restart
        try:
            return self._checked(job, backend, attempt, request, segment)
        except PermanentError as exc:
            if exc.cause == SAFETY_FILTERED and jid in job.manifest.jobs:
                failed = job.manifest.jobs[jid]
                failed.status = "failed"
                failed.detail.setdefault("filtered", exc.reason[:500])
                job.store.save(job.ref, job.manifest)
            raise

    def _checked(self, job: StageRun, backend: VideoBackend, attempt: Attempt, request: ClipRequest,
                 segment: Segment) -> Job:
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
