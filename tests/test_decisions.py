"""The channel-neutral views and actions every approval channel uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_approval import new_pending_run

from daemon.approval import decisions
from daemon.approval.store import DecisionRefused
from daemon.config import Settings
from daemon.errors import StoreError
from daemon.runs.states import State
from daemon.runs.store import RunStore


def test_pending_run_view_lists_segments_and_candidates(store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """A waiting run shows each segment with its time, prompt and candidate images, all open."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    view = decisions.run_view(store, store.find(ref.run_id))
    assert view.state is State.PENDING_APPROVAL and len(view.segments) == 2
    seg = view.segments[1]
    assert (seg.start, seg.end, seg.prompt) == (5.0, 10.0, "prompt 1")
    assert [c.status for c in seg.candidates] == ["open"] * settings.images.candidates
    assert all(c.image.is_file() for c in seg.candidates)


def test_decisions_from_one_channel_show_in_every_view(store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """A decision by any channel is what every channel's view shows next: approved, rejected, open."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    decisions.decide(store, ref.run_id, "approve", 0, 1, by="web", channel="web")
    decisions.decide(store, ref.run_id, "reject", 1, 0, by="tg:42", channel="telegram")
    view = decisions.run_view(store, store.find(ref.run_id))
    assert view.segments[0].approved == 1
    assert [c.status for c in view.segments[0].candidates] == ["open", "approved"]
    assert [c.status for c in view.segments[1].candidates] == ["rejected", "open"]
    assert [s.index for s in view.open_segments] == [1]


def test_approve_all_takes_the_first_candidate_nobody_rejected(store: RunStore, tmp_path: Path,
                                                              settings: Settings) -> None:
    """approve_all approves, per open segment (or one segment), the first candidate not rejected."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    decisions.decide(store, ref.run_id, "reject", 2, 0, by="me", channel="cli")
    made = decisions.approve_all(store, ref.run_id, by="me", channel="web", segment=1)
    assert [(d.segment, d.candidate) for d in made] == [(1, 0)]
    made = decisions.approve_all(store, ref.run_id, by="me", channel="web")
    assert [(d.segment, d.candidate) for d in made] == [(0, 0), (2, 1)]
    assert decisions.run_view(store, store.find(ref.run_id)).open_segments == []


def test_decisions_and_retry_are_refused_where_they_cannot_apply(store: RunStore, tmp_path: Path,
                                                                 settings: Settings) -> None:
    """An unknown candidate is refused; retry of a run that has not failed is refused."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    with pytest.raises(DecisionRefused):
        decisions.decide(store, ref.run_id, "approve", 0, 9, by="me", channel="web")
    with pytest.raises(StoreError):
        decisions.retry(store, ref.run_id)
