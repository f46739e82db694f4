"""Retention and disk size: old duplicates go, sizes are cached for resting runs, the janitor stays off the loop."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from test_cli_runs import rendered_run

from daemon.config import RetentionConfig, Settings
from daemon.host.report import status_lines
from daemon.runs import archive, retention
from daemon.runs.health import HealthReporter, read_health
from daemon.runs.manifest import utcnow
from daemon.runs.retention import DiskUsage, Janitor
from daemon.runs.store import RunStore


def test_old_duplicates_go_and_recent_ones_stay(store: RunStore, tmp_path: Path) -> None:
    """Files in <inbox>/duplicates/ older than duplicates_days are planned for removal, newer ones are not."""
    duplicates = tmp_path / "inbox" / "duplicates"
    duplicates.mkdir(parents=True)
    (duplicates / "song.mp3").write_bytes(b"d" * 500)
    (duplicates / "folder").mkdir()  # only files are duplicates
    cfg = RetentionConfig(intermediates_days=0, duplicates_days=30)
    now = utcnow()
    assert retention.plan(store, cfg, inbox=tmp_path / "inbox", now=now) == []
    later = retention.plan(store, cfg, inbox=tmp_path / "inbox", now=now + timedelta(days=31))
    assert [(r.path.name, r.bytes) for r in later] == [("song.mp3", 500)]
    assert retention.apply(store, later) == 500
    assert not (duplicates / "song.mp3").exists() and (duplicates / "folder").is_dir()
    off = RetentionConfig(intermediates_days=0, duplicates_days=0)
    assert retention.plan(store, off, inbox=tmp_path / "inbox", now=now + timedelta(days=999)) == []


def test_disk_usage_counts_everything_and_walks_resting_runs_once(store: RunStore, tmp_path: Path) -> None:
    """The state root's size is exact, and a finished run is walked again only when its folder changes."""
    rendered_run(store, tmp_path, "a.wav", days_ago=20)
    usage = DiskUsage(store.root)
    assert usage.measure() == archive.tree_size(store.root)
    assert usage.walks == 1
    usage.measure()
    assert usage.walks == 1  # cached: the folder did not change
    retention.apply(store, retention.plan(store, RetentionConfig(), inbox=None))
    assert usage.measure() == archive.tree_size(store.root)
    assert usage.walks == 2  # its candidates/ and clips/ went: measured again


def test_the_janitor_sweeps_on_its_own_thread_and_the_health_file_shows_the_size(
        settings: Settings, store: RunStore, tmp_path: Path) -> None:
    """The janitor removes old intermediates off the loop; the health file and status then show the size."""
    ref = rendered_run(store, tmp_path, "a.wav", days_ago=20)
    janitor = Janitor(store, settings.retention, inbox=None, usage_seconds=0.05)
    health = HealthReporter(settings, store, disk=janitor.disk)
    started = time.perf_counter()
    janitor.start()
    assert time.perf_counter() - started < 0.05  # never blocks the engine's loop
    deadline = time.monotonic() + 10
    while janitor.size is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not (ref.path / "candidates").exists()
    health.tick()
    written = read_health(store.root)
    assert written is not None and written.disk == {"state_root_bytes": janitor.size}
    (ref.path / "extra.bin").write_bytes(b"x" * 5000)  # measured again, swept only hourly
    deadline = time.monotonic() + 10
    while written.disk and janitor.size == written.disk["state_root_bytes"] and time.monotonic() < deadline:
        time.sleep(0.01)
    janitor.stop()
    assert janitor.sweeps == 1
    assert janitor.size == archive.tree_size(store.root)  # the health file and the new file included
    health.write_seconds = 0
    health.tick()
    lines = list(status_lines(store.root))
    assert f"disk: the state root holds {archive.human_bytes(janitor.size or 0)}" in lines
