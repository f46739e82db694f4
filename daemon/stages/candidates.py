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
from pathlib import Path

import structlog

from daemon.approval.store import candidates_of
from daemon.backends.base import ImageBackend, Job, job_id
from daemon.config import Settings
from daemon.music.plan import Segment
from daemon.music.segments_file import read_segments
from daemon.runs.engine import StageRun
from daemon.stages.jobs import Attempt, ensure_checked, ensure_job, start_job
from daemon.video import qc

log = structlog.get_logger("tandava.candidates")

CANDIDATES_DIR = "candidates"


def seed_for(song_sha: str, segment: int, index: int, base: int) -> int:
    """A stable 31-bit seed per song, segment and candidate number."""
    digest = hashlib.sha256(f"{song_sha}:{segment}:{index}:{base}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def image_backend_for(settings: Settings, job: StageRun) -> ImageBackend:
    """The configured image backend, for this run's song (the folder backend looks beside it)."""
    from daemon.backends.images import make_image_backend

    return make_image_backend(settings, song_name=job.manifest.song.original_name, inbox=settings.paths.inbox)


def candidate_attempt(
    job: StageRun, backend: ImageBackend, segment: Segment, index: int, *,
    settings: Settings, segments: int, round_: int = 1,
) -> Attempt:
    """Attempt ``n`` at candidate ``index`` of ``segment``: its job id and record (a new seed per attempt)."""

    def attempt(n: int) -> tuple[str, Callable[[], Job]]:
        # Attempt 0 keeps the seed candidates always had; QC retries step the base.
        seed = seed_for(job.manifest.song.sha256, segment.index, index, settings.analysis.seed + 7919 * n)
        jid = job_id(job.ref.run_id, "image", segment.index, index, seed)
        return jid, lambda: _record(jid, backend, segment, index, seed, settings, segments, round_)

    return attempt


def _record(jid: str, backend: ImageBackend, segment: Segment, index: int, seed: int, settings: Settings,
            segments: int, round_: int) -> Job:
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


def _counted(job: StageRun, record: Job, *, segments: int, settings: Settings, round_: int) -> Job:
    """Report how many first-round candidates are made (``candidates 23/82``) once one more is."""
    if round_ == 1:
        made = sum(1 for j in job.manifest.jobs.values()
                   if j.kind == "image" and j.status == "done" and int(j.detail.get("round", 1)) == 1)
        job.report("candidates", made, segments * settings.images.candidates)
    return record


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
    """Make candidate ``index`` of ``segment`` unless it is already done; returns its job.

    A backend whose outputs can come back broken (``checks_output``) has each
    image checked: black, flat, or a near-copy of another candidate of the
    segment is made again with a new seed, up to ``images.qc_attempts``.
    """
    attempt = candidate_attempt(job, backend, segment, index, settings=settings, segments=segments, round_=round_)
    if not getattr(backend, "checks_output", False):
        jid, record = attempt(0)
        made = ensure_job(job, backend, jid, record)
        return _counted(job, made, segments=segments, settings=settings, round_=round_)

    def check(path: Path, record: Job) -> None:
        others = [qc.image_stats(job.ref.path / j.output)
                  for j in candidates_of(job.manifest).get(segment.index, []) if j.id != record.id]
        stats = qc.check_image(path, others)
        record.detail.update({"mean_luma": round(stats.mean_luma, 1), "std_luma": round(stats.std_luma, 1)})

    made = ensure_checked(job, backend, attempt, attempts=settings.images.qc_attempts, check=check,
                          what=f"candidate {index} of segment {segment.index}")
    return _counted(job, made, segments=segments, settings=settings, round_=round_)


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
        count = self.settings.images.candidates
        # Hand every first attempt to the backend before waiting for one, so
        # a GPU server always has the next image queued.
        for segment in segments:
            for index in range(count):
                attempt = candidate_attempt(job, backend, segment, index, settings=self.settings, segments=len(segments))
                jid, record = attempt(0)
                existing = job.manifest.jobs.get(jid)
                if existing is None or existing.status != "failed":
                    start_job(job, backend, jid, record)
        for segment in segments:
            for index in range(count):
                ensure_candidate(job, backend, segment, index, settings=self.settings, segments=len(segments))
        job.done("candidates", count=len(segments) * self.settings.images.candidates)


class Offer:
    """imaged → pending_approval: open the decision store for the run's channels."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, job: StageRun) -> None:
        from daemon.approval.store import APPROVALS_FILE, Approvals, ApprovalStore

        if not (job.ref.path / APPROVALS_FILE).is_file():
            ApprovalStore(job.store).save(job.ref, Approvals())
        log.info("approval.offered", mode=self.settings.approval.mode,
                 hint=f"tandava pending; tandava approve {job.ref.run_id} --all")
