"""``tandava status --watch``: the live view of a daemon running elsewhere, read from its state root.

How this works: a service's daemon has no terminal, so the view reads what it
leaves on disk: the health file (is it alive, its servers, run counts, and
its board of runs in flight with what each waits for) and the manifests of
runs in working states (each stage's recorded ``detail["progress"]``, so the
assembly's percentage too). ``DiskSource`` re-reads a manifest only when its
(mtime, size) changed, and is asked once a second. It opens files for
reading only and takes no lock: watching changes nothing, and it never
stands in the daemon's way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from daemon.errors import StoreError
from daemon.host.live import Footer, Frame, LiveView, ViewMode, make_console
from daemon.runs.health import STALE_SECONDS, Health, format_age, read_health
from daemon.runs.manifest import MANIFEST, Manifest, utcnow
from daemon.runs.progress import RunProgress, StepCount
from daemon.runs.states import WORKING, State
from daemon.runs.store import RunRef, RunStore

# Disk is read for every refresh here: once a second is live enough for a person.
WATCH_REFRESH_PER_SECOND = 1.0


class DiskSource:
    """Frames for the live view from the state root and the health file."""

    def __init__(self, root: Path, *, panel: str = "", clock: Callable[[], datetime] = utcnow) -> None:
        self.store = RunStore(root)
        self.panel = panel
        self.clock = clock
        self._cache: dict[str, tuple[tuple[int, int], Manifest]] = {}

    def __call__(self) -> Frame:
        health = read_health(self.store.root)
        board = health.progress if health is not None and health.stopped_at is None else {}
        runs: list[RunProgress] = []
        seen = set()
        for ref in self.store.iter_runs([s for s in State if s in WORKING]):
            manifest = self._manifest(ref)
            seen.add(ref.run_id)
            if manifest is not None:
                runs.append(_progress_of(ref, manifest, board.get(ref.run_id) or {}))
        for run_id in [r for r in self._cache if r not in seen]:
            del self._cache[run_id]
        return Frame(runs, self._footer(health))

    def _manifest(self, ref: RunRef) -> Manifest | None:
        try:
            st = (ref.path / MANIFEST).stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(ref.run_id)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            manifest = self.store.load(ref)
        except StoreError:
            return None  # being rewritten, or damaged: status and show say which
        self._cache[ref.run_id] = (stamp, manifest)
        return manifest

    def _footer(self, health: Health | None) -> Footer:
        if health is None:
            return Footer(daemon="no daemon has written a heartbeat here: is it running?", panel=self.panel)
        age = health.age_seconds(self.clock())
        if health.stopped_at is not None:
            alive = f"daemon stopped {format_age(age)} ago"
        elif age > STALE_SECONDS:
            alive = f"no heartbeat for {format_age(age)}: is the daemon running?"
        else:
            alive = f"daemon pid {health.pid}, heartbeat {format_age(age)} ago"
        comfy = [b for b in health.backends if b.get("kind", "comfyui") == "comfyui"]
        return Footer(daemon=alive, panel=self.panel, backends=comfy, counts=dict(health.counts))


def _progress_of(ref: RunRef, manifest: Manifest, on_board: dict[str, Any]) -> RunProgress:
    """A run's line from its manifest: its open stage, that stage's count and what it waits for."""
    open_stages = [(n, p) for n, p in manifest.stages.items() if p.started_at is not None and p.finished_at is None]
    if not open_stages:
        return RunProgress(ref.run_id, manifest.song.original_name, ref.state.value)
    name, progress = max(open_stages, key=lambda item: item[1].started_at or manifest.created_at)
    count = StepCount.from_detail(progress.detail)
    board_count = StepCount.from_detail(on_board)
    if board_count is not None and on_board.get("stage") == name and (count is None or board_count.done > count.done):
        count = board_count  # the daemon's board can be a job ahead of run.json
    waiting = str(progress.detail.get("waiting") or "")
    ask = str(on_board.get("ask") or "")  # else the view reads it from the reason (live.person_ask)
    return RunProgress(ref.run_id, manifest.song.original_name, ref.state.value, name, count, waiting, ask)


def watch(root: Path, stream: TextIO, *, panel: str = "", stop: Callable[[], bool] | None = None,
          width: int | None = None) -> int:
    """Show the daemon's runs on ``stream`` until Ctrl-C (or ``stop`` says so); returns 0."""
    import time

    console = make_console(stream, width=width)
    mode: ViewMode = "live" if console.is_terminal and not console.is_dumb_terminal else "plain"
    view = LiveView(console, mode=mode, refresh_per_second=WATCH_REFRESH_PER_SECOND, transient=False)
    try:
        with view.showing(DiskSource(root, panel=panel)):
            while stop is None or not stop():
                time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    return 0
