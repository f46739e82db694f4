"""The health file: heartbeat, counts, backends, stalls logged once, and what status says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from structlog.testing import capture_logs

from daemon.config import Settings
from daemon.errors import PermanentError
from daemon.runs.health import (
    HEALTH_FILE,
    HealthReporter,
    health_json,
    health_lines,
    read_health,
)
from daemon.runs.states import Event
from daemon.runs.store import RunRef, RunStore

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_run(store: RunStore, tmp_path: Path, name: str = "song.mp3") -> RunRef:
    song = tmp_path / name
    song.write_bytes(b"ID3" + name.encode())
    return store.create(song, "ab" * 32 if name == "song.mp3" else "cd" * 32)


def start_stage(store: RunStore, ref: RunRef, stage: str, *, waiting: str | None = None) -> None:
    manifest = store.load(ref)
    progress = manifest.progress(stage)
    progress.started_at = store.clock()
    progress.attempts = 1
    if waiting is not None:
        progress.detail["waiting"] = waiting
    store.save(ref, manifest)


def test_health_file_is_written_and_read_back(settings: Settings, tmp_path: Path) -> None:
    """tick() writes .health.json with pid, heartbeat, counts and in-flight runs; read_health reads it."""
    clock = Clock()
    store = RunStore(tmp_path / "state", clock=clock)
    store.ensure_layout()
    ref = make_run(store, tmp_path)
    reporter = HealthReporter(settings, store, clock=clock, in_flight=lambda: [ref.run_id])
    reporter.tick()
    assert (store.root / HEALTH_FILE).is_file()
    health = read_health(store.root)
    assert health is not None
    assert health.heartbeat == T0.isoformat()
    assert health.counts["incoming"] == 1 and health.counts["failed"] == 0
    assert health.in_flight == [ref.run_id]
    assert health.stalls == [] and health.last_error is None


def test_heartbeat_is_rewritten_at_most_every_write_seconds(settings: Settings, store: RunStore) -> None:
    """A tick within write_seconds of the last write leaves the file alone; a later one refreshes it."""
    clock = Clock()
    reporter = HealthReporter(settings, store, clock=clock, write_seconds=5)
    reporter.tick()
    clock.advance(seconds=2)
    reporter.tick()
    health = read_health(store.root)
    assert health is not None and health.heartbeat == T0.isoformat()
    clock.advance(seconds=4)
    reporter.tick()
    health = read_health(store.root)
    assert health is not None and health.age_seconds(clock.now) == 0


def test_backends_are_in_the_file(settings: Settings, store: RunStore) -> None:
    """Each backend the daemon reports (url, up, problem) lands in the file and in status lines."""
    servers = [
        {"kind": "comfyui", "name": "a", "url": "http://127.0.0.1:8188", "up": True, "problem": None},
        {"kind": "comfyui", "name": "b", "url": "http://gpu2:8188", "up": False, "problem": "connection refused"},
    ]
    clock = Clock()
    HealthReporter(settings, store, clock=clock, backends=lambda: servers).tick()
    health = read_health(store.root)
    assert health is not None and health.backends == servers
    lines = list(health_lines(store.root, now=clock.now))
    assert "comfyui http://127.0.0.1:8188: up" in lines
    assert "comfyui http://gpu2:8188: DOWN: connection refused" in lines


def test_a_broken_backend_report_does_not_stop_the_heartbeat(settings: Settings, store: RunStore) -> None:
    """A backends callable that raises is reported as a problem, and the file is still written."""

    def broken() -> list[dict[str, object]]:
        raise RuntimeError("boom")

    HealthReporter(settings, store, clock=Clock(), backends=broken).tick()
    health = read_health(store.root)
    assert health is not None and "boom" in str(health.backends[0]["problem"])


def test_stalled_run_is_logged_once_with_its_waiting_reason(settings: Settings, tmp_path: Path) -> None:
    """A stage quiet for longer than stall_minutes warns run.stalled once, with what it waits for, and is listed."""
    clock = Clock()
    store = RunStore(tmp_path / "state", clock=clock)
    store.ensure_layout()
    ref = make_run(store, tmp_path)
    start_stage(store, ref, "analyze", waiting="ComfyUI at 127.0.0.1:8188 is down")
    reporter = HealthReporter(settings, store, clock=clock, stall_minutes=30, write_seconds=1, scan_seconds=1)
    with capture_logs() as logs:
        reporter.tick()  # fresh: no stall
        clock.advance(minutes=31)
        reporter.tick()
        clock.advance(minutes=1)
        reporter.tick()  # still stalled: no second warning
    stalled = [e for e in logs if e["event"] == "run.stalled"]
    assert len(stalled) == 1
    assert stalled[0]["run_id"] == ref.run_id and stalled[0]["stage"] == "analyze"
    assert stalled[0]["waiting"] == "ComfyUI at 127.0.0.1:8188 is down"
    assert stalled[0]["log_level"] == "warning"
    health = read_health(store.root)
    assert health is not None and [s.run_id for s in health.stalls] == [ref.run_id]
    assert health.stalls[0].minutes == 32
    lines = list(health_lines(store.root, now=clock.now))
    assert any("stalled 32 min" in line and "is down" in line for line in lines)


def test_progress_ends_a_stall_and_a_new_one_warns_again(settings: Settings, tmp_path: Path) -> None:
    """Recorded progress clears a stall; stalling again later is a new warning."""
    clock = Clock()
    store = RunStore(tmp_path / "state", clock=clock)
    store.ensure_layout()
    ref = make_run(store, tmp_path)
    start_stage(store, ref, "analyze")
    reporter = HealthReporter(settings, store, clock=clock, stall_minutes=30, write_seconds=1, scan_seconds=1)
    with capture_logs() as logs:
        clock.advance(minutes=31)
        reporter.tick()
        store.save(ref, store.load(ref))  # progress: updated_at moves
        clock.advance(seconds=5)
        reporter.tick()
        health = read_health(store.root)
        assert health is not None and health.stalls == []
        clock.advance(minutes=31)
        reporter.tick()
    assert [e["event"] for e in logs].count("run.stalled") == 2


def test_a_queued_run_that_never_started_is_not_a_stall(settings: Settings, tmp_path: Path) -> None:
    """A run waiting in its directory for a free worker is not reported as stalled."""
    clock = Clock()
    store = RunStore(tmp_path / "state", clock=clock)
    store.ensure_layout()
    make_run(store, tmp_path)
    clock.advance(hours=2)
    reporter = HealthReporter(settings, store, clock=clock, stall_minutes=30)
    reporter.tick()
    health = read_health(store.root)
    assert health is not None and health.stalls == []


def test_last_error_is_the_newest_failed_run(settings: Settings, tmp_path: Path) -> None:
    """The newest failed run's reason is the health file's last error."""
    clock = Clock()
    store = RunStore(tmp_path / "state", clock=clock)
    store.ensure_layout()
    ref = make_run(store, tmp_path)
    store.fail(ref, "analyze", PermanentError("the song is not audio", "drop a real song"))
    HealthReporter(settings, store, clock=clock).tick()
    health = read_health(store.root)
    assert health is not None and health.last_error is not None
    assert health.last_error["reason"] == "the song is not audio"
    assert health.last_error["run_id"] == ref.run_id
    assert any(line.startswith("last error:") for line in health_lines(store.root, now=clock.now))


def test_health_lines_running_stale_stopped_and_missing(settings: Settings, store: RunStore) -> None:
    """Status says running with the heartbeat's age, asks whether it runs when old or missing, and says stopped."""
    assert "is it running?" in next(iter(health_lines(store.root)))
    clock = Clock()
    reporter = HealthReporter(settings, store, clock=clock)
    reporter.tick()
    first = next(iter(health_lines(store.root, now=T0 + timedelta(seconds=2))))
    assert first.startswith("daemon running") and "heartbeat 2 s ago" in first
    stale = next(iter(health_lines(store.root, now=T0 + timedelta(minutes=10))))
    assert stale.startswith("no daemon has written a heartbeat for 10 min: is it running?")
    reporter.stop()
    assert next(iter(health_lines(store.root, now=T0))).startswith("daemon stopped")


