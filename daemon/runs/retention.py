"""Retention: disk that does not grow forever, and how much the state root holds.

How this works: ``plan`` lists what the policy (``[retention]``) would remove
and how many bytes each removal frees; ``apply`` removes it. Only two things
ever go:

- the candidates and clips (``candidates/``, ``clips/``) of runs rendered more
  than ``intermediates_days`` ago. The video, its exports, the thumbnail, the
  contact sheet, ``run.json``, the decisions, the plan and the song stay; the
  manifest records when (``intermediates_removed_at``);
- files in ``<inbox>/duplicates/`` older than ``duplicates_days``: second
  copies of songs that a run already holds.

``tandava clean --dry-run`` prints the plan, ``tandava clean`` applies it, and
the daemon's ``Janitor`` applies it about hourly on a thread of its own, so
the engine's loop (and with it the heartbeat) never waits for a large delete.

The state root's size is measured by ``DiskUsage``: finished, failed and
archived runs do not change, so their sizes are cached against their folder's
mtime (which changes when retention removes a folder inside); only runs at
work are walked again, at most every few minutes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from daemon import defaults
from daemon.config import RetentionConfig
from daemon.errors import StoreError
from daemon.runs.archive import ARCHIVE_DIR, tree_size
from daemon.runs.manifest import utcnow
from daemon.runs.states import State
from daemon.runs.store import RunStore

log = structlog.get_logger("tandava.retention")

# Where stages put candidates and clips (daemon.stages.candidates / render; named
# here because the run model sits below the stages).
INTERMEDIATE_DIRS = ("candidates", "clips")
DUPLICATES_DIR = "duplicates"
# Folders under the state root whose runs no longer change (their sizes are cached).
_RESTING_DIRS = (State.RENDERED.value, State.FAILED.value, ARCHIVE_DIR)


@dataclass(frozen=True)
class Removal:
    """One folder or file the policy removes, what it frees, and why."""

    path: Path
    bytes: int
    why: str
    run_id: str = ""


def plan(store: RunStore, cfg: RetentionConfig, *, inbox: Path | None,
         now: datetime | None = None) -> list[Removal]:
    """What the policy would remove now (nothing is touched)."""
    now = now or store.clock()
    removals: list[Removal] = []
    if cfg.intermediates_days > 0:
        limit = timedelta(days=cfg.intermediates_days)
        for ref in store.iter_runs([State.RENDERED]):
            present = [ref.path / name for name in INTERMEDIATE_DIRS if (ref.path / name).is_dir()]
            if not present:
                continue  # already removed: no manifest read
            rendered = _rendered_at(store, ref.path, ref.run_id)
            if rendered is None or now - rendered < limit:
                continue
            days = (now - rendered).days
            for folder in present:
                removals.append(Removal(folder, tree_size(folder),
                                        f"{folder.name} of a run rendered {days} days ago", ref.run_id))
    if cfg.duplicates_days > 0 and inbox is not None:
        removals.extend(_old_duplicates(inbox / DUPLICATES_DIR, timedelta(days=cfg.duplicates_days), now))
    return removals


def apply(store: RunStore, removals: list[Removal]) -> int:
    """Remove what ``plan`` listed; returns the bytes freed. A removal that fails is logged and skipped."""
    freed = 0
    pruned: set[str] = set()
    for removal in removals:
        try:
            if removal.path.is_dir():
                shutil.rmtree(removal.path)
            else:
                removal.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("retention.cannot_remove", path=str(removal.path), error=str(exc))
            continue
        freed += removal.bytes
        if removal.run_id:
            pruned.add(removal.run_id)
    for run_id in pruned:
        _record(store, run_id)
    return freed


def _record(store: RunStore, run_id: str) -> None:
    try:
        ref = store.find(run_id)
        manifest = store.load(ref)
    except StoreError:
        return
    manifest.intermediates_removed_at = store.clock()
    store.save(ref, manifest)


def _rendered_at(store: RunStore, path: Path, run_id: str) -> datetime | None:
    from daemon.runs.store import RunRef

    try:
        manifest = store.load(RunRef(run_id, State.RENDERED, path))
    except StoreError:
        return None  # a damaged run is left alone: it is named elsewhere
    times = [change.at for change in manifest.history if change.state is State.RENDERED]
    return times[-1] if times else None


def _old_duplicates(folder: Path, limit: timedelta, now: datetime) -> list[Removal]:
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        # Moving a file aside keeps its mtime (the song's own); the link or rename
        # that moved it set ctime on POSIX. The later of the two is when it came.
        arrived = datetime.fromtimestamp(max(st.st_mtime, st.st_ctime), tz=UTC)
        if now - arrived >= limit:
            found.append(Removal(Path(entry.path), st.st_size,
                                 f"duplicate kept {(now - arrived).days} days"))
    return found


class DiskUsage:
    """The state root's size in bytes, cheap to refresh (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[int, int]] = {}
        # Resting runs walked (not served from the cache), for the curious and the tests.
        self.walks = 0

    def measure(self) -> int:
        total = 0
        seen: set[str] = set()
        try:
            tops = list(os.scandir(self.root))
        except OSError:
            return 0
        for top in tops:
            try:
                if not top.is_dir(follow_symlinks=False):
                    total += top.stat(follow_symlinks=False).st_size
                    continue
            except OSError:
                continue
            if top.name not in _RESTING_DIRS:
                total += tree_size(Path(top.path))
                continue
            try:
                runs = list(os.scandir(top.path))
            except OSError:
                continue
            for run in runs:
                seen.add(run.path)
                total += self._resting_size(run)
        for path in [p for p in self._cache if p not in seen]:
            del self._cache[path]
        return total

    def _resting_size(self, entry: os.DirEntry[str]) -> int:
        try:
            stamp = entry.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            return 0
        hit = self._cache.get(entry.path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        size = tree_size(Path(entry.path))
        self.walks += 1
        self._cache[entry.path] = (stamp, size)
        return size


class Janitor:
    """Applies the retention policy about hourly and keeps the state root's size, on a thread of its own.

    Its own thread, not the engine's loop: a first sweep after months may delete
    thousands of files, and the heartbeat must not wait for that.
    """

    def __init__(self, store: RunStore, cfg: RetentionConfig, *, inbox: Path | None,
                 clock: Callable[[], datetime] = utcnow,
                 sweep_seconds: float = defaults.RETENTION_SWEEP_SECONDS,
                 usage_seconds: float = defaults.DISK_USAGE_SECONDS) -> None:
        self.store = store
        self.cfg = cfg
        self.inbox = inbox
        self.clock = clock
        self.sweep_seconds = sweep_seconds
        self.usage_seconds = usage_seconds
        self.usage = DiskUsage(store.root)
        self.size: int | None = None  # bytes under the state root, once measured
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def disk(self) -> dict[str, int] | None:
        """What the health file shows about disk."""
        return None if self.size is None else {"state_root_bytes": self.size}

    def start(self) -> Janitor:
        """Sweep and measure now, then again every ``sweep_seconds`` / ``usage_seconds``."""
        self._thread = threading.Thread(target=self._loop, name="tandava-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the sweep or measurement under way (a delete is never cut in half)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            sweep = now >= next_sweep
            if sweep:
                next_sweep = now + self.sweep_seconds
            self._work(sweep)
            self._stop.wait(min(self.usage_seconds, max(0.0, next_sweep - time.monotonic())))

    def _work(self, sweep: bool) -> None:
        try:
            if sweep:
                removals = plan(self.store, self.cfg, inbox=self.inbox, now=self.clock())
                if removals:
                    freed = apply(self.store, removals)
                    log.info("retention.removed", items=len(removals), bytes=freed,
                             runs=len({r.run_id for r in removals if r.run_id}))
                self.sweeps += 1
            self.size = self.usage.measure()
        except Exception:  # housekeeping must never take the daemon down
            log.exception("retention.failed")
