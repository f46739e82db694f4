"""The daemon's health file: a heartbeat, what it is doing, and which runs are stuck.

How this works: the engine calls ``HealthReporter.tick`` on its main loop after
every tick; at most every ``write_seconds`` it rewrites
``<state_root>/.health.json`` atomically (temp then rename), so ``tandava
status``, the web panel's ``/healthz`` and a monitoring script read a whole
file or the previous one, never a part. Because the heartbeat comes from the
main loop, a stuck loop shows as an old heartbeat.

What goes in is cheap to gather: run counts per state are directory listings,
in-flight runs and how far each got (``progress``: the engine's board, so the
assembly's percentage is here too) come from the engine, backends from a callable the daemon
passes (plain dicts: ``{"name", "url", "up", "problem"}``). Manifests are read
only every ``scan_seconds``, to find stalls and the last error:

- a run is **stalled** when its current stage started, or last recorded
  progress, more than ``stall_minutes`` ago. It is logged once per stall
  (``run.stalled``, with the stage's ``detail["waiting"]`` reason: a person,
  VRAM, a server that is down, a missing model) and listed in the file;
- the **last error** is the newest failed run's reason (the failed run whose
  ``error.json`` was written last).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Settings
from daemon.errors import StoreError
from daemon.runs import fsutil
from daemon.runs.manifest import ERROR_FILE, utcnow
from daemon.runs.progress import StepCount
from daemon.runs.states import WORKING, State
from daemon.runs.store import RunRef, RunStore

log = structlog.get_logger("tandava.health")

HEALTH_FILE = ".health.json"
# Rewriting a small file every few seconds costs nothing and keeps the heartbeat fresh.
WRITE_SECONDS = 5.0
# Stall checks read manifests; once a minute is plenty for a 30-minute threshold.
SCAN_SECONDS = 60.0
# A stage that has not moved for half an hour is worth a person's look
# (a video clip takes minutes, not half an hour, on any GPU we support).
STALL_MINUTES = 30.0
# A heartbeat older than this means the daemon is gone or its loop is stuck.
STALE_SECONDS = 60.0

Backends = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class Stall:
    """A run whose current stage has not moved for too long, and what it waits for."""

    run_id: str
    state: str
    stage: str
    since: str  # UTC ISO time of the stage's start or last progress
    minutes: float
    waiting: str


@dataclass(frozen=True)
class Health:
    """What ``.health.json`` holds."""

    pid: int
    started_at: str
    heartbeat: str
    counts: dict[str, int]
    in_flight: list[str] = field(default_factory=list)
    backends: list[dict[str, Any]] = field(default_factory=list)
    last_error: dict[str, Any] | None = None
    stalls: list[Stall] = field(default_factory=list)
    # {"state_root_bytes": …} once the janitor measured it (see daemon.runs.retention).
    disk: dict[str, int] | None = None
    stopped_at: str | None = None
    # Per run in the pipeline: state, stage, waiting reason and its step count (``ProgressBoard.as_json``).
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Health:
        return cls(
            pid=int(data["pid"]),
            started_at=str(data["started_at"]),
            heartbeat=str(data["heartbeat"]),
            counts={str(k): int(v) for k, v in dict(data.get("counts") or {}).items()},
            in_flight=[str(r) for r in data.get("in_flight") or []],
            backends=[dict(b) for b in data.get("backends") or []],
            last_error=data.get("last_error"),
            stalls=[Stall(**s) for s in data.get("stalls") or []],
            disk=data.get("disk"),
            stopped_at=data.get("stopped_at"),
            progress={str(k): dict(v) for k, v in dict(data.get("progress") or {}).items()},
        )

    def age_seconds(self, now: datetime) -> float:
        """Seconds since the heartbeat."""
        return (now - datetime.fromisoformat(self.heartbeat)).total_seconds()


def health_path(state_root: Path) -> Path:
    return state_root / HEALTH_FILE


class HealthReporter:
    """Writes ``.health.json`` from the engine's ``on_tick`` and warns once per stalled run."""

    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        *,
        backends: Backends | None = None,
        disk: Callable[[], dict[str, int] | None] | None = None,
        in_flight: Callable[[], list[str]] | None = None,
        progress: Callable[[], dict[str, dict[str, Any]]] | None = None,
        clock: Callable[[], datetime] = utcnow,
        stall_minutes: float | None = None,
        write_seconds: float = WRITE_SECONDS,
        scan_seconds: float = SCAN_SECONDS,
    ) -> None:
        self.store = store
        self.path = health_path(store.root)
        self.backends = backends
        self.disk = disk
        self.in_flight = in_flight
        self.progress = progress
        # The last snapshot written: a live view takes its counts from here, not from the disk.
        self.last: Health | None = None
        self.clock = clock
        configured = getattr(settings.engine, "stall_minutes", None)
        self.stall_minutes = float(stall_minutes if stall_minutes is not None else configured or STALL_MINUTES)
        self.write_seconds = write_seconds
        self.scan_seconds = scan_seconds
        self.pid = os.getpid()
        self.started_at = clock()
        self._last_write: datetime | None = None
        self._last_scan: datetime | None = None
        self._stalls: list[Stall] = []
        self._warned: set[tuple[str, str, str]] = set()
        self._last_error: dict[str, Any] | None = None
        self._write_failed = False

    def tick(self) -> None:
        """Rewrite the health file if ``write_seconds`` have passed; never raises into the loop."""
        now = self.clock()
        if self._last_write is not None and (now - self._last_write).total_seconds() < self.write_seconds:
            return
        self._last_write = now
        try:
            if self._last_scan is None or (now - self._last_scan).total_seconds() >= self.scan_seconds:
                self._last_scan = now
                self._stalls = self._find_stalls(now)
                self._last_error = self._find_last_error()
            self.last = self.snapshot(now)
            self._write(self.last)
        except (OSError, StoreError) as exc:
            if not self._write_failed:  # once, not every few seconds
                log.warning("health.not_written", path=str(self.path), error=str(exc))
            self._write_failed = True
        else:
            self._write_failed = False

    def stop(self) -> None:
        """Record that the daemon stopped on purpose (so status does not ask whether it crashed)."""
        now = self.clock()
        try:
            # The last word stays on disk until the next start: make it true now,
            # not as of the last scan (a run may have failed since).
            self._stalls = self._find_stalls(now)
            self._last_error = self._find_last_error()
            self._write(self.snapshot(now, stopped=True))
        except (OSError, StoreError) as exc:
            log.warning("health.not_written", path=str(self.path), error=str(exc))

    def snapshot(self, now: datetime, *, stopped: bool = False) -> Health:
        """The health as of ``now`` (stalls and last error as of the last scan)."""
        return Health(
            pid=self.pid,
            started_at=self.started_at.isoformat(),
            heartbeat=now.isoformat(),
            counts=count_runs(self.store.root),
            # A stopped daemon works on nothing, whatever it was doing last.
            in_flight=sorted(self.in_flight()) if self.in_flight is not None and not stopped else [],
            backends=self._backends(),
            last_error=self._last_error,
            disk=self.disk() if self.disk is not None else None,
            stalls=list(self._stalls),
            stopped_at=now.isoformat() if stopped else None,
            progress=self.progress() if self.progress is not None else {},
        )

    def _write(self, health: Health) -> None:
        fsutil.atomic_write_json(self.path, health.to_json())

    def _backends(self) -> list[dict[str, Any]]:
        if self.backends is None:
            return []
        try:
            return [dict(b) for b in self.backends()]
        except Exception as exc:  # a backend's report must never stop the heartbeat
            return [{"name": "?", "up": False, "problem": f"cannot read backend health: {exc!r}"}]

    def _find_stalls(self, now: datetime) -> list[Stall]:
        limit = timedelta(minutes=self.stall_minutes)
        stalls: list[Stall] = []
        for ref in self.store.iter_runs([s for s in State if s in WORKING]):
            stall = self._stall_of(ref, now, limit)
            if stall is not None:
                stalls.append(stall)
        current = {(s.run_id, s.stage, s.since) for s in stalls}
        for stall in stalls:
            key = (stall.run_id, stall.stage, stall.since)
            if key not in self._warned:
                log.warning("run.stalled", run_id=stall.run_id, stage=stall.stage, state=stall.state,
                            minutes=stall.minutes, waiting=stall.waiting, since=stall.since)
        # A stall that ended (the run moved or progressed) may warn again if it stalls again.
        self._warned = current
        return stalls

    def _stall_of(self, ref: RunRef, now: datetime, limit: timedelta) -> Stall | None:
        try:
            manifest = self.store.load(ref)
        except StoreError:
            return None
        open_stages = [
            (name, progress) for name, progress in manifest.stages.items()
            if progress.started_at is not None and progress.is_open
        ]
        if not open_stages:
            return None  # queued, not started: waiting for a worker is not a stall
        name, progress = max(open_stages, key=lambda item: item[1].started_at or now)
        assert progress.started_at is not None
        since = max(progress.started_at, manifest.updated_at)
        if now - since < limit:
            return None
        waiting = str(progress.detail.get("waiting") or "no progress recorded (working, or stuck)")
        return Stall(ref.run_id, ref.state.value, name, since.isoformat(),
                     round((now - since).total_seconds() / 60, 1), waiting)

    def _find_last_error(self) -> dict[str, Any] | None:
        newest: tuple[float, RunRef] | None = None
        for ref in self.store.iter_runs([State.FAILED]):
            try:
                mtime = (ref.path / ERROR_FILE).stat().st_mtime
            except OSError:
                continue
            if newest is None or mtime > newest[0]:
                newest = (mtime, ref)
        if newest is None:
            return None
        try:
            error = self.store.load(newest[1]).last_error
        except StoreError:
            return None
        if error is None:
            return None
        return {"run_id": newest[1].run_id, "stage": error.stage, "cause": error.cause,
                "reason": error.reason, "hint": error.hint, "at": error.at.isoformat()}


