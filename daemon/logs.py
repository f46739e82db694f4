"""Structured logging, configured once at the entry point.

Every event goes through one structlog processor chain and leaves as JSON lines
in a rotating UTF-8 file, and on the console either rendered for a person (a
terminal) or as JSON (a pipe, journald). Stdlib loggers of libraries (watchdog,
urllib3) go through the same chain so their lines are JSON too.

Two things here exist because they bit our user:
- a console whose encoding cannot show a character (cp1252 on Windows and a
  song named ``शिव तांडव 🔱.mp3``) must never crash logging: the console
  handler escapes what the stream cannot encode; the file is always UTF-8;
- secrets never reach a log: values under secret-looking keys are masked, and
  tokens inside strings (a Telegram bot URL, ``key=`` query parameters) are
  scrubbed; chatty HTTP libraries that log full URLs are held at WARNING.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, Literal, TextIO

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
) -> None:
    """Set up structlog and the stdlib root logger. Call once, at the entry point.

    ``console`` may be None (a Windows service has no stdout); ``log_file`` is
    one file per process, rotated by size.
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
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        file_handler.setFormatter(_formatter(json_renderer, shared))
        handlers.append(file_handler)
    if console is not None:
        console_handler = SafeStreamHandler(console)
        renderer: Any = (
            json_renderer
            if console_wants_json(console, console_mode)
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        console_handler.setFormatter(_formatter(renderer, shared))
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
    """stderr, or None where there is none (pythonservice.exe sets it to None)."""
    return sys.stderr if sys.stderr is not None else None
