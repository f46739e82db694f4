"""The daemon in-process: inbox to analyzed/, duplicates, bad songs, --once, the CLI over the result."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import run
from daemon.cli import main
from daemon.config import Settings
from daemon.music.synth import write_song
from daemon.runs.states import State
from daemon.runs.store import RunStore


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def runs_in(settings: Settings, state: State) -> list[str]:
    return [ref.run_id for ref in RunStore(settings.paths.state_root).iter_runs([state])]


@pytest.fixture
def daemon(settings: Settings) -> Iterator[Settings]:
    """A daemon serving `settings` in a background thread, stopped after the test."""
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
    thread.start()
    yield settings
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


def test_song_dropped_in_inbox_is_analyzed_and_offered(daemon: Settings) -> None:
    """A song dropped into the watched inbox is analysed, planned and offered for approval."""
    inbox = daemon.paths.inbox
    write_song(inbox / "शिव तांडव 🔱.flac", 20.0, 120.0, section_change_at=10.0)
    assert wait_for(lambda: len(runs_in(daemon, State.PENDING_APPROVAL)) == 1)
    run_dir = daemon.paths.state_root / "pending_approval" / runs_in(daemon, State.PENDING_APPROVAL)[0]
    assert (run_dir / "शिव तांडव 🔱.flac").is_file()
    analysis = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    assert abs(analysis["tempo"] - 120.0) < 2.4
    plan = json.loads((run_dir / "segments.json").read_text(encoding="utf-8"))
    segments = plan["segments"]
    assert segments[0]["start"] == 0.0
    assert segments[-1]["end"] == pytest.approx(analysis["duration"])
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:], strict=False))
    assert all(s["visual_prompt"] for s in segments)
    assert plan["writer"] == "theme"
    assert list(inbox.glob("*.flac")) == []


def test_same_song_twice_makes_one_run(daemon: Settings) -> None:
    """A second copy of the same content is moved to inbox/duplicates, not deleted, and makes no run."""
    inbox = daemon.paths.inbox
    write_song(inbox / "one.wav", 6.0, 100.0)
    assert wait_for(lambda: len(runs_in(daemon, State.PENDING_APPROVAL)) == 1)
    original = next((daemon.paths.state_root / "pending_approval").glob("*/one.wav"))
    (inbox / "copy of one.wav").write_bytes(original.read_bytes())
    assert wait_for(lambda: (inbox / "duplicates" / "copy of one.wav").exists())
    time.sleep(0.5)
    assert len(list(RunStore(daemon.paths.state_root).iter_runs())) == 1


def test_bad_song_fails_with_reason_and_good_song_still_completes(daemon: Settings, tmp_path: Path) -> None:
    """A text file named .mp3 goes to failed/ with a reason; a real song beside it completes."""
    inbox = daemon.paths.inbox
    notes = tmp_path / "notes.mp3"
    notes.write_text("these are lyrics, not audio\n" * 50, encoding="utf-8")
    # Copied with its old mtime kept (cp -p): a file that changed within the last
    # minute would wait that minute in case it is still arriving.
    os.utime(notes, (time.time() - 120, time.time() - 120))
    shutil.copy2(notes, inbox / "notes.mp3")
    write_song(inbox / "good.ogg", 8.0, 128.0)
    assert wait_for(lambda: runs_in(daemon, State.FAILED) and runs_in(daemon, State.PENDING_APPROVAL))
    failed_dir = daemon.paths.state_root / "failed" / runs_in(daemon, State.FAILED)[0]
    error = json.loads((failed_dir / "error.json").read_text(encoding="utf-8"))
    assert "notes.mp3" in error["reason"]
    assert error["hint"]
    assert error["retry"].startswith("tandava retry ")


def test_song_caught_mid_copy_waits_instead_of_failing(daemon: Settings, tmp_path: Path) -> None:
    """A copy that stalls past the stable window is taken half-written; its run waits, then analyses the whole song."""
    whole = tmp_path / "whole.flac"  # FLAC states its length: half of one is "truncated"
    write_song(whole, 6.0, 90.0)
    data = whole.read_bytes()
    store = RunStore(daemon.paths.state_root)

    def analyze_waiting() -> bool:
        refs = list(store.iter_runs([State.INCOMING]))
        if not refs:
            return False
        detail = store.load(refs[0]).stages.get("analyze")
        return detail is not None and "may still be arriving" in str(detail.detail.get("waiting", ""))

    with (daemon.paths.inbox / "stalled.flac").open("wb", buffering=0) as f:
        f.write(data[: len(data) // 2])
        assert wait_for(analyze_waiting, timeout=20)  # taken, decoded as truncated, and waiting
        f.write(data[len(data) // 2 :])
    assert wait_for(lambda: bool(runs_in(daemon, State.PENDING_APPROVAL)), timeout=30)
    assert runs_in(daemon, State.FAILED) == []
    ref = next(store.iter_runs([State.PENDING_APPROVAL]))
    assert store.load(ref).song.size == len(data)


def test_run_once_processes_waiting_songs_and_exits(settings: Settings) -> None:
    """`run --once` takes what is already in the inbox, takes it as far as it can go and returns."""
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    write_song(settings.paths.inbox / "waiting.wav", 6.0, 90.0)
    old = time.time() - 60
    import os

    os.utime(settings.paths.inbox / "waiting.wav", (old, old))
    assert run(settings, threading.Event(), once=True) == 0
    assert len(runs_in(settings, State.PENDING_APPROVAL)) == 1  # manual approval: waits for a person


def test_run_once_right_after_a_copy_waits_for_the_song_and_says_so(settings: Settings) -> None:
    """`run --once` started the instant a copy ends waits for the song to settle, takes it, and logs why it waited."""
    from structlog.testing import capture_logs

    settings.watch.stable_seconds = 2.0  # the default: longer than this test's start-up
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    write_song(settings.paths.inbox / "just copied.wav", 6.0, 90.0)
    (settings.paths.inbox / ".hidden.wav").write_bytes(b"RIFF")
    with capture_logs() as logs:
        assert run(settings, threading.Event(), once=True) == 0
    assert len(runs_in(settings, State.PENDING_APPROVAL)) == 1
    waited = [e for e in logs if e["event"] == "inbox.waited"]
    assert [e["file"] for e in waited] == ["just copied.wav"]
    skipped = {e["file"]: e["reason"] for e in logs if e["event"] == "inbox.skipped"}
    assert skipped == {".hidden.wav": "dotfiles are never taken: rename it without the leading dot"}


def test_cli_status_show_and_retry(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """status lists runs by state, show explains a failure, retry sends it back."""
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    (settings.paths.inbox / "empty.mp3").write_bytes(b"")
    old = time.time() - 60
    import os

    os.utime(settings.paths.inbox / "empty.mp3", (old, old))
    run(settings, threading.Event(), once=True)
    conf = str(settings.config_file)
    assert main(["--config", conf, "status"]) == 0
    out = capsys.readouterr().out
    assert "failed: 1" in out
    run_id = runs_in(settings, State.FAILED)[0]
    assert run_id in out
    assert main(["--config", conf, "show", "empty"]) == 0
    out = capsys.readouterr().out
    assert "fix:" in out and "tandava retry" in out
    assert main(["--config", conf, "retry", run_id]) == 0
    assert runs_in(settings, State.INCOMING) == [run_id]
    assert main(["--config", conf, "show", "no-such-run"]) == 1


def test_every_command_has_help_with_an_example() -> None:
    """Each CLI command documents itself with an example (its docstring is its --help)."""
    from daemon.cli import COMMANDS

    assert {"run", "status", "show", "retry", "init", "config", "doctor", "demo",
            "approve", "reject", "regenerate", "pending"} <= set(COMMANDS)
    for name, fn in COMMANDS.items():
        assert fn.__doc__ and "Example: tandava" in fn.__doc__, name


def test_doctor_reports_each_check(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """doctor prints one line per check and exits 0 on a healthy install."""
    assert main(["--config", str(settings.config_file), "doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("inbox", "state root", "logs", "ffmpeg", "audio decoders", "configuration", "theme"):
        assert f"ok   {name}:" in out


def test_doctor_fails_on_unwritable_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A state root that cannot be created makes doctor fail with the path named."""
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    conf = tmp_path / "tandava.toml"
    conf.write_text(f'[paths]\nstate_root = "{blocker.as_posix()}/state"\n', encoding="utf-8")
    assert main(["--config", str(conf), "doctor"]) == 1
    assert "FAIL state root" in capsys.readouterr().out