def count_runs(state_root: Path) -> dict[str, int]:
    """Runs per state, from directory listings only."""
    counts: dict[str, int] = {}
    for state in State:
        try:
            with os.scandir(state_root / state.value) as entries:
                counts[state.value] = sum(1 for e in entries if e.is_dir() and not e.name.startswith("."))
        except OSError:
            counts[state.value] = 0
    return counts


def comfy_backends(pool: Any) -> Backends:
    """The backends callable for a ComfyUI ``Pool``: each server's name, url, up and problem."""

    def report() -> list[dict[str, Any]]:
        return [
            {"kind": "comfyui", "name": server.name, "url": server.client.url, "up": bool(server.up),
             "problem": server.problem, "jobs": len(server.held)}
            for server in list(pool.servers)
        ]

    return report


def read_health(state_root: Path) -> Health | None:
    """The health file, or None if no daemon wrote one (or it cannot be read)."""
    try:
        return Health.from_json(fsutil.read_json(health_path(state_root)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def format_age(seconds: float) -> str:
    """``2 s``, ``10 min``, ``3 h``, ``2 days``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def health_lines(state_root: Path, *, now: datetime | None = None,
                 stale_seconds: float = STALE_SECONDS) -> Iterator[str]:
    """What ``tandava status`` says about the daemon: heartbeat age, backends, stalls, last error."""
    health = read_health(state_root)
    if health is None:
        yield f"no daemon has written a heartbeat ({health_path(state_root)} is missing): is it running?"
        return
    now = now or utcnow()
    age = health.age_seconds(now)
    if health.stopped_at is not None:
        yield f"daemon stopped {format_age(age)} ago (pid {health.pid})"
    elif age <= stale_seconds:
        yield f"daemon running (pid {health.pid}), heartbeat {format_age(age)} ago"
    else:
        yield (f"no daemon has written a heartbeat for {format_age(age)}: is it running? "
               f"(last pid {health.pid}; `tandava logs` shows its last words)")
    if health.in_flight:
        yield f"working on: {', '.join(_with_progress(r, health.progress) for r in health.in_flight)}"
    for backend in health.backends:
        where = backend.get("url") or backend.get("name") or "?"
        state = "up" if backend.get("up") else f"DOWN: {backend.get('problem') or 'not answering'}"
        yield f"{backend.get('kind', 'backend')} {where}: {state}"
    for stall in health.stalls:
        yield f"stalled {format_age(stall.minutes * 60)}: {stall.run_id} in {stall.stage}: {stall.waiting}"
    if health.last_error is not None:
        err = health.last_error
        yield f"last error: {err.get('run_id')} in {err.get('stage')}: {err.get('reason')}"


def _with_progress(run_id: str, progress: dict[str, dict[str, Any]]) -> str:
    """``run (clips 12/41)`` when the health file knows the run's count."""
    count = StepCount.from_detail(progress.get(run_id) or {})
    return f"{run_id} ({count.label()})" if count is not None else run_id


def health_json(state_root: Path, *, now: datetime | None = None,
                stale_seconds: float = STALE_SECONDS) -> dict[str, Any]:
    """The body of ``/healthz``: ``ok`` when a running daemon's heartbeat is fresh, plus the file."""
    health = read_health(state_root)
    if health is None:
        return {"app": "tandava", "ok": False, "daemon": "no heartbeat"}
    age = health.age_seconds(now or utcnow())
    ok = health.stopped_at is None and age <= stale_seconds
    return {"app": "tandava", "ok": ok, "heartbeat_age_seconds": round(age, 1), **health.to_json()}
