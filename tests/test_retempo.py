"""A person's tempo correction, `tandava retry RUN --tempo BPM` (daemon.stages.retempo)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from daemon.app import run
from daemon.approval.decisions import run_view
from daemon.approval.store import ApprovalStore, candidates_of, statuses
from daemon.cli import main
from daemon.config import Settings
from daemon.errors import StoreError
from daemon.host.report import show_lines, status_lines
from daemon.music.segments_file import read_segments
from daemon.music.synth import write_song
from daemon.runs.states import State
from daemon.runs.store import RunStore
from daemon.stages.retempo import retempo


def _pending_run(settings: Settings) -> tuple[RunStore, str]:
    """A 40 s song at 120 BPM taken to pending_approval (manual approval, two candidates each)."""
    settings.approval.mode = "manual"
    settings.images.candidates = 2
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    song = settings.paths.inbox / "waltz.wav"
    write_song(song, 40.0, 120.0, section_change_at=20.0, seed=3)
    old = time.time() - 60
    os.utime(song, (old, old))
    assert run(settings, threading.Event(), once=True) == 0
    store = RunStore(settings.paths.state_root)
    (ref,) = store.iter_runs([State.PENDING_APPROVAL])
    return store, ref.run_id


def _approved(store: RunStore, run_id: str) -> dict[int, int | None]:
    ref = store.find(run_id)
    n = len(read_segments(ref.path))
    return {s.segment: s.approved for s in statuses(store.load(ref), ApprovalStore(store).load(ref), n)}


def test_same_tempo_keeps_every_segment_and_approval(settings: Settings, tmp_path: Path) -> None:
    """Re-planning at the tempo already found moves no segment, so every candidate and approval stays."""
    store, run_id = _pending_run(settings)
    assert main(["--config", str(tmp_path / "tandava.toml"), "approve", run_id, "0:1", "1:0"]) == 0
    before = read_segments(store.find(run_id).path)
    done = retempo(settings, store, run_id, 120.0)
    after = read_segments(done.ref.path)
    assert [(s.start, s.end) for s in after] == [(s.start, s.end) for s in before]
    assert done.kept == list(range(len(before)))
    assert _approved(store, run_id) == {0: 1, 1: 0, **{i: None for i in range(2, len(after))}}


def test_half_tempo_replans_and_keeps_only_unmoved_segments(settings: Settings, tmp_path: Path) -> None:
    """At half the tempo, moved segments lose candidates and approvals (files set aside); unmoved keep theirs."""
    store, run_id = _pending_run(settings)
    ref = store.find(run_id)
    n = len(read_segments(ref.path))
    approve = [f"{i}:0" for i in range(n)]
    assert main(["--config", str(tmp_path / "tandava.toml"), "approve", run_id, *approve]) == 0
    before = {i: (s.start, s.end) for i, s in enumerate(read_segments(ref.path))}

    assert main(["--config", str(tmp_path / "tandava.toml"), "retry", run_id, "--tempo", "60"]) == 0

    ref = store.find(run_id)
    analysis = json.loads((ref.path / "analysis.json").read_text(encoding="utf-8"))
    assert analysis["tempo"] == pytest.approx(60.0, rel=0.02) and analysis["tempo_given"]
    after = read_segments(ref.path)
    approved = _approved(store, run_id)
    cands = candidates_of(store.load(ref))
    for i, segment in enumerate(after):
        unmoved = before.get(i) == (segment.start, segment.end)
        assert (approved[i] == 0) is unmoved
        assert (i in cands) is unmoved
    assert any(before.get(i) != (s.start, s.end) for i, s in enumerate(after))
    assert list((ref.path / "candidates" / "replaced").iterdir())

    # The gate makes first candidates for every segment left without any.
    assert run(settings, threading.Event(), once=True) == 0
    view = run_view(store, store.find(run_id))
    assert view.state is State.PENDING_APPROVAL
    assert all(len(s.candidates) == 2 for s in view.segments)
    shown = "\n".join(show_lines(store, run_id))
    assert "60.0 BPM (given by a person)" in shown


def test_low_confidence_is_flagged_in_status_show_and_views(settings: Settings) -> None:
    """An analysis that doubts its tempo is flagged with the retry command in status, show and the run view."""
    store, run_id = _pending_run(settings)
    path = store.find(run_id).path / "analysis.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(low_confidence="every other beat is much weaker (the tempo may be half)", confidence=0.2)
    path.write_text(json.dumps(doc), encoding="utf-8")
    status = "\n".join(status_lines(settings.paths.state_root))
    assert "tempo unsure: every other beat" in status and f"retry {run_id} --tempo BPM" in status
    assert "confidence 0.20" in "\n".join(show_lines(store, run_id))
    assert run_view(store, store.find(run_id)).tempo_doubt.startswith("every other beat")


def test_tempo_outside_the_range_is_refused(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retry --tempo 500` exits 2 and names the range, without touching the run."""
    assert main(["--config", str(tmp_path / "tandava.toml"), "retry", "nothing", "--tempo", "500"]) == 2
    assert "40-240 BPM" in capsys.readouterr().err


def test_a_rendered_run_is_refused(settings: Settings, tmp_path: Path) -> None:
    """A run past approval cannot be re-planned; the error says how to start over."""
    store = RunStore(settings.paths.state_root)
    store.ensure_layout()
    song = tmp_path / "song.wav"
    write_song(song, 5.0, 120.0)
    ref = store.create(song, "ab" * 32)
    os.replace(ref.path, store.dir_for(State.RENDERED) / ref.run_id)
    with pytest.raises(StoreError, match="inbox again"):
        retempo(settings, store, ref.run_id, 90.0)


def test_a_run_a_stage_is_working_on_is_refused(settings: Settings) -> None:
    """While a stage holds the run's work lock, retempo refuses, naming it and the run unchanged; then it works."""
    from daemon.runs import worklock

    store, run_id = _pending_run(settings)
    before = (store.find(run_id).path / "segments.json").read_text(encoding="utf-8")
    with worklock.working_on(store.root, run_id, "the daemon's candidates stage (pid 1)") as mine:
        assert mine
        with pytest.raises(StoreError, match="candidates stage .pid 1. is working on it now.*pending_approval"):
            retempo(settings, store, run_id, 60.0)
    assert (store.find(run_id).path / "segments.json").read_text(encoding="utf-8") == before
    assert retempo(settings, store, run_id, 60.0).tempo == pytest.approx(60.0, rel=0.03)
