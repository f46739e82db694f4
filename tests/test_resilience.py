"""The daemon as a real process: kill -9 at random moments loses nothing; bad songs fail alone."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.music.synth import write_long_silence, write_song

SONGS = [("kailash.wav", 100.0), ("nataraja.flac", 120.0), ("ganga.ogg", 90.0),
         ("damaru.wav", 140.0), ("शिव तांडव 🔱.flac", 128.0), ("trishula.wav", 110.0)]


def make_root(tmp_path: Path) -> Path:
    conf = tmp_path / "tandava.toml"
    conf.write_text(
        "[watch]\nstable_seconds = 0.3\nrescan_seconds = 1.0\npoll_seconds = 0.2\n"
        "[engine]\ntick_seconds = 0.05\ncpu_workers = 2\n"
        "[approval]\nmode = \"auto\"\n"
        "[images]\ncandidates = 1\n"
        "[log]\nlevel = \"INFO\"\n"
        "[web]\nport = 0\n",
        encoding="utf-8",
    )
    (tmp_path / "inbox").mkdir()
    return conf


def daemon_cmd(conf: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "daemon", "--config", str(conf), "run", *args]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TANDAVA_")}
    return clean | {"PYTHONUTF8": "1"}


def age(path: Path) -> None:
    """Make a file look like it arrived a minute ago (complete for --once)."""
    old = time.time() - 60
    os.utime(path, (old, old))


def visible_json_is_whole(state_root: Path) -> list[str]:
    """Every JSON file under a final name parses: nothing half-written is visible."""
    broken = []
    for path in state_root.rglob("*.json"):
        if path.name.startswith("."):
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            broken.append(f"{path}: {exc}")
    return broken


def finished_outputs(state_root: Path) -> dict[tuple[str, str], int]:
    """Every finished job's output (and the final video) with its mtime: what must never be redone."""
    done = {}
    for manifest_path in state_root.glob("*/*/run.json"):
        run_dir = manifest_path.parent
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for job in manifest.get("jobs", {}).values():
            if job["status"] == "done" and (run_dir / job["output"]).is_file():
                done[(run_dir.name, job["id"])] = (run_dir / job["output"]).stat().st_mtime_ns
        for name in ("analysis.json", "final.mp4"):
            if name == "analysis.json" and "analysis" not in manifest["stages"].get("analyze", {}).get("steps_done", []):
                continue
            if (run_dir / name).is_file() and (name != "final.mp4" or run_dir.parent.name == "rendered"):
                done[(run_dir.name, name)] = (run_dir / name).stat().st_mtime_ns
    return done