def test_demo_makes_a_video_in_its_own_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tandava demo` synthesizes a song and takes it through every state to a rendered video."""
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "is in rendered/" in out
    assert "incoming -> analyzed -> imaged -> pending_approval -> approved -> rendered" in out
    assert "tempo 120" in out or "tempo 119" in out
    (run_dir,) = (tmp_path / "demo" / "state" / "rendered").iterdir()
    assert f"video: {run_dir / 'final.mp4'}" in out


def test_daemon_serves_the_web_panel_while_it_runs(settings: Settings) -> None:
    """The long-running daemon serves its panel on the configured port, and closes it when it stops."""
    import socket

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings.web.port = probe.getsockname()[1]
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.web.port}/"
    try:
        assert wait_for(lambda: _answers(requests, url))
        assert "Tandava" in requests.get(url, timeout=5).text
    finally:
        stop.set()
        thread.join(30)
    assert not _answers(requests, url)


def _answers(requests: Any, url: str) -> bool:
    try:
        return bool(requests.get(url, timeout=1).status_code == 200)
    except requests.RequestException:
        return False


def test_status_shows_the_daemons_health_and_logs_show_a_runs_events(settings: Settings,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """After a daemon ran: status tells from the health file that it stopped; logs --run shows that run's events."""
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    write_song(settings.paths.inbox / "nataraja.wav", 6.0, 120.0)
    old = time.time() - 60
    os.utime(settings.paths.inbox / "nataraja.wav", (old, old))
    conf = str(settings.config_file)
    assert main(["--config", conf, "run", "--once"]) == 0
    capsys.readouterr()
    assert main(["--config", conf, "status"]) == 0
    assert "stopped" in capsys.readouterr().out
    [run_id] = runs_in(settings, State.PENDING_APPROVAL)
    assert main(["--config", conf, "logs", "--run", run_id[:20]]) == 0
    out = capsys.readouterr().out
    assert "run.moved" in out and "stage.started" in out
