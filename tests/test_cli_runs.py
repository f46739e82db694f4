"""The CLI over run folders: `pending [RUN] [-v]`, `forget`, `clean` (archive, retention, dry run)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from test_approval import new_pending_run

from daemon.approval import decisions
from daemon.cli import main
from daemon.config import Settings
from daemon.errors import PermanentError
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore


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


def new_run(store: RunStore, tmp_path: Path, name: str) -> RunRef:
    song = tmp_path / name
    song.write_bytes(b"song " + name.encode())
    return store.create(song, hashlib.sha256(name.encode()).hexdigest())


def failed_run(store: RunStore, tmp_path: Path, name: str, *, days_ago: float = 0) -> RunRef:
    """A run that failed in analyze ``days_ago`` days ago."""
    ref = store.fail(new_run(store, tmp_path, name), "analyze", PermanentError("the song is silent", "drop another"))
    manifest = store.load(ref)
    assert manifest.last_error is not None
    manifest.last_error.at -= timedelta(days=days_ago)
    store.save(ref, manifest)
    return ref


def rendered_run(store: RunStore, tmp_path: Path, name: str, *, days_ago: float) -> RunRef:
    """A rendered run with candidates, clips and every file a finished run keeps, rendered ``days_ago``."""
    ref = new_run(store, tmp_path, name)
    for event in (Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED):
        ref = store.move(ref, event)
    for rel in ("candidates/s000_c00.png", "candidates/s001_c00.png", "clips/s000_p00.mp4", "final.mp4",
                "final_vertical.mp4", "thumbnail.jpg", "contact_sheet.png", "approvals.json", "segments.json"):
        (ref.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (ref.path / rel).write_bytes(b"x" * 1000)
    ref = store.move(ref, Event.RENDER_DONE)
    manifest = store.load(ref)
    manifest.history[-1].at -= timedelta(days=days_ago)
    store.save(ref, manifest)
    return ref


def test_forget_archives_a_failed_run_with_its_song_and_delete_removes_it(
        settings: Settings, state: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`forget` moves a run into archive/ (song kept, gone from status); `--delete` removes it for good."""
    kept = failed_run(state, tmp_path, "broken.mp3")
    dropped = failed_run(state, tmp_path, "junk.mp3")
    code, out = cli(settings, capsys, "forget", kept.run_id)
    assert code == 0 and f"archived in {state.root / 'archive' / kept.run_id}" in out
    assert (state.root / "archive" / kept.run_id / "broken.mp3").read_bytes() == b"song broken.mp3"
    assert not kept.path.exists()
    code, out = cli(settings, capsys, "status", "-v")
    assert kept.run_id not in out and "failed: 1" in out
    code, out = cli(settings, capsys, "show", kept.run_id)
    assert code == 0 and f"was forgotten: it is in {state.root / 'archive' / kept.run_id}" in out
    code, out = cli(settings, capsys, "forget", dropped.run_id, "--delete")
    assert code == 0 and "deleted, song included" in out
    assert not dropped.path.exists() and not (state.root / "archive" / dropped.run_id).exists()


def test_forget_refuses_a_run_at_work_and_takes_a_folder_that_is_not_a_run(
        settings: Settings, state: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run a stage may be writing into is refused; a stray folder in a state directory is archived."""
    busy = new_run(state, tmp_path, "busy.mp3")
    stray = state.dir_for(State.ANALYZED) / "holiday photos"
    stray.mkdir()
    (stray / "beach.jpg").write_bytes(b"jpg")
    code, out = cli(settings, capsys, "forget", busy.run_id)
    assert code == 1 and "is being worked on (in incoming/)" in out
    assert busy.path.is_dir()
    code, out = cli(settings, capsys, "forget", "holiday photos")
    assert code == 0 and (state.root / "archive" / "holiday photos" / "beach.jpg").is_file()


def test_clean_dry_run_shows_what_it_would_free_and_clean_frees_it(
        settings: Settings, state: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Retention removes candidates and clips of old rendered runs only, keeping the video, decisions and song."""
    old = rendered_run(state, tmp_path, "old.wav", days_ago=20)
    new = rendered_run(state, tmp_path, "new.wav", days_ago=2)
    before = sorted(p.relative_to(old.path).as_posix() for p in old.path.rglob("*"))
    code, out = cli(settings, capsys, "clean", "--dry-run")
    assert code == 0
    assert f"would remove {old.path / 'candidates'} (2.0 KB): candidates of a run rendered 20 days ago" in out
    assert f"would remove {old.path / 'clips'} (1.0 KB)" in out
    assert "would free 3.0 KB" in out and str(new.path) not in out
    assert sorted(p.relative_to(old.path).as_posix() for p in old.path.rglob("*")) == before
    code, out = cli(settings, capsys, "clean")
    assert code == 0 and "freed 3.0 KB" in out
    left = {p.name for p in old.path.iterdir()}
    assert left >= {"old.wav", "final.mp4", "final_vertical.mp4", "thumbnail.jpg", "contact_sheet.png",
                    "approvals.json", "segments.json", "run.json"}
    assert not {"candidates", "clips"} & left
    assert (new.path / "candidates").is_dir() and (new.path / "clips").is_dir()
    assert state.load(old).intermediates_removed_at is not None
    code, out = cli(settings, capsys, "show", old.run_id)
    assert "retention removed its candidates and clips on" in out
    code, out = cli(settings, capsys, "clean", "--dry-run")
    assert "nothing to clean" in out


def test_clean_failed_archives_only_runs_failed_longer_ago(
        settings: Settings, state: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`clean --failed --older-than 7d` archives runs that failed 10 days ago and keeps yesterday's."""
    old = failed_run(state, tmp_path, "old.mp3", days_ago=10)
    recent = failed_run(state, tmp_path, "recent.mp3", days_ago=1)
    code, out = cli(settings, capsys, "clean", "--failed", "--older-than", "7d", "--dry-run")
    assert f"would archive failed run {old.run_id}" in out and recent.run_id not in out
    assert old.path.is_dir()
    code, out = cli(settings, capsys, "clean", "--failed", "--older-than", "7d")
    assert code == 0 and f"archived failed run {old.run_id}" in out and "moved to archive/" in out
    assert not old.path.exists() and recent.path.is_dir()
    assert (state.root / "archive" / old.run_id / "old.mp3").is_file()
    code, out = cli(settings, capsys, "clean", "--failed", "--older-than", "soon")
    assert code == 2 and "write 7d, 12h, 30m or 2w" in out
