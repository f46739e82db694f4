"""Structured logging, configured once at the entry point.

Every event goes through one structlog processor chain and leaves as JSON lines
in a rolling UTF-8 file, and on the console either rendered for a person (a
terminal) or as JSON (a pipe, journald). Stdlib loggers of libraries (watchdog,
urllib3) go through the same chain so their lines are JSON too.

Two things here exist because they bit our user:
- a console whose encoding cannot show a character (cp1252 on Windows and a
  song named ``शिव तांडव 🔱.mp3``) must never crash logging: the console
  handler escapes what the stream cannot encode; the file is always UTF-8;
- secrets never reach a log: values under secret-looking keys are masked, and
  tokens inside strings (a Telegram bot URL, ``key=`` query parameters) are
  scrubbed; chatty HTTP libraries that log full URLs are held at WARNING.

Under a live view on a terminal (``daemon.host.live``) the console lines go
through a ``console_sink`` instead of the stream, so they print above the
view's area, and usually only from ``console_level`` WARNING up: the file
still gets every event.

Logs are kept for months without filling the disk: ``RollingFileHandler``
rolls ``tandava.log`` to ``tandava.log.1`` (``.1`` to ``.2``…, the oldest
beyond ``backups`` deleted) when the next line would pass ``max_bytes``, and at
the first local midnight once the file is ``max_age_days`` calendar days old.
Only one process may roll a file: rolling renames it, and a second writer
would keep writing into the renamed file (POSIX) or make the rename fail
(Windows). So each process writes its own file (``log_file_for``: the daemon
``tandava.log``, CLI commands ``tandava-cli.log``), and a handler whose file
is owned by another live process (a second ``tandava run`` refused by the
store lock) only appends to it, never rolls it.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import psutil
import structlog

SECRET_KEY_PARTS = ("token", "api_key", "apikey", "password", "secret", "authorization")
MASK = "***"
_SECRET_PATTERNS = (
    # Telegram bot API URLs carry the token in the path: /bot123456:ABC-def/
    re.compile(r"(bot)\d{5,}:[A-Za-z0-9_-]{20,}"),
    # ... and bare, as python-telegram-bot puts it in InvalidToken and a Bot's repr.
    re.compile(r"\b\d{6,}:[A-Za-z0-9_-]{30,}"),
    # Google API keys in query strings or headers.
    re.compile(r"((?:key|api_key|token)=)[^&\s\"']+"),
    re.compile(r"AIza[0-9A-Za-z_-]{30,}"),
)
# Libraries that log full request URLs at INFO/DEBUG (httpx logs Telegram's
# URL with the bot token in it).
NOISY_LOGGERS = ("httpx", "httpcore", "urllib3", "telegram", "google_genai", "watchdog")
# A week per file: with 10 backups a quiet daemon keeps ~10 weeks of history,
# a busy one at least 10 x max_bytes of the most recent lines.
DEFAULT_MAX_AGE_DAYS = 7
# The file of each kind of process; two processes never roll one file.
LOG_FILES = {"daemon": "tandava.log", "cli": "tandava-cli.log"}
OWNER_SUFFIX = ".owner"


def log_file_for(log_dir: Path, role: Literal["daemon", "cli"]) -> Path:
    """The log file of a process of this ``role``: one file per kind of process."""
    return log_dir / LOG_FILES[role]


def local_now() -> datetime:
    """The current local time, timezone-aware (the log roll's default clock)."""
    return datetime.now().astimezone()


class RollingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotating handler that also rolls at local midnight once its file is ``max_age_days`` old.

    Backups are numbered as ``RotatingFileHandler`` numbers them (``.1`` newest),
    so retention is one rule (``backups`` files) whatever caused the roll. The
    first process to open a file owns it (``<file>.owner`` holds its pid); any
    other process appends without rolling, so a rename never races a writer.
    """

    def __init__(
        self,
        filename: Path,
        *,
        max_bytes: int,
        backups: int,
        max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
        clock: Callable[[], datetime] = local_now,
    ) -> None:
        self.clock = clock
        self.max_age_days = max_age_days
        self._owner_file = filename.with_name(filename.name + OWNER_SUFFIX)
        self.owns_file = _claim(self._owner_file)
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.opened_at = self._file_start()

    def _file_start(self) -> datetime:
        """When the current file began: now for a new file, its last write for one carried over."""
        now = self.clock()
        try:
            stat = Path(self.baseFilename).stat()
        except OSError:
            return now
        if stat.st_size == 0:
            return now
        return min(now, datetime.fromtimestamp(stat.st_mtime, tz=now.tzinfo))

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 (stdlib name)
        if not self.owns_file:
            return False
        if super().shouldRollover(record):
            return True
        return self._too_old()

    def _too_old(self) -> bool:
        if not self.max_age_days or self.backupCount <= 0:
            return False
        days = (self.clock().date() - self.opened_at.date()).days
        if days < self.max_age_days:
            return False
        try:
            return Path(self.baseFilename).stat().st_size > 0  # an empty file is not rolled
        except OSError:
            return False

    def doRollover(self) -> None:  # noqa: N802 (stdlib name)
        super().doRollover()
        self.opened_at = self.clock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.owns_file:
                self.owns_file = False
                _release(self._owner_file)


def roll_file(path: Path, backups: int, *, max_bytes: int = 0) -> bool:
    """Roll ``path`` to ``path.1`` (``.1`` to ``.2``…, dropping the oldest beyond ``backups``) when nobody writes it.

    For files another program writes (ComfyUI's ``comfyui.log``): call it just
    before starting that program. Only rolls a file of at least ``max_bytes``;
    returns whether it rolled. A file still held open (Windows refuses the
    rename) is left as it is.
    """
    try:
        if backups <= 0 or path.stat().st_size < max(1, max_bytes):
            return False
        for n in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
    except OSError:
        return False
    return True


def _claim(owner_file: Path) -> bool:
    """Own ``owner_file``'s log unless another live process does; a dead owner's claim is taken over."""
    me = os.getpid()
    for _ in range(2):
        try:
            fd = os.open(owner_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(owner_file.read_text(encoding="ascii").strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid == me:
                return True
            if pid and psutil.pid_exists(pid):
                return False
            try:
                owner_file.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                return False
            continue
        except OSError:
            return True  # a folder where we cannot make the marker: roll as before
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(str(me))
        return True
    return False


def _release(owner_file: Path) -> None:
    try:
        if owner_file.read_text(encoding="ascii").strip() == str(os.getpid()):
            owner_file.unlink()
    except (OSError, ValueError):
        pass


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys and scrub tokens from strings."""
    for key, value in list(event_dict.items()):
        if any(part in key.lower() for part in SECRET_KEY_PARTS) and value:
            event_dict[key] = MASK
        elif isinstance(value, str):
            event_dict[key] = scrub(value)
    return event_dict


def scrub(text: str) -> str:
    """Remove tokens from free text (URLs, exception messages)."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


class SafeStreamHandler(logging.StreamHandler):
    """A stream handler that escapes what the stream's encoding cannot show.

    Windows consoles and redirected streams are often cp1252; writing a
    Devanagari or emoji character to them raises UnicodeEncodeError inside
    logging, which is the crash our user hit.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            stream = self.stream
            encoding = getattr(stream, "encoding", None) or "utf-8"
            try:
                msg.encode(encoding)
            except UnicodeEncodeError:
                msg = msg.encode(encoding, "backslashreplace").decode(encoding)
            except LookupError:
                pass
            stream.write(msg + self.terminator)
            self.flush()
        except Exception:
            self.handleError(record)


class SinkHandler(logging.Handler):
    """A handler that hands each rendered line to a callable (a live view prints it above its area)."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(self.format(record))
        except Exception:
            self.handleError(record)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]


def console_wants_json(stream: TextIO | None, mode: Literal["auto", "json", "pretty"]) -> bool:
    """JSON unless a person is looking at a terminal (journald sets JOURNAL_STREAM)."""
    if mode != "auto":
        return mode == "json"
    if os.environ.get("JOURNAL_STREAM"):
        return True
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def configure_logging(
    *,
    log_file: Path | None = None,
    console: TextIO | None = None,
    console_mode: Literal["auto", "json", "pretty"] = "auto",
    level: str = "INFO",
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 10,
    max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
    clock: Callable[[], datetime] = local_now,
    console_level: str | None = None,
    console_sink: Callable[[str], None] | None = None,
) -> None:
    """Set up structlog and the stdlib root logger. Call once, at the entry point.

    ``console`` may be None (a Windows service has no stdout); ``log_file`` is
    one file per process (``log_file_for``), rolled by size and by age.
    ``console_sink`` takes the readable console lines instead of ``console``,
    from ``console_level`` up (default: ``level``).
    """
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    json_renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = RollingFileHandler(
            log_file, max_bytes=max_bytes, backups=backups, max_age_days=max_age_days, clock=clock
        )
        file_handler.setFormatter(_formatter(json_renderer, shared))
        handlers.append(file_handler)
    if console is not None or console_sink is not None:
        console_handler: logging.Handler = (
            SinkHandler(console_sink) if console_sink is not None else SafeStreamHandler(console)
        )
        renderer: Any = (
            json_renderer
            if console_sink is None and console_wants_json(console, console_mode)
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        console_handler.setFormatter(_formatter(renderer, shared))
        if console_level is not None:
            console_handler.setLevel(console_level)
        handlers.append(console_handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    quiet(NOISY_LOGGERS)


def _formatter(renderer: Any, shared: list[Any]) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.dict_tracebacks
            if not isinstance(renderer, structlog.dev.ConsoleRenderer)
            else structlog.processors.format_exc_info,
            # Tracebacks are rendered only now: scrub their text too.
            _scrub_deep,
            renderer,
        ],
    )


def _scrub_deep(_logger: Any, _method: str, event_dict: Any) -> Any:
    """Scrub tokens from every string, however deep (a dict traceback holds exception text)."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(walk(v) for v in value)
        return value

    return walk(event_dict)


def quiet(names: Iterable[str], level: int = logging.WARNING) -> None:
    """Hold chatty libraries at ``level`` so full URLs with tokens never reach a log."""
    for name in names:
        logging.getLogger(name).setLevel(level)


def default_console() -> TextIO | None:
    """stderr, or None where there is none (pythonservice.exe sets it to None).

    When stderr is file descriptor 2, the stream writes to a duplicate of it:
    decoding points fd 2 at a temp file for a moment to catch native decoders'
    noise (``music.native_stderr``), and our own log lines must not be caught
    with it.
    """
    stream = sys.stderr
    if stream is None:
        return None
    try:
        is_fd2 = stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        is_fd2 = False  # not backed by fd 2 (a test's capture): nothing to protect
    return _stderr_duplicate(stream.encoding or "utf-8") if is_fd2 else stream


@functools.cache
def _stderr_duplicate(encoding: str) -> TextIO:
    """One duplicate of fd 2 for the process's life (so it is never closed under a handler)."""
    return os.fdopen(os.dup(2), "w", encoding=encoding, errors="backslashreplace", buffering=1)
