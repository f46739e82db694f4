"""Candidate images: the ``images`` stage (analyzed → imaged) and the ``offer`` stage.

How this works: each candidate is one image ``Job`` run through
``jobs.ensure_job`` (recorded before it is submitted, done only once the image
is on disk, re-attached or redone once after a restart). Seeds come from the song's hash, the
segment and the candidate number: the same song gives the same candidates,
and a regeneration round (new candidate numbers) gives new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import structlog

from daemon.backends import ImageBackend, Job, job_id
from daemon.config import Settings
from daemon.engine import StageRun
from daemon.jobs import ensure_job
from daemon.plan import Segment
from daemon.segments_file import read_segments

log = structlog.get_logger("tandava.candidates")

CANDIDATES_DIR = "candidates"


def seed_for(song_sha: str, segment: int, index: int, base: int) -> int:
    """A stable 31-bit seed per song, segment and candidate number."""
    digest = hashlib.sha256(f"{song_sha}:{segment}:{index}:{base}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def image_backend_for(settings: Settings, job: StageRun) -> ImageBackend:
    """The configured image backend, for this run's song (the folder backend looks beside it)."""
    from daemon.images import make_image_backend

    return make_image_backend(settings, song_name=job.manifest.song.original_name, inbox=settings.paths.inbox)


def ensure_candidate(
    job: StageRun,
    backend: ImageBackend,
    segment: Segment,
    index: int,
    *,
    settings: Settings,
    segments: int,
    round_: int = 1,
) -> Job:
    """Make candidate ``index`` of ``segment`` unless it is already done; returns its job."""
    seed = seed_for(job.manifest.song.sha256, segment.index, index, settings.analysis.seed)
    jid = job_id(job.ref.run_id, "image", segment.index, index, seed)

    def record() -> Job:
        return Job(
            id=jid,
            kind="image",
            backend=backend.name,
            segment=segment.index,
            seed=seed,
            index=index,
            prompt=segment.visual_prompt,
            negative_prompt=segment.negative_prompt,
            width=settings.video.width,
            height=settings.video.height,
            output=f"{CANDIDATES_DIR}/s{segment.index:03d}_c{index:02d}.png",
            detail={
                "start": segment.start,
                "end": segment.end,
                "mood": segment.mood,
                "energy": segment.energy,
                "section": segment.section,
                "segments": segments,
                "candidates": settings.images.candidates,
                "round": round_,
            },
        )

    return ensure_job(job, backend, jid, record)


class MakeCandidates:
    """analyzed → imaged: the configured number of candidates for every segment."""

    def __init__(
        self, settings: Settings, backend_for: Callable[[Settings, StageRun], ImageBackend] = image_backend_for
    ) -> None:
        self.settings = settings
        self.backend_for = backend_for

    def __call__(self, job: StageRun) -> None:
        segments = read_segments(job.ref.path)
        backend = self.backend_for(self.settings, job)
        for segment in segments:
            for index in range(self.settings.images.candidates):
                ensure_candidate(job, backend, segment, index, settings=self.settings, segments=len(segments))
        job.done("candidates", count=len(segments) * self.settings.images.candidates)


class Offer:
    """imaged → pending_approval: open the decision store for the run's channels."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, job: StageRun) -> None:
        from daemon.approval import APPROVALS_FILE, Approvals, ApprovalStore

        if not (job.ref.path / APPROVALS_FILE).is_file():
            ApprovalStore(job.store).save(job.ref, Approvals())
        log.info("approval.offered", mode=self.settings.approval.mode,
                 hint=f"tandava pending; tandava approve {job.ref.run_id} --all")
