"""The approval gate: one decision store per run, shared by every channel.

How this works: ``approvals.json`` in the run folder is an append-only log of
decisions (approve, reject, regenerate, undo), each with who, when and through
which channel. An ``undo`` takes back the latest approve or reject of one
candidate (within ``UNDO_SECONDS``): it is a new entry, so the log still says
what happened and who changed their mind. What a segment's status *is* (approved with candidate 4, every
candidate rejected, waiting) is derived from the log and the candidates the
run's manifest records, never stored twice. The CLI, the auto policy, and
later Telegram and the web panel all call ``decide``: it takes the run's lock,
re-reads the log, appends, and writes it back atomically, so two channels
deciding at once never lose each other's decision, and a decision survives a
crash the instant ``decide`` returns.

The lock lives outside the run folder (``<state>/.locks/<run_id>.lock``)
because the approval stage moves the folder to ``approved/`` while holding it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from daemon.errors import StoreError
from daemon.runs import fsutil
from daemon.runs.job import Job
from daemon.runs.manifest import Manifest, utcnow
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore
from daemon.runs.worklock import LOCKS_DIR

APPROVALS_FILE = "approvals.json"
Verdict = Literal["approve", "reject", "regenerate", "undo"]
# How long after a decision it can be taken back: a person who pressed the wrong key notices at once.
# The panel offers 10 s; the store allows a little more for the round trip.
UNDO_SECONDS = 15.0
# Where decisions are taken: a waiting run, and (per offered segment) one whose images are being made.
DECIDING_STATES = frozenset({State.ANALYZED, State.IMAGED, State.PENDING_APPROVAL})
# A lock older than this was left by a process that died holding it.
_STALE_LOCK_SECONDS = 30.0


class Decision(BaseModel):
    """One decision on one candidate (or, for ``regenerate``, on a whole segment)."""

    segment: int
    candidate: int | None = None
    verdict: Verdict
    by: str
    channel: str
    at: datetime
    # regenerate: the round asked for (logs written before it had none: an extra round once all are rejected).
    for_round: int | None = None


class Approvals(BaseModel):
    """``approvals.json``: the decision log of a run."""

    schema_version: int = 1
    decisions: list[Decision] = Field(default_factory=list)


class DecisionRefused(StoreError):
    """A decision that cannot apply: unknown candidate, or the run is not waiting for one."""


class SegmentStatus(BaseModel):
    """Where one segment stands, derived from the log and the candidates."""

    segment: int
    candidates: list[int]
    approved: int | None = None
    rejected: list[int] = Field(default_factory=list)
    rounds: int = 0
    extra_rounds: int = 0
    # The newest round a person asked for; above ``rounds`` while it is being made.
    asked_round: int = 0

    @property
    def asking(self) -> bool:
        """A person asked for new candidates and the gate has not made them yet."""
        return self.asked_round > self.rounds

    @property
    def all_rejected(self) -> bool:
        return bool(self.candidates) and self.approved is None and set(self.rejected) >= set(self.candidates)

    @property
    def undecided(self) -> list[int]:
        return [c for c in self.candidates if c not in self.rejected and c != self.approved]


def candidates_of(manifest: Manifest) -> dict[int, list[Job]]:
    """Finished image jobs per segment, in candidate order."""
    found: dict[int, list[Job]] = {}
    for job in manifest.jobs.values():
        if job.kind == "image" and job.status == "done":
            found.setdefault(job.segment, []).append(job)
    for jobs in found.values():
        jobs.sort(key=lambda j: j.index)
    return found


def offered_segments(manifest: Manifest) -> set[int]:
    """Segments a person can decide on: at least one round of their candidates is complete.

    A segment is offered the moment every candidate of one of its rounds is
    made (and passed QC), even while the run's other segments are still being
    made; the job records say how many candidates their round asked for.
    """
    wanted: dict[tuple[int, int], int] = {}
    made: dict[tuple[int, int], set[int]] = {}
    for job in manifest.jobs.values():
        if job.kind != "image":
            continue
        key = (job.segment, int(job.detail.get("round", 1)))
        wanted[key] = max(wanted.get(key, 1), int(job.detail.get("candidates", 1)))
        if job.status == "done":
            made.setdefault(key, set()).add(job.index)
    return {segment for (segment, round_), need in wanted.items()
            if len(made.get((segment, round_), ())) >= need}


def statuses(manifest: Manifest, approvals: Approvals, segments: int) -> list[SegmentStatus]:
    """Each segment's status: the latest word on each candidate wins."""
    cands = candidates_of(manifest)
    result = []
    for seg in range(segments):
        jobs = cands.get(seg, [])
        status = SegmentStatus(
            segment=seg,
            candidates=[j.index for j in jobs],
            rounds=len({int(j.detail.get("round", 1)) for j in jobs}),
        )
        latest: dict[int, Decision] = {}
        for d in approvals.decisions:
            if d.segment != seg:
                continue
            if d.verdict == "regenerate":
                if d.for_round is None:
                    status.extra_rounds += 1
                else:
                    status.asked_round = max(status.asked_round, d.for_round)
            elif d.candidate is not None:
                latest[d.candidate] = d
        # An undo leaves its candidate undecided again (its latest word is the undo itself).
        status.rejected = sorted(c for c, d in latest.items() if d.verdict == "reject")
        approvals_in_order = sorted(
            (d for d in latest.values() if d.verdict == "approve"), key=lambda d: d.at
        )
        if approvals_in_order:
            status.approved = approvals_in_order[-1].candidate
        result.append(status)
    return result