def test_health_json_for_healthz(settings: Settings, store: RunStore) -> None:
    """health_json is ok only with a fresh heartbeat and carries the file's content."""
    assert health_json(store.root) == {"app": "tandava", "ok": False, "daemon": "no heartbeat"}
    HealthReporter(settings, store, clock=Clock()).tick()
    fresh = health_json(store.root, now=T0 + timedelta(seconds=3))
    assert fresh["ok"] is True and fresh["heartbeat_age_seconds"] == 3 and "counts" in fresh
    assert health_json(store.root, now=T0 + timedelta(hours=1))["ok"] is False


def test_stall_minutes_comes_from_settings_when_configured(settings: Settings, store: RunStore) -> None:
    """Without an explicit value the reporter uses [engine] stall_minutes, or 30."""
    reporter = HealthReporter(settings, store)
    assert reporter.stall_minutes == getattr(settings.engine, "stall_minutes", 30.0)


def test_moving_a_run_updates_counts(settings: Settings, tmp_path: Path) -> None:
    """Counts follow the directories."""
    clock = Clock()
    store = RunStore(tmp_path / "state", clock=clock)
    store.ensure_layout()
    ref = make_run(store, tmp_path)
    store.move(ref, Event.ANALYSIS_DONE)
    HealthReporter(settings, store, clock=clock).tick()
    health = read_health(store.root)
    assert health is not None and health.counts["incoming"] == 0 and health.counts["analyzed"] == 1
