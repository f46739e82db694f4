"""The ``approval`` stage: pending_approval → approved, once every segment has an approved image.

How this works: the stage looks at a waiting run every few seconds. Under the
run's decision lock it applies the auto policy (in ``auto`` mode: approve the
first candidate nobody rejected), derives each segment's status, and if every
segment is approved it moves the run while still holding the lock, so no
channel can slip a rejection in between the check and the move. A segment
gets a new round of candidates (new candidate numbers, so new seeds) at once
when a person asked for one ("regenerate"), and on its own when every
candidate was rejected, up to ``images.max_rounds`` rounds; then the run
waits with a status that says exactly what a person can do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from daemon.approval.notice import Action, say
from daemon.approval.store import (
    APPROVALS_FILE,
    Approvals,
    ApprovalStore,
    Decision,
    SegmentStatus,
    candidates_of,
    statuses,
)
from daemon.backends.base import ImageBackend
from daemon.config import Settings
from daemon.music.plan import Segment
from daemon.music.segments_file import read_segments
from daemon.runs.manifest import utcnow
from daemon.runs.stage import Moved, Outcome, StageRun, Waiting
from daemon.runs.states import Event
from daemon.stages.candidates import ensure_candidate, image_backend_for

log = structlog.get_logger("tandava.approval")

# How often a run waiting for a person is looked at again.
RECHECK_SECONDS = 2.0
# While a person is deciding (a decision in the last minute), the gate looks this often, so the
# last approval moves the run on at once; a run nobody touches costs one look every 2 s.
ACTIVE_RECHECK_SECONDS = 0.2
ACTIVE_SECONDS = 60.0


class Gate:
    """The approval stage's work function."""

    def __init__(
        self, settings: Settings, backend_for: Callable[[Settings, StageRun], ImageBackend] = image_backend_for
    ) -> None:
        self.settings = settings
        self.backend_for = backend_for

    def __call__(self, job: StageRun) -> Outcome:
        segments = read_segments(job.ref.path)
        approvals = ApprovalStore(job.store)
        # Most looks at a waiting run find nothing to do; decisions are written
        # atomically, so an unlocked read tells, and the lock (a file created
        # and removed) is taken only when the gate is about to act.
        current = statuses(job.manifest, approvals.load(job.ref), len(segments))
        if self._needs_lock(current):
            return self._decide(job, approvals, segments)
        return self._wait_or_regenerate(job, current, segments)

    def _needs_lock(self, current: list[SegmentStatus]) -> bool:
        auto = self.settings.approval.mode == "auto"
        return all(s.approved is not None for s in current) or (
            auto and any(s.approved is None and s.undecided for s in current)
        )

    def _decide(self, job: StageRun, approvals: ApprovalStore, segments: list[Segment]) -> Outcome:
        with approvals.locked(job.ref.run_id):
            decisions = approvals.load(job.ref)
            current = statuses(job.manifest, decisions, len(segments))
            if self.settings.approval.mode == "auto" and _auto_approve(current, decisions):
                approvals.save(job.ref, decisions)
                current = statuses(job.manifest, decisions, len(segments))
            if all(status.approved is not None for status in current):
                new_ref = job.store.move(job.ref, Event.ALL_APPROVED, note=_summary(decisions))
                return Moved(new_ref)
        return self._wait_or_regenerate(job, current, segments)

    def _wait_or_regenerate(self, job: StageRun, current: list[SegmentStatus], segments: list[Segment]) -> Outcome:
        limit = self.settings.images.max_rounds
        fresh = [s for s in current if s.asking or (s.all_rejected and s.rounds < limit + s.extra_rounds)]
        # A segment with no candidate at all was re-planned (``retry --tempo``): its first round.
        fresh = [s for s in current if not s.candidates] + fresh
        if fresh:
            self._new_round(job, fresh, segments)
            return Waiting(f"made new candidates for segment(s) {_list(fresh)}", recheck_seconds=0.0)
        return Waiting(_waiting_reason(job.ref.run_id, current), recheck_seconds=self._recheck(job))

    def _recheck(self, job: StageRun) -> float:
        """Look again soon while a person is deciding (the log changed lately), else at ease."""
        try:
            age = time.time() - (job.ref.path / APPROVALS_FILE).stat().st_mtime
        except OSError:
            return RECHECK_SECONDS
        return ACTIVE_RECHECK_SECONDS if age < ACTIVE_SECONDS else RECHECK_SECONDS

    def _new_round(self, job: StageRun, fresh: list[SegmentStatus], segments: list[Segment]) -> None:
        backend: ImageBackend = self.backend_for(self.settings, job)
        existing = candidates_of(job.manifest)
        for status in fresh:
            segment = segments[status.segment]
            first = max((j.index for j in existing.get(status.segment, [])), default=-1) + 1
            for index in range(first, first + self.settings.images.candidates):
                ensure_candidate(job, backend, segment, index, settings=self.settings,
                                 segments=len(segments), round_=status.rounds + 1)
            log.info("approval.regenerated", segment=status.segment, round=status.rounds + 1)