class ApprovalStore:
    """Reads and appends decisions for runs in a run store."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def load(self, ref: RunRef) -> Approvals:
        path = ref.path / APPROVALS_FILE
        if not path.is_file():
            return Approvals()
        try:
            return Approvals.model_validate_json(path.read_bytes())
        except ValueError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc

    def save(self, ref: RunRef, approvals: Approvals) -> None:
        fsutil.atomic_write_text(ref.path / APPROVALS_FILE, approvals.model_dump_json(indent=2) + "\n")

    @contextlib.contextmanager
    def locked(self, run_id: str, timeout: float = 10.0) -> Iterator[None]:
        """Hold the run's decision lock (across processes) for a read-modify-write."""
        folder = self.store.root / LOCKS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run_id}.lock"
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - path.stat().st_mtime > _STALE_LOCK_SECONDS:
                        path.unlink()
                        continue
                if time.monotonic() > deadline:
                    raise StoreError(f"the decisions of {run_id} are locked by another process") from None
                time.sleep(0.02)
                continue
            os.close(fd)
            break
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def ask_for_new_candidates(self, run_id: str, segment: int, *, by: str, channel: str) -> Decision:
        """"None of these, make new ones now": the ``regenerate`` decision of every channel.

        In one write it rejects the segment's open candidates and asks for the next
        round (``for_round``), which the gate makes on its next look, whatever
        ``images.max_rounds`` says. Refused for an approved segment (reject its choice
        first); a second request while that round is being made changes nothing.
        """
        with self.locked(run_id):
            ref = self.store.find(run_id)
            if ref.state not in DECIDING_STATES:
                raise DecisionRefused(f"{ref.run_id} is in {ref.state.value}/, not waiting for approval")
            manifest = self.store.load(ref)
            if ref.state is not State.PENDING_APPROVAL and segment not in offered_segments(manifest):
                raise DecisionRefused(f"segment {segment} of {ref.run_id} is not offered yet: its candidates "
                                      "are still being made; ask once it is offered")
            if segment not in candidates_of(manifest):
                raise DecisionRefused(f"{ref.run_id} has no segment {segment} with candidates")
            approvals = self.load(ref)
            status = statuses(manifest, approvals, segment + 1)[segment]
            if status.approved is not None:
                raise DecisionRefused(f"segment {segment} of {ref.run_id} is approved (candidate {status.approved}): "
                                      f"reject {segment}:{status.approved} first to ask for new candidates")
            if status.asking:
                return next(d for d in reversed(approvals.decisions) if d.segment == segment
                            and d.verdict == "regenerate" and d.for_round == status.asked_round)
            now = utcnow()
            approvals.decisions += [Decision(segment=segment, candidate=c, verdict="reject", by=by, channel=channel,
                                             at=now) for c in status.undecided]
            decision = Decision(segment=segment, verdict="regenerate", by=by, channel=channel, at=now,
                                for_round=status.rounds + 1)
            approvals.decisions.append(decision)
            self.save(ref, approvals)
            return decision

    def decide(
        self,
        run_id: str,
        segment: int,
        candidate: int | None,
        verdict: Verdict,
        *,
        by: str,
        channel: str,
    ) -> Decision:
        """Record one decision for a run waiting for approval; idempotent for a repeated tap."""
        if verdict == "regenerate":
            return self.ask_for_new_candidates(run_id, segment, by=by, channel=channel)
        with self.locked(run_id):
            # The images stage may move the folder (analyzed → imaged) while a decision on an
            # offered segment is written: then the write finds no folder, and is made again there.
            for tries_left in range(2, -1, -1):
                try:
                    return self._decide(run_id, segment, candidate, verdict, by=by, channel=channel)
                except FileNotFoundError:
                    if not tries_left:
                        raise
        raise AssertionError("unreachable")

    def _decide(self, run_id: str, segment: int, candidate: int | None, verdict: Verdict, *,
                by: str, channel: str) -> Decision:
        ref = self.store.find(run_id)
        if ref.state not in DECIDING_STATES:
            raise DecisionRefused(f"{ref.run_id} is in {ref.state.value}/, not waiting for approval")
        manifest = self.store.load(ref)
        if ref.state is not State.PENDING_APPROVAL:
            offered = offered_segments(manifest)
            if segment not in offered:
                raise DecisionRefused(
                    f"segment {segment} of {ref.run_id} is not offered yet: its candidates are "
                    f"still being made ({len(offered)} segment{'s' if len(offered) != 1 else ''} "
                    f"offered so far); decide on it once it is offered")
        cands = candidates_of(manifest)
        if segment not in cands:
            raise DecisionRefused(f"{ref.run_id} has no segment {segment} with candidates")
        if candidate is not None and candidate not in {j.index for j in cands[segment]}:
            have = ", ".join(f"{segment}:{j.index}" for j in cands[segment])
            raise DecisionRefused(f"segment {segment} has no candidate {candidate} (it has {have})")
        approvals = self.load(ref)
        decision = Decision(
            segment=segment, candidate=candidate, verdict=verdict, by=by, channel=channel, at=utcnow()
        )
        last = _latest(approvals, segment, candidate)
        if verdict == "undo":
            _check_undo(ref.run_id, segment, candidate, last, decision.at)
        elif last is not None and last.verdict == verdict and verdict != "regenerate":
            return last  # a second tap on the same button changes nothing
        approvals.decisions.append(decision)
        self.save(ref, approvals)
        return decision


