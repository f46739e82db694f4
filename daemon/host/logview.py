"""``tandava logs``: the daemon's JSON-lines log, read back for a person.

How this works: ``log_files`` lists the rolled files oldest first
(``tandava.log.10`` … ``tandava.log.1``, ``tandava.log``), ``read_events``
parses them line by line (a line that is not JSON is kept as its text),
``render`` turns one event into one readable line (a pure function), and
``follow`` polls the current file for new lines.

``follow`` never keeps the file open between polls: on Windows an open handle
would make the daemon's roll (a rename) fail. It remembers the file's identity
and how far it read; when the file was rolled (another identity, or shorter
than what was read), it first reads what is left of the old file, now
``tandava.log.1``, then starts the new one from its beginning.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, TextIO

# Keys render() shows in its own columns, or that say nothing to a person.
_COLUMNS = frozenset({"timestamp", "level", "event", "run_id", "stage", "logger"})
# Shown on their own lines under an error, where they are hard to miss.
_PROMINENT = ("reason", "hint", "error")
POLL_SECONDS = 0.5


def log_files(log_file: Path) -> list[Path]:
    """``log_file`` and its rolled backups, oldest first; only those that exist."""
    backups: list[tuple[int, Path]] = []
    prefix = log_file.name + "."
    try:
        entries = list(log_file.parent.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        suffix = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        if suffix.isdigit():
            backups.append((int(suffix), entry))
    files = [path for _, path in sorted(backups, reverse=True)]
    if log_file.exists():
        files.append(log_file)
    return files


def parse_line(line: str) -> dict[str, Any] | None:
    """One log line as an event; a line that is not a JSON object is kept as its text."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": line}
    return event if isinstance(event, dict) else {"event": line}


def read_events(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every event of ``paths`` in order."""
    for path in paths:
        try:
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    event = parse_line(line)
                    if event is not None:
                        yield event
        except FileNotFoundError:
            continue  # rolled away while we read: its lines are in the next backup name


def matches(event: dict[str, Any], run: str | None) -> bool:
    """Whether ``event`` belongs to the run ``run`` (a run id or its start); every event if None."""
    return run is None or str(event.get("run_id", "")).startswith(run)


def short_run(run_id: str) -> str:
    """``20261121-101500_shiva-tandav_1a2b3c4d`` → ``shiva-tandav_1a2b``: the readable part."""
    parts = run_id.split("_")
    if len(parts) >= 3:
        slug = "_".join(parts[1:-1])
        return f"{slug[:20]}_{parts[-1][:4]}"
    return run_id[:28]


def local_time(timestamp: Any, tz: tzinfo | None = None) -> str:
    """An ISO UTC timestamp as local ``YYYY-MM-DD HH:MM:SS``; anything else as it is."""
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return str(timestamp or "?")
    if moment.tzinfo is not None:
        moment = moment.astimezone(tz)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if (" " in value or not value) else value
    return json.dumps(value, ensure_ascii=False, default=str)


def render(event: dict[str, Any], *, tz: tzinfo | None = None) -> str:
    """One event as one line (local time, level, event, run, stage, fields); an error's reason and hint below it."""
    level = str(event.get("level", "")).upper() or "-"
    head = [local_time(event.get("timestamp"), tz), f"{level:<7}", str(event.get("event", ""))]
    if event.get("run_id"):
        head.append(f"[{short_run(str(event['run_id']))}]")
    if event.get("stage"):
        head.append(f"({event['stage']})")
    is_error = level in {"ERROR", "CRITICAL"}
    shown_below = set(_PROMINENT) if is_error else set()
    fields = [
        f"{key}={_value(value)}"
        for key, value in event.items()
        if key not in _COLUMNS and key not in shown_below and key != "exception"
    ]
    line = " ".join(head + fields)
    below = [f"    {key}: {event[key]}" for key in _PROMINENT if is_error and event.get(key)]
    exception = event.get("exception")
    if exception:
        below.append(f"    exception: {_exception_text(exception)}")
    return "\n".join([line, *below])


def _exception_text(exception: Any) -> str:
    """The last exception of a structlog dict traceback (``exc_type: exc_value``), or its text."""
    if isinstance(exception, list) and exception and isinstance(exception[-1], dict):
        last = exception[-1]
        return f"{last.get('exc_type', '?')}: {last.get('exc_value', '')}"
    return str(exception).strip().splitlines()[-1] if str(exception).strip() else ""


def last_events(log_file: Path, *, run: str | None = None, lines: int = 50) -> list[dict[str, Any]]:
    """The last ``lines`` events (of ``run``), across the current file and its backups."""
    kept: deque[dict[str, Any]] = deque(maxlen=max(0, lines))
    for event in read_events(log_files(log_file)):
        if matches(event, run):
            kept.append(event)
    return list(kept)


@dataclass
class _Position:
    identity: tuple[int, int] | None  # (st_dev, st_ino) of the file we were reading
    offset: int


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return (stat.st_dev, stat.st_ino)


def _read_from(path: Path, offset: int) -> tuple[list[str], int]:
    """Whole lines of ``path`` from ``offset`` (a partial last line waits), and the new offset."""
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace")
    return text.splitlines(), offset + end


def follow(
    log_file: Path,
    *,
    stop: threading.Event | None = None,
    poll_seconds: float = POLL_SECONDS,
    from_start: bool = False,
    sleep: Callable[[float], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """New events of ``log_file`` as they are written, across rolls, until ``stop`` is set."""
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    position = _Position(None, 0)
    try:
        stat = log_file.stat()
        position = _Position(_identity(stat), 0 if from_start else stat.st_size)
    except OSError:
        pass
    while not stop.is_set():
        for line in _poll(log_file, position):
            event = parse_line(line)
            if event is not None:
                yield event
        wait(poll_seconds)


def _poll(log_file: Path, position: _Position) -> list[str]:
    try:
        stat = log_file.stat()
    except OSError:
        return []  # between the roll's rename and the new file's first line
    lines: list[str] = []
    rolled = position.identity is not None and (
        _identity(stat) != position.identity or stat.st_size < position.offset
    )
    if rolled:
        lines += _rest_of_rolled(log_file, position)
        position.offset = 0
    position.identity = _identity(stat)
    try:
        new, position.offset = _read_from(log_file, position.offset)
    except OSError:
        return lines
    return lines + new


def _rest_of_rolled(log_file: Path, position: _Position) -> list[str]:
    """What was written to the old file after our last read, now in ``<file>.1``."""
    first_backup = log_file.with_name(log_file.name + ".1")
    try:
        stat = first_backup.stat()
        same = _identity(stat) == position.identity or os.name == "nt"
        if not same or stat.st_size < position.offset:
            return []
        lines, _ = _read_from(first_backup, position.offset)
    except OSError:
        return []
    return lines


def show_logs(
    log_file: Path,
    out: TextIO,
    *,
    run: str | None = None,
    lines: int = 50,
    follow_: bool = False,
    stop: threading.Event | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> int:
    """``tandava logs``: print the last ``lines`` events (of ``run``), then, with ``follow_``, new ones."""
    if not log_files(log_file) and not follow_:
        print(f"no log yet at {log_file}: has the daemon run?", file=out)
        return 1
    for event in last_events(log_file, run=run, lines=lines):
        print(render(event), file=out, flush=True)
    if follow_:
        for event in follow(log_file, stop=stop, poll_seconds=poll_seconds):
            if matches(event, run):
                print(render(event), file=out, flush=True)
    return 0