class Offer:
    """imaged → pending_approval: open the decision store for the run's channels.

    Segments were offered one by one while their candidates were made, and a
    person (or the auto policy) may have decided every one already: then the
    run goes on to approved in the same step, both moves in its history, with
    no wait for the gate's next look.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, job: StageRun) -> Outcome:
        segments = read_segments(job.ref.path)
        approvals = ApprovalStore(job.store)
        with approvals.locked(job.ref.run_id):
            decisions = approvals.load(job.ref)
            if not (job.ref.path / APPROVALS_FILE).is_file():
                approvals.save(job.ref, decisions)
            ref = job.store.move(job.ref, Event.OFFERED, note="offer finished")
            log.info("approval.offered", mode=self.settings.approval.mode,
                     hint=f"tandava pending; tandava approve {ref.run_id} --all")
            current = statuses(job.manifest, decisions, len(segments))
            if self.settings.approval.mode == "auto" and _auto_approve(current, decisions):
                approvals.save(ref, decisions)
                current = statuses(job.manifest, decisions, len(segments))
            if current and all(status.approved is not None for status in current):
                ref = job.store.move(ref, Event.ALL_APPROVED, note=_summary(decisions))
        return Moved(ref)


def _auto_approve(current: list[SegmentStatus], decisions: Approvals) -> bool:
    """The auto policy: approve the first candidate nobody rejected, per open segment."""
    changed = False
    for status in current:
        if status.approved is None and status.undecided:
            decisions.decisions.append(
                Decision(segment=status.segment, candidate=status.undecided[0], verdict="approve",
                         by="policy", channel="auto", at=utcnow())
            )
            changed = True
    return changed


def _list(items: list[SegmentStatus]) -> str:
    return ", ".join(str(s.segment) for s in items)


def _summary(decisions: Approvals) -> str:
    channels = sorted({d.channel for d in decisions.decisions if d.verdict == "approve"})
    return f"all segments approved ({', '.join(channels) or 'no channel'})"


def _waiting_reason(run_id: str, current: list[SegmentStatus]) -> str:
    """What the run waits for, with what a person can do about it (each channel renders the actions)."""
    stuck = [s for s in current if s.all_rejected]
    if stuck:
        example = stuck[0]
        return say(
            f"every candidate of segment(s) {_list(stuck)} was rejected, {example.rounds} rounds each: ",
            Action("approve", run_id, example.segment, example.candidates[-1]), " anyway, or ",
            Action("regenerate", run_id, example.segment),
        )
    open_ = [s for s in current if s.approved is None]
    return say(
        f"waiting for a person to approve {len(open_)} of {len(current)} segment(s): ",
        # `tandava pending` lists every waiting run: it takes no run id (yet).
        Action("pending"), ", then ", Action("approve-all", run_id), " or choose per segment",
    )
