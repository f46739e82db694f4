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

from daemon.approval.store import ApprovalStore, Decision, Verdict, candidates_of, statuses
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
    hint: str = ""
    video: Path | None = None
    thumbnail: Path | None = None
    jobs: tuple[str, ...] = field(default_factory=tuple)
    # Why the analysis is unsure of the tempo ("" when sure or given by a
    # person): a channel shows it with `tandava retry RUN --tempo BPM`.
    tempo_doubt: str = ""

    @property
    def open_segments(self) -> list[SegmentView]:
        return [s for s in self.segments if s.approved is None]


def run_view(store: RunStore, ref: RunRef) -> RunView:
    """Everything a channel shows about one run; segments only while it waits for approval."""
    manifest = store.load(ref)
    base = RunView(ref.run_id, ref.state, manifest.song.original_name, ref.path)
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
    if ref.state is not State.PENDING_APPROVAL:
        return replace(base, jobs=jobs)
    plan = read_segments(ref.path)
    by_segment = candidates_of(manifest)
    views = []
    for status in statuses(manifest, ApprovalStore(store).load(ref), len(plan)):
        seg = plan[status.segment]
        cands = tuple(
            CandidateView(j.index, ref.path / j.output, j.seed,
                          "approved" if j.index == status.approved
                          else "rejected" if j.index in status.rejected else "open")
            for j in by_segment.get(status.segment, []))
        views.append(SegmentView(status.segment, seg.start, seg.end, seg.mood, seg.visual_prompt, cands,
                                 status.approved, status.all_rejected, status.rounds))
    return replace(base, segments=tuple(views), jobs=jobs)


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
