"""Structured logs: JSON lines, UTF-8 everywhere, cp1252 consoles, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog

from daemon.logs import (
    OWNER_SUFFIX,
    RollingFileHandler,
    configure_logging,
    console_wants_json,
    log_file_for,
    redact,
    roll_file,
    scrub,
)

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


BOT_TOKEN = "123456789:AAH" + "q" * 32
API_KEY = "AIza" + "S" * 35


def test_burst_rolls_by_size_keeps_backups_and_no_secret_anywhere(tmp_path: Path) -> None:
    """A burst across many rolls keeps exactly `backups` old files, each small, none holding a secret."""
    log_file = tmp_path / "tandava.log"
    configure_logging(log_file=log_file, console=None, max_bytes=4096, backups=3)
    log = structlog.get_logger("t")
    for i in range(400):
        log.info("telegram.sent", i=i, url=f"https://api.telegram.org/bot{BOT_TOKEN}/sendMessage",
                 bot_token=BOT_TOKEN, note=f"key={API_KEY}&alt=json", filler="x" * 40)
        logging.getLogger("watchdog.x").warning("foreign %s %s", BOT_TOKEN, API_KEY)
    logging.shutdown()
    files = sorted(tmp_path.glob("tandava.log*"))
    names = {f.name for f in files}
    assert names == {"tandava.log", "tandava.log.1", "tandava.log.2", "tandava.log.3"}
    for f in files:
        assert f.stat().st_size <= 4096 + 1024
        text = f.read_text(encoding="utf-8")
        assert BOT_TOKEN not in text and API_KEY not in text and "AAH" + "q" * 30 not in text
        assert all(json.loads(line) for line in text.splitlines())
    last = json.loads((tmp_path / "tandava.log").read_text(encoding="utf-8").splitlines()[-1])
    assert last["event"] == "foreign *** ***"  # the stdlib path is scrubbed too


class Clock:
    """A local clock tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def emit(handler: logging.Handler, msg: str) -> None:
    handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, msg, None, None))


def test_rolls_at_the_first_midnight_once_old_enough(tmp_path: Path) -> None:
    """With max_age_days=1 the file rolls at local midnight; with 7 only a week later."""
    tz = timezone(timedelta(hours=5, minutes=30))
    clock = Clock(datetime(2026, 11, 21, 23, 59, tzinfo=tz))
    daily = RollingFileHandler(tmp_path / "d.log", max_bytes=10**6, backups=5, max_age_days=1, clock=clock)
    weekly = RollingFileHandler(tmp_path / "w.log", max_bytes=10**6, backups=5, max_age_days=7, clock=clock)
    try:
        for h in (daily, weekly):
            emit(h, "before midnight")
        clock.now += timedelta(minutes=2)  # 00:01 the next day
        for h in (daily, weekly):
            emit(h, "after midnight")
        assert (tmp_path / "d.log.1").read_text(encoding="utf-8") == "before midnight\n"
        assert (tmp_path / "d.log").read_text(encoding="utf-8") == "after midnight\n"
        assert not (tmp_path / "w.log.1").exists()
        clock.now += timedelta(days=5, hours=12)  # the 27th, noon: 6 calendar days
        emit(weekly, "day 7")
        assert not (tmp_path / "w.log.1").exists()
        clock.now += timedelta(hours=12)  # the 28th, just after midnight: 7 days
        emit(weekly, "day 8")
        assert "day 7" in (tmp_path / "w.log.1").read_text(encoding="utf-8")
        assert (tmp_path / "w.log").read_text(encoding="utf-8") == "day 8\n"
    finally:
        daily.close()
        weekly.close()


def test_time_rolls_respect_the_retention_count(tmp_path: Path) -> None:
    """A daily roll for two weeks keeps only `backups` old files."""
    clock = Clock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    handler = RollingFileHandler(tmp_path / "t.log", max_bytes=10**6, backups=3, max_age_days=1, clock=clock)
    try:
        for day in range(14):
            emit(handler, f"day {day}")
            clock.now += timedelta(days=1)
    finally:
        handler.close()
    assert sorted(p.name for p in tmp_path.glob("t.log*")) == ["t.log", "t.log.1", "t.log.2", "t.log.3"]
    assert (tmp_path / "t.log.3").read_text(encoding="utf-8") == "day 10\n"


def test_each_kind_of_process_has_its_own_file(tmp_path: Path) -> None:
    """The daemon writes tandava.log, CLI commands tandava-cli.log."""
    assert log_file_for(tmp_path, "daemon").name == "tandava.log"
    assert log_file_for(tmp_path, "cli").name == "tandava-cli.log"


def test_a_file_owned_by_another_live_process_is_appended_to_never_rolled(tmp_path: Path) -> None:
    """A second process (a refused `tandava run`) appends to the daemon's file but never renames it."""
    log_file = tmp_path / "tandava.log"
    (tmp_path / ("tandava.log" + OWNER_SUFFIX)).write_text(str(os.getppid()), encoding="ascii")
    handler = RollingFileHandler(log_file, max_bytes=100, backups=2, max_age_days=1)
    try:
        assert not handler.owns_file
        for i in range(20):
            emit(handler, f"line {i} " + "x" * 20)
    finally:
        handler.close()
    assert not (tmp_path / "tandava.log.1").exists()
    assert (tmp_path / ("tandava.log" + OWNER_SUFFIX)).read_text(encoding="ascii") == str(os.getppid())


def test_a_dead_owners_claim_is_taken_over_and_released(tmp_path: Path) -> None:
    """An owner file left by a crashed process is taken over, and removed on close."""
    owner = tmp_path / ("tandava.log" + OWNER_SUFFIX)
    owner.write_text("999999999", encoding="ascii")
    handler = RollingFileHandler(tmp_path / "tandava.log", max_bytes=100, backups=2)
    assert handler.owns_file and owner.read_text(encoding="ascii") == str(os.getpid())
    handler.close()
    assert not owner.exists()


def test_roll_file_shifts_backups_for_a_file_another_program_writes(tmp_path: Path) -> None:
    """comfyui.log is rolled before a launch: .1 becomes .2, the oldest beyond `backups` is dropped."""
    log = tmp_path / "comfyui.log"
    for n in range(4):
        log.write_bytes(f"launch {n}\n".encode())
        roll_file(log, 2, max_bytes=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comfyui.log.1", "comfyui.log.2"]
    assert (tmp_path / "comfyui.log.1").read_bytes() == b"launch 3\n"
    log.write_bytes(b"small")
    assert not roll_file(log, 2, max_bytes=1024) and log.exists()
