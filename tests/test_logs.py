"""Structured logs: JSON lines, UTF-8 everywhere, cp1252 consoles, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from daemon.logs import configure_logging, console_wants_json, redact, scrub

SONG = "शिव तांडव 🔱.mp3"


@pytest.fixture(autouse=True)
def reset_logging() -> None:
    """Each test configures logging itself; undo it afterwards."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    structlog.reset_defaults()


def test_json_lines_file_is_utf8_with_run_context(tmp_path: Path) -> None:
    """Events land as UTF-8 JSON lines carrying run_id, stage and segment from the context."""
    log_file = tmp_path / "logs" / "tandava.log"
    configure_logging(log_file=log_file, console=None)
    with structlog.contextvars.bound_contextvars(run_id="r1", stage="analyze", segment=3):
        structlog.get_logger("t").info("song.seen", file=SONG)
    line = log_file.read_text(encoding="utf-8").strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "song.seen"
    assert event["file"] == SONG
    assert (event["run_id"], event["stage"], event["segment"]) == ("r1", "analyze", 3)
    assert event["level"] == "info"
    assert "timestamp" in event
    assert SONG in line  # not \u-escaped: a person can grep for it


def test_cp1252_console_never_crashes(tmp_path: Path) -> None:
    """A song name a cp1252 console cannot encode is escaped, not a crash."""
    raw = io.BytesIO()
    console = io.TextIOWrapper(raw, encoding="cp1252", errors="strict", write_through=True)
    configure_logging(log_file=tmp_path / "t.log", console=console, console_mode="json")
    structlog.get_logger("t").info("song.seen", file=SONG)
    logging.getLogger("watchdog.observers").warning("foreign %s", SONG)  # stdlib path too
    text = raw.getvalue().decode("cp1252")
    assert "song.seen" in text
    assert "\\u0936" in text or "\\U0001f531" in text
    assert SONG in (tmp_path / "t.log").read_text(encoding="utf-8")


def test_pretty_console_also_survives_cp1252() -> None:
    """The human console renderer escapes unencodable characters too."""
    raw = io.BytesIO()
    console = io.TextIOWrapper(raw, encoding="cp1252", errors="strict", write_through=True)
    configure_logging(console=console, console_mode="pretty")
    structlog.get_logger("t").info("song.seen", file=SONG)
    assert b"song.seen" in raw.getvalue()


def test_secret_keys_are_masked(tmp_path: Path) -> None:
    """Values under secret-looking keys never reach the file."""
    log_file = tmp_path / "t.log"
    configure_logging(log_file=log_file, console=None)
    structlog.get_logger("t").info("cfg", bot_token="123456:SECRETSECRETSECRETSECRET", api_key="AIzaXYZ")
    text = log_file.read_text(encoding="utf-8")
    assert "SECRET" not in text
    assert "AIzaXYZ" not in text
    assert '"bot_token": "***"' in text


def test_tokens_inside_urls_are_scrubbed() -> None:
    """A Telegram bot URL or a key= query parameter loses its token."""
    url = "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe"
    assert "AAHdq" not in scrub(url)
    assert "key=***" in scrub("https://x/v1?key=AIzaSyA-very-secret&alt=json")
    event = redact(None, "info", {"event": f"GET {url}"})
    assert "AAHdq" not in event["event"]


def test_http_libraries_are_held_at_warning(tmp_path: Path) -> None:
    """httpx (which logs Telegram URLs with the token) does not log at INFO."""
    log_file = tmp_path / "t.log"
    configure_logging(log_file=log_file, console=None, level="DEBUG")
    logging.getLogger("httpx").info("HTTP Request: POST https://api.telegram.org/bot1:x/getUpdates")
    assert "getUpdates" not in log_file.read_text(encoding="utf-8")


def test_console_format_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON for pipes and journald, pretty for a terminal."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert console_wants_json(io.StringIO(), "auto")
    assert not console_wants_json(Tty(), "auto")
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert console_wants_json(Tty(), "auto")
    assert not console_wants_json(Tty(), "pretty")


def test_bot_tokens_are_scrubbed_from_tracebacks_in_the_log_file(tmp_path: Path) -> None:
    """A Telegram token inside an exception's text never reaches the JSON log, bare or in a URL."""
    token = "123456789:AAH" + "x" * 32
    configure_logging(log_file=tmp_path / "tandava.log", console=None)
    try:
        raise ValueError(f"Invalid token {token} at https://api.telegram.org/bot{token}/getMe")
    except ValueError:
        structlog.get_logger("t").exception("telegram.failed")
    logging.shutdown()
    text = (tmp_path / "tandava.log").read_text(encoding="utf-8")
    assert "telegram.failed" in text and token not in text
