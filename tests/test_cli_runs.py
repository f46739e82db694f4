"""The CLI over run folders: `pending [RUN] [-v]`, `forget`, `clean` (archive, retention, dry run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_approval import new_pending_run

from daemon.approval import decisions
from daemon.cli import main
from daemon.config import Settings
from daemon.runs.store import RunStore


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    assert settings.config_file is not None
    capsys.readouterr()  # what the test printed (engine logs) before the command
    code = main(["--config", str(settings.config_file), *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def state(settings: Settings) -> RunStore:
    settings.approval.mode = "manual"
    settings.images.candidates = 3
    store = RunStore(settings.paths.state_root)
    store.ensure_layout()
    return store


def test_pending_prints_one_line_per_segment_and_paths_only_with_v(
        settings: Settings, state: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pending RUN` gives a line per segment (decided, or open with its candidate count); -v adds paths."""
    ref, _ = new_pending_run(state, tmp_path, settings, segments=4)
    decisions.decide(state, ref.run_id, "approve", 1, 2, by="t", channel="cli")
    code, out = cli(settings, capsys, "pending", ref.run_id[:17])
    assert code == 0
    lines = out.splitlines()
    segment_lines = [line for line in lines if line.startswith("  segment ")]
    assert len(segment_lines) == 4
    assert segment_lines[0].endswith("[open, 3 candidate(s)]")
    assert segment_lines[1].endswith("[approved 2]")
    assert not any(".png" in line for line in lines)
    assert len(lines) == 7  # the run, 4 segments, how to approve, how to see paths
    code, out = cli(settings, capsys, "pending", ref.run_id, "-v")
    paths = [line for line in out.splitlines() if ".png" in line]
    assert len(paths) == 12 and all(str(ref.path) in p for p in paths)
    assert any(p.strip().startswith("1:2 ") and p.endswith("approved") for p in paths)


def test_pending_of_a_run_that_does_not_wait_says_so(
        settings: Settings, state: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pending RUN` for a run elsewhere says where it is instead of listing nothing."""
    song = tmp_path / "x.mp3"
    song.write_bytes(b"x")
    ref = state.create(song, "cd" * 32)
    code, out = cli(settings, capsys, "pending", ref.run_id)
    assert code == 0 and out.strip() == f"{ref.run_id} is in incoming/: it does not wait for approval."
