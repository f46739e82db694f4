"""What happened to runs, as numbered events: for SSE clients and the webhook outbox.

How this works: ``ChangeWatcher`` looks at the store every ``api.watch_seconds``
(one directory listing per state and one ``stat`` per run; a manifest is read
only when its ``run.json`` or ``approvals.json`` changed) and compares each run
with what it saw last: a new run, a new entry in its state history (so a state passed
through between two looks is told too), a new finished step or job of a
stage, a newly offered segment, a new decision. Each difference becomes an ``Event`` appended to
``EventLog``: one JSON line in ``<state root>/.api/events.jsonl``, with an id
one above the last, written before anyone is told. What the watcher saw is
saved beside it (``seen.json``), so a daemon that restarts reports what
changed while it was away, and the ids go on where they stopped. Past 8 MB
the file is rewritten with the last 5000 events and every event a webhook
has yet to deliver, so it does not grow without bound.

Watching the store instead of hooking the engine means every way a run moves
(the engine, ``tandava retry`` in another terminal, a decision in Telegram)
is seen the same way, and nothing below the channels knows about the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from daemon.approval.store import APPROVALS_FILE, DECIDING_STATES, Approvals, offered_segments
from daemon.channels.web.api.models import Event
from daemon.errors import StoreError
from daemon.runs import fsutil
from daemon.runs.manifest import MANIFEST
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore

log = structlog.get_logger("tandava.api")

API_DIR = ".api"
EVENTS_FILE = "events.jsonl"
SEEN_FILE = "seen.json"
# Events kept in memory for SSE clients that resume; older ones are read from the file.
_MEMORY = 5000
# Past this size the file is rewritten without the events nobody needs any more.
_MAX_BYTES = 8 * 1024 * 1024


class EventLog:
    """Numbered events, appended to a JSON-lines file and kept (recent ones) in memory."""

    def __init__(self, folder: Path, *, max_bytes: int = _MAX_BYTES, keep: int = _MEMORY) -> None:
        self.path = folder / EVENTS_FILE
        folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.keep = max_bytes, keep
        # The lowest event id someone still needs (the slowest webhook's cursor); set by its owner.
        self.floor: Callable[[], int] = lambda: self.last_id
        self._lock = threading.Lock()
        self._recent: list[Event] = []
        self.last_id = 0
        for event in self._read_file():
            self._remember(event)
        self.changed = threading.Condition(self._lock)

    def _read_file(self) -> list[Event]:
        events = []
        try:
            with self.path.open("r", encoding="utf-8") as fh:
                for line in fh:
                    with contextlib.suppress(ValueError):
                        events.append(Event.model_validate_json(line))
        except FileNotFoundError:
            pass
        return events

    def _remember(self, event: Event) -> None:
        self.last_id = max(self.last_id, event.id)
        self._recent.append(event)
        if len(self._recent) > _MEMORY:
            del self._recent[: len(self._recent) - _MEMORY]

    def append(self, kind: str, run_id: str, data: dict[str, Any]) -> Event:
        """Record one event durably and return it."""
        with self._lock:
            event = Event(id=self.last_id + 1, type=kind, run_id=run_id,
                          at=datetime.now(UTC), data=data)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(event.model_dump_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            self._remember(event)
            if size > self.max_bytes:
                self._compact()
            self.changed.notify_all()
            return event

    def _compact(self) -> None:
        """Rewrite the file with the last ``keep`` events and every one a webhook still owes."""
        keep_after = min(self.floor(), self.last_id - self.keep)
        kept = [e for e in self._read_file() if e.id > keep_after]
        fsutil.atomic_write_text(self.path, "".join(e.model_dump_json() + "\n" for e in kept))

    def since(self, after: int, limit: int = 1000) -> list[Event]:
        """Events with an id above ``after``, oldest first (at most ``limit``)."""
        with self._lock:
            if not self._recent or self._recent[0].id <= after + 1:
                return [e for e in self._recent if e.id > after][:limit]
        # A client resuming from before what memory holds: read the file.
        return [e for e in self._read_file() if e.id > after][:limit]


@dataclass(frozen=True)
class _Seen:
    state: str
    manifest_ns: int
    approvals_ns: int
    steps: dict[str, list[str]]
    jobs: dict[str, int]
    decisions: int
    history: int
    offered: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "manifest_ns": self.manifest_ns, "approvals_ns": self.approvals_ns,
                "steps": self.steps, "jobs": self.jobs, "decisions": self.decisions, "history": self.history,
                "offered": self.offered}


class ChangeWatcher:
    """Turns changes in the store into events (see the module docstring); ``poll`` does one look."""

    def __init__(self, store: RunStore, events: EventLog, *, on_event: Callable[[Event], None] | None = None) -> None:
        self.store = store
        self.events = events
        self.on_event = on_event
        self.seen_path = events.path.parent / SEEN_FILE
        self.seen: dict[str, _Seen] = {}
        # The first look of an API that never ran here takes the store as it is, silently
        # (a store of 500 old runs is not 3000 news).
        self.baseline = not self.seen_path.exists()
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            raw = json.loads(self.seen_path.read_text(encoding="utf-8"))
            self.seen = {k: _Seen(v["state"], v["manifest_ns"], v["approvals_ns"], v["steps"], v["jobs"],
                                  v["decisions"], v["history"], v.get("offered", [])) for k, v in raw.items()}

    def poll(self) -> int:
        """Look once; returns how many events it recorded."""
        made = 0
        present: set[str] = set()
        for state in State:
            folder = self.store.dir_for(state)
            try:
                entries = [e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
            except FileNotFoundError:
                continue
            for entry in entries:
                present.add(entry.name)
                made += self._look(entry.name, state, entry.path)
        gone = set(self.seen) - present
        for run_id in gone:
            del self.seen[run_id]
        if made or gone or self.baseline:
            fsutil.atomic_write_json(self.seen_path, {k: v.to_json() for k, v in self.seen.items()})
        self.baseline = False
        return made

    def _look(self, run_id: str, state: State, path: str) -> int:
        # Strings, not Paths, until something changed: this runs for every run twice a second.
        manifest_ns = _mtime(os.path.join(path, MANIFEST))  # noqa: PTH116, PTH118 - hot path: pathlib costs 5x here
        approvals_ns = _mtime(os.path.join(path, APPROVALS_FILE))  # noqa: PTH116, PTH118 - hot path: pathlib costs 5x here
        before = self.seen.get(run_id)
        if before is not None and (before.state, before.manifest_ns, before.approvals_ns) == (
                state.value, manifest_ns, approvals_ns):
            return 0
        ref = RunRef(run_id, state, Path(path))
        try:
            manifest = self.store.load(ref)
        except StoreError:
            return 0  # half-made or damaged: looked at again when it changes
        steps = {name: list(p.steps_done) for name, p in manifest.stages.items()}
        jobs: dict[str, int] = {}
        for job in manifest.jobs.values():
            if job.status == "done":
                jobs[job.kind] = jobs.get(job.kind, 0) + 1
        decisions = self._decisions(ref) if approvals_ns else []
        made: list[tuple[str, dict[str, Any]]] = []
        history = manifest.history
        # Every state change is in the manifest's history: a state passed through between two
        # looks (offer takes milliseconds) is told too, in order.
        told = before.history if before else 1
        if before is None:
            made.append(("run.created", {"song": manifest.song.original_name,
                                         "state": (history[0].state if history else ref.state).value}))
        old_steps = before.steps if before else {}
        for stage, done in steps.items():
            had = set(old_steps.get(stage, []))
            made.extend(("run.progress", {"stage": stage, "step": step}) for step in done if step not in had)
        for kind, count in jobs.items():
            if count > (before.jobs.get(kind, 0) if before else 0):
                made.append(("run.progress", {"jobs": kind, "done": count,
                                              "total": sum(1 for j in manifest.jobs.values() if j.kind == kind)}))
        # A segment is offered the moment its candidates exist, while the run's others are made.
        offered = sorted(offered_segments(manifest)) if ref.state in DECIDING_STATES else (
            before.offered if before else [])
        made.extend(("segment.offered", {"segment": seg, "offered": len(offered)})
                    for seg in offered if seg not in (before.offered if before else []))
        for decision in decisions[before.decisions if before else 0:]:
            made.append(("run.decision", decision))
        # State changes last: the steps and decisions seen in the same look came before the move.
        for i in range(told, len(history)):
            made.append(("run.state", {"state": history[i].state.value, "from": history[i - 1].state.value,
                                       "note": history[i].note}))
        if self.baseline:
            made = []
        for kind, data in made:
            event = self.events.append(kind, ref.run_id, data)
            if self.on_event is not None:
                self.on_event(event)
        self.seen[ref.run_id] = _Seen(ref.state.value, manifest_ns, approvals_ns, steps, jobs, len(decisions),
                                      max(1, len(history)), offered)
        return len(made)

    def _decisions(self, ref: RunRef) -> list[dict[str, Any]]:
        try:
            approvals = Approvals.model_validate_json((ref.path / APPROVALS_FILE).read_bytes())
        except (OSError, ValueError):
            return []
        return [{"segment": d.segment, "candidate": d.candidate, "action": d.verdict, "by": d.by,
                 "channel": d.channel} for d in approvals.decisions]


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns  # noqa: PTH116, PTH118 - hot path: pathlib costs 5x here
    except OSError:
        return 0