def _check_undo(run_id: str, segment: int, candidate: int | None, last: Decision | None,
                now: datetime) -> None:
    """Refuse an undo that has nothing recent to take back."""
    if candidate is None:
        raise DecisionRefused("an undo names the candidate whose decision it takes back")
    if last is None or last.verdict not in ("approve", "reject"):
        raise DecisionRefused(f"segment {segment} candidate {candidate} of {run_id} has no "
                              f"decision to undo")
    if (now - last.at).total_seconds() > UNDO_SECONDS:
        raise DecisionRefused(f"the {last.verdict} of segment {segment} candidate {candidate} is "
                              f"older than {UNDO_SECONDS:.0f} s: decide again instead of undoing it")


def _latest(approvals: Approvals, segment: int, candidate: int | None) -> Decision | None:
    for d in reversed(approvals.decisions):
        if d.segment == segment and d.candidate == candidate:
            return d
    return None


def approved_images(ref: RunRef, manifest: Manifest, approvals: Approvals, segments: int) -> list[Path]:
    """The approved candidate image of every segment, in order; raises if one is missing."""
    by_seg = candidates_of(manifest)
    images = []
    for status in statuses(manifest, approvals, segments):
        if status.approved is None:
            raise StoreError(f"segment {status.segment} of {ref.run_id} has no approved image")
        job = next(j for j in by_seg[status.segment] if j.index == status.approved)
        images.append(ref.path / job.output)
    return images