def test_kill_9_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Across repeated kill -9s every song becomes one video; no finished job or analysis is redone."""
    conf = make_root(tmp_path)
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    rng = random.Random(1234)
    pending = list(SONGS)
    for name, bpm in pending[:3]:
        write_song(inbox / name, 12.0, bpm, section_change_at=6.0)
    pending = pending[3:]
    finished: dict[tuple[str, str], int] = {}
    deadline = time.monotonic() + 75
    for _round in range(10):
        if time.monotonic() > deadline:
            break
        proc = subprocess.Popen(daemon_cmd(conf), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        if pending:  # songs keep arriving while the daemon lives and dies
            name, bpm = pending.pop()
            write_song(inbox / name, 12.0, bpm)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait()
        assert visible_json_is_whole(state) == []
        assert [p for p in (state / "rendered").rglob("*.mp4") if ".tandava-" in p.name] == []
        for key, mtime in finished_outputs(state).items():
            finished.setdefault(key, mtime)
    for name, bpm in pending:
        write_song(inbox / name, 12.0, bpm)
    for path in inbox.iterdir():
        if path.is_file():
            age(path)
    subprocess.run(daemon_cmd(conf, "--once"), env=env(), check=True, timeout=240,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    rendered = sorted((state / "rendered").iterdir())
    songs = sorted(p.name for d in rendered for p in d.iterdir() if p.suffix in {".wav", ".flac", ".ogg"})
    assert songs == sorted(name for name, _ in SONGS)
    for other in ("incoming", "analyzed", "imaged", "pending_approval", "approved", "failed"):
        assert [p.name for p in (state / other).iterdir()] == [], other
    assert all((d / "final.mp4").is_file() for d in rendered)
    assert not (inbox / "duplicates").exists()
    assert [p.name for p in inbox.iterdir()] == []
    assert visible_json_is_whole(state) == []
    assert [p for p in state.rglob("*") if ".tandava-" in p.name] == []
    now = finished_outputs(state)
    assert finished, "the kills came too late to catch any finished work"
    for key, mtime in finished.items():
        assert now.get(key) == mtime, key


def _without_read_override() -> list[str]:
    """As root, drop the capabilities that let root read any file, so chmod 000 means unreadable."""
    if os.name != "posix" or os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_bad_songs_fail_with_clear_reasons_while_good_ones_complete(tmp_path: Path) -> None:
    """Empty, truncated, not-audio, too short, too long and unreadable songs each fail with a reason."""
    conf = make_root(tmp_path)
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    (inbox / "empty.mp3").write_bytes(b"")
    write_song(tmp_path / "whole.mp3", 20.0, 120.0)
    data = (tmp_path / "whole.mp3").read_bytes()
    (inbox / "truncated.mp3").write_bytes(data[: len(data) // 3])
    (inbox / "lyrics.mp3").write_text("Om Namah Shivaya\n" * 200, encoding="utf-8")
    write_song(inbox / "blip.wav", 0.3, 120.0)
    write_long_silence(inbox / "two hours.wav", 2 * 3600.0)
    write_song(inbox / "locked.flac", 6.0, 120.0)
    (inbox / "locked.flac").chmod(0)
    write_song(inbox / "good.wav", 8.0, 120.0)
    for path in inbox.iterdir():
        age(path)
    started = time.monotonic()
    result = subprocess.run([*_without_read_override(), *daemon_cmd(conf, "--once")], env=env(),
                            capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60

    reasons = {}
    for run_dir in (state / "failed").iterdir():
        error = json.loads((run_dir / "error.json").read_text(encoding="utf-8"))
        manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        reasons[manifest["song"]["original_name"]] = error
        assert error["hint"], error
        assert error["retry"] == f"tandava retry {run_dir.name}"
    assert sorted(reasons) == sorted(["empty.mp3", "truncated.mp3", "lyrics.mp3", "blip.wav",
                                      "two hours.wav", "locked.flac"])
    assert "empty" in reasons["empty.mp3"]["reason"].lower()
    assert "truncat" in reasons["truncated.mp3"]["reason"].lower()
    assert "not" in reasons["lyrics.mp3"]["reason"].lower() and "audio" in reasons["lyrics.mp3"]["reason"].lower()
    assert "short" in reasons["blip.wav"]["reason"].lower()
    assert "long" in reasons["two hours.wav"]["reason"].lower()
    assert "permission" in reasons["locked.flac"]["reason"].lower() or "read" in reasons["locked.flac"]["reason"].lower()
    assert len(list((state / "rendered").iterdir())) == 1  # the good song still becomes a video

    log_lines = [json.loads(line) for line in (tmp_path / "logs" / "tandava.log").read_text(encoding="utf-8").splitlines()]
    failed_events = [e for e in log_lines if e["event"] == "run.failed"]
    assert len(failed_events) == 6
    assert all(e["run_id"] and e["stage"] == "analyze" and e["reason"] for e in failed_events)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signal delivery; the Windows service stops through run(stop_event)")
def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM stops the daemon with exit code 0, the lock released and the stop logged."""
    import signal

    conf = make_root(tmp_path)
    write_song(tmp_path / "inbox" / "one.wav", 6.0, 120.0)
    proc = subprocess.Popen(daemon_cmd(conf), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((tmp_path / "state" / "rendered").glob("*")):
            time.sleep(0.05)
        assert list((tmp_path / "state" / "rendered").glob("*"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    events = [json.loads(line)["event"] for line in (tmp_path / "logs" / "tandava.log").read_text(encoding="utf-8").splitlines()]
    assert "daemon.stop_requested" in events and events[-1] == "daemon.stopped"
    assert not (tmp_path / "state" / ".tandava.lock").exists()


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "--config", str(conf), *args], env=env(),
                          capture_output=True, text=True, encoding="utf-8", timeout=60)


def wait_for_dir_entry(folder: Path, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
        if entries:
            return entries[0]
        time.sleep(0.05)
    raise AssertionError(f"nothing appeared in {folder}")


def test_approvals_survive_kill_9_between_decisions(tmp_path: Path) -> None:
    """Decisions made around a kill -9 of the daemon are all kept and the video uses them."""
    conf = make_root(tmp_path)
    text = conf.read_text(encoding="utf-8").replace('mode = "auto"', 'mode = "manual"')
    conf.write_text(text.replace("candidates = 1", "candidates = 2"), encoding="utf-8")
    state = tmp_path / "state"
    write_song(tmp_path / "inbox" / "vigil.wav", 12.0, 110.0, section_change_at=6.0)
    proc = subprocess.Popen(daemon_cmd(conf), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = wait_for_dir_entry(state / "pending_approval")
        run_id = run_dir.name
        assert cli(conf, "approve", run_id, "0:1").returncode == 0
        proc.kill()
        proc.wait()
        assert cli(conf, "reject", run_id, "1:0").returncode == 0  # made while the daemon is dead
        proc = subprocess.Popen(daemon_cmd(conf), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = cli(conf, "approve", run_id, "--all")
        assert result.returncode == 0, result.stderr
        final = wait_for_dir_entry(state / "rendered", timeout=120)
    finally:
        proc.kill()
        proc.wait()
    approvals = json.loads((final / "approvals.json").read_text(encoding="utf-8"))["decisions"]
    assert [(d["segment"], d["candidate"], d["verdict"]) for d in approvals][:2] == [(0, 1, "approve"), (1, 0, "reject")]
    manifest = json.loads((final / "run.json").read_text(encoding="utf-8"))
    sources = {j["segment"]: j["source"] for j in manifest["jobs"].values() if j["kind"] == "clip"}
    assert sources[0].endswith("s000_c01.png")  # the approval made before the kill
    assert sources[1].endswith("s001_c01.png")  # --all skipped the candidate rejected during the outage
