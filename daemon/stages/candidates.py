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
from daemon.errors import StoreError
from daemon.music.plan import Segment
from daemon.music.segments_file import read_segments
from daemon.runs.stage import StageRun
from daemon.stages.jobs import Attempt, ensure_checked, ensure_job, start_job, start_jobs
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
        self, settings: Settings, backend_for: Callable[[Settings, StageRun], ImageBackend] = image_backend_for,
        *, head_start: Callable[[StageRun], object] | None = None,
    ) -> None:
        self.settings = settings
        self.backend_for = backend_for
        # In auto mode: queues the render's first clips before the last images are done (wired by
        # the pipeline; the render stage is not this module's to import).
        self.head_start = head_start

    def __call__(self, job: StageRun) -> None:
        from daemon.stages.google import write_estimate

        segments = read_segments(job.ref.path)
        backend = self.backend_for(self.settings, job)
        count = self.settings.images.candidates
        write_estimate(self.settings, job.ref.path, segments)  # before the first paid image
        # Hand every first attempt to the backend before waiting for one, so
        # a GPU server always has the next image queued.
        batch = []
        for segment in segments:
            for index in range(count):
                attempt = candidate_attempt(job, backend, segment, index, settings=self.settings, segments=len(segments))
                jid, record = attempt(0)
                existing = job.manifest.jobs.get(jid)
                if existing is None or existing.status != "failed":
                    batch.append((jid, record))
        start_jobs(job, backend, batch)
        early = EarlyRounds(self.settings, job, backend, segments)
        auto = self.settings.approval.mode == "auto"
        for segment in segments:
            if auto and self.head_start is not None and segment is segments[-1]:
                self.head_start(job)
            for index in range(count):
                ensure_candidate(job, backend, segment, index, settings=self.settings, segments=len(segments))
            # Offered from now on: every channel shows it and takes decisions on it.
            log.info("segment.offered", segment=segment.index, offered=segment.index + 1, of=len(segments))
            if auto:
                _approve_first(job, segment.index)
            early.queue_rejected()
        early.collect()
        job.done("candidates", count=len(segments) * self.settings.images.candidates)


def _approve_first(job: StageRun, segment: int) -> None:
    """The auto policy on a segment the moment it is offered: its first candidate nobody rejected."""
    from daemon.approval.store import ApprovalStore, statuses

    approvals = ApprovalStore(job.store)
    status = statuses(job.manifest, approvals.load(job.ref), segment + 1)[segment]
    if status.approved is None and status.undecided:
        approvals.decide(job.ref.run_id, segment, status.undecided[0], "approve", by="policy",
                         channel="auto")


class EarlyRounds:
    """New candidates for segments a person rejected while the run's images are still being made.

    They are queued behind the images already handed to the backend, so a GPU
    server makes them in the same batch, with the image model still loaded,
    instead of after a model swap once the gate sees the rejection.
    """

    def __init__(self, settings: Settings, job: StageRun, backend: ImageBackend,
                 segments: list[Segment]) -> None:
        self.settings, self.job, self.backend, self.segments = settings, job, backend, segments
        self.queued: list[tuple[Segment, int, int]] = []  # (segment, candidate, round)
        self._asked: set[tuple[int, int]] = set()

    def queue_rejected(self) -> None:
        """Hand the next round of every fully rejected, offered segment to the backend."""
        from daemon.approval.store import ApprovalStore, offered_segments, statuses

        try:
            approvals = ApprovalStore(self.job.store).load(self.job.ref)
        except StoreError:
            return  # a damaged log is the gate's to report; nothing to queue early
        if not approvals.decisions:
            return
        offered = offered_segments(self.job.manifest)
        limit = self.settings.images.max_rounds
        existing = candidates_of(self.job.manifest)
        for status in statuses(self.job.manifest, approvals, len(self.segments)):
            round_ = status.rounds + 1
            if (status.segment not in offered or not status.all_rejected
                    or status.rounds >= limit + status.extra_rounds or (status.segment, round_) in self._asked):
                continue
            self._asked.add((status.segment, round_))
            segment = self.segments[status.segment]
            first = max(j.index for j in existing[status.segment]) + 1
            for index in range(first, first + self.settings.images.candidates):
                attempt = candidate_attempt(self.job, self.backend, segment, index, settings=self.settings,
                                            segments=len(self.segments), round_=round_)
                jid, record = attempt(0)
                start_job(self.job, self.backend, jid, record)
                self.queued.append((segment, index, round_))
            log.info("approval.regenerated", segment=status.segment, round=round_, early=True)

    def collect(self) -> None:
        """Wait for every early round (each may reveal more rejections to queue)."""
        while self.queued:
            segment, index, round_ = self.queued.pop(0)
            ensure_candidate(self.job, self.backend, segment, index, settings=self.settings,
                             segments=len(self.segments), round_=round_)
            self.queue_rejected()
