"""What every approval channel (CLI, Telegram, web panel) shows and does, in one place.

How this works: a channel never reads run folders or writes decisions on its
own. It asks for a ``RunView`` (what a person needs to see: segments, their
candidates with image paths and status, the error of a failed run, the video
of a rendered one) and acts through ``decide``, ``approve_all`` and
``retry``. Those go through ``ApprovalStore.decide`` (locked, append-only,
durable when it returns) and ``RunStore.retry``, so a tap in Telegram, a
click in the browser and a command in a terminal are the same decision and
never disagree. Views are read without locks: decisions are written
atomically, so a reader sees the log before or after a decision, never half.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from daemon.approval.store import (
    DECIDING_STATES,
    ApprovalStore,
    Decision,
    Verdict,
    candidates_of,
    offered_segments,
    statuses,
)
from daemon.errors import StoreError
from daemon.music.segments_file import read_segments
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore

CandidateStatus = Literal["approved", "rejected", "open"]


@dataclass(frozen=True)
class CandidateView:
    index: int
    image: Path
    seed: int
    status: CandidateStatus
    # The channel of the latest decision on this candidate ("" when none): a page that did not
    # make a change can say where it came from ("rejected on Telegram").
    channel: str = ""


@dataclass(frozen=True)
class SegmentView:
    index: int
    start: float
    end: float
    mood: str
    prompt: str
    candidates: tuple[CandidateView, ...]
    approved: int | None
    all_rejected: bool
    rounds: int


@dataclass(frozen=True)
class RunView:
    """One run as a person sees it in any channel."""

    run_id: str
    state: State
    song: str
    path: Path
    segments: tuple[SegmentView, ...] = ()
    error: str = ""
    # A notice (``daemon.approval.notice``): channels render its actions, never its backticks.
    hint: str = ""
    video: Path | None = None
    thumbnail: Path | None = None
    jobs: tuple[str, ...] = field(default_factory=tuple)
    # Segments in the plan; more than ``segments`` while candidates are still being made.
    planned: int = 0
    # The Google estimate and spend ("clips: 41 × 6 s on veo-3.1-fast-generate-001 ≈ $29.52"), if any.
    cost: tuple[str, ...] = ()
    # Why the analysis is unsure of the tempo ("" when sure or given by a
    # person): a channel shows it with `tandava retry RUN --tempo BPM`.
    tempo_doubt: str = ""

    def segment(self, index: int) -> SegmentView | None:
        """The segment numbered ``index``, if it is shown (offered) yet."""
        return next((s for s in self.segments if s.index == index), None)

    @property
    def more_coming(self) -> int:
        """Segments not offered yet (their candidates are being made)."""
        return max(0, self.planned - len(self.segments))

    @property
    def open_segments(self) -> list[SegmentView]:
        return [s for s in self.segments if s.approved is None]


def run_view(store: RunStore, ref: RunRef) -> RunView:
    """Everything a channel shows about one run; segments only while it waits for approval."""
    manifest = store.load(ref)
    from daemon.backends.google.costs import estimate_lines

    base = RunView(ref.run_id, ref.state, manifest.song.original_name, ref.path,
                   cost=tuple(estimate_lines(ref.path)))
    if ref.state is State.FAILED and manifest.last_error is not None:
        return replace(base, error=manifest.last_error.reason,
                       hint=manifest.last_error.hint.replace("<run>", ref.run_id))
    if ref.state is State.RENDERED:
        video, thumb = ref.path / "final.mp4", ref.path / "thumbnail.jpg"
        return replace(base, video=video if video.is_file() else None,
                       thumbnail=thumb if thumb.is_file() else None)
    jobs = tuple(f"{j.kind} s{j.segment:03d}#{j.index} {float(j.detail.get('progress', 0.0)):.0%} "
                 f"{j.detail.get('where', '')}".rstrip()
                 for j in manifest.jobs.values() if j.status == "submitted")
    base = replace(base, tempo_doubt=tempo_doubt(ref.path))
    if ref.state not in DECIDING_STATES:
        return replace(base, jobs=jobs)
    # While images are being made, the segments offered so far (each can be decided at once).
    offered = None if ref.state is State.PENDING_APPROVAL else offered_segments(manifest)
    if offered is not None and not offered:
        return replace(base, jobs=jobs)
    plan = read_segments(ref.path)
    by_segment = candidates_of(manifest)
    approvals = ApprovalStore(store).load(ref)
    channel_of = {(d.segment, d.candidate): d.channel for d in approvals.decisions}
    views = []
    for status in statuses(manifest, approvals, len(plan)):
        if offered is not None and status.segment not in offered:
            continue
        seg = plan[status.segment]
        cands = tuple(
            CandidateView(j.index, ref.path / j.output, j.seed,
                          "approved" if j.index == status.approved
                          else "rejected" if j.index in status.rejected else "open",
                          channel_of.get((status.segment, j.index), ""))
            for j in by_segment.get(status.segment, []))
        views.append(SegmentView(status.segment, seg.start, seg.end, seg.mood, seg.visual_prompt, cands,
                                 status.approved, status.all_rejected, status.rounds))
    return replace(base, segments=tuple(views), jobs=jobs, planned=len(plan))


def tempo_doubt(run_dir: Path) -> str:
    """The analysis' reason to doubt its tempo, "" when it is sure or a person set the tempo."""
    try:
        doc = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(doc, dict) or doc.get("tempo_given"):
        return ""
    return str(doc.get("low_confidence") or "")


def runs_by_state(store: RunStore, states: list[State] | None = None) -> dict[State, list[RunRef]]:
    """Run references grouped by state, newest first within each."""
    grouped: dict[State, list[RunRef]] = {state: [] for state in (states or list(State))}
    for ref in store.iter_runs(states):
        grouped.setdefault(ref.state, []).append(ref)
    for refs in grouped.values():
        refs.sort(key=lambda r: r.run_id, reverse=True)
    return grouped


def decide(store: RunStore, run_id: str, verdict: Verdict, segment: int, candidate: int | None, *,
           by: str, channel: str) -> Decision:
    """One decision from any channel (raises ``DecisionRefused`` when it cannot apply)."""
    return ApprovalStore(store).decide(run_id, segment, candidate, verdict, by=by, channel=channel)


def approve_all(store: RunStore, run_id: str, *, by: str, channel: str,
                segment: int | None = None) -> list[Decision]:
    """Approve, per open segment (or just ``segment``), the first candidate nobody rejected."""
    ref = store.find(run_id)
    view = run_view(store, ref)
    made = []
    for seg in view.open_segments:
        if segment is not None and seg.index != segment:
            continue
        first = next((c for c in seg.candidates if c.status == "open"), None)
        if first is not None:
            made.append(decide(store, ref.run_id, "approve", seg.index, first.index, by=by, channel=channel))
    return made


def retry(store: RunStore, run_id: str) -> RunRef:
    """Send a failed run back to the state it failed in."""
    ref = store.find(run_id)
    if ref.state is not State.FAILED:
        raise StoreError(f"{ref.run_id} is in {ref.state.value}/, not failed")
    return store.retry(ref)
