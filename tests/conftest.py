"""Shared fixtures: a state root and settings under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from faketelegram import CHAT_ID, TOKEN, FakeTelegram
from pydantic import SecretStr

from daemon.config import Settings, TelegramConfig, load_settings
from daemon.runs.store import RunStore

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# Debian's Chromium (.ci/run installs it), for the browser tests; they skip where it is missing.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    """An empty run store with its directories created."""
    s = RunStore(tmp_path / "state")
    s.ensure_layout()
    return s


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An empty inbox folder."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from a tandava.toml in tmp_path with fast watch and engine timings."""
    for key in list(__import__("os").environ):
        if key.startswith("TANDAVA_"):
            monkeypatch.delenv(key)
    (tmp_path / "tandava.toml").write_text(
        "[watch]\nstable_seconds = 0.3\nrescan_seconds = 1.0\npoll_seconds = 0.2\n"
        "[engine]\ntick_seconds = 0.05\nbackoff_initial_seconds = 0.01\nbackoff_max_seconds = 0.05\n"
        # A daemon under test serves its panel on a free port, never on a real one's.
        "[web]\nport = 0\n",
        encoding="utf-8",
    )
    return load_settings(tmp_path / "tandava.toml")


# The user the Telegram tests let decide.
TELEGRAM_USER = 42


@pytest.fixture
def telegram_api() -> Iterator[FakeTelegram]:
    """A fake Bot API with a flood limit well above what the tests' pacing sends."""
    with FakeTelegram(rate=50) as server:
        yield server


@pytest.fixture
def telegram_settings(settings: Settings, telegram_api: FakeTelegram) -> Settings:
    """Settings with the bot enabled against the fake, manual approval, two candidates per segment."""
    settings.telegram = TelegramConfig(enabled=True, token=SecretStr(TOKEN), chat_id=CHAT_ID,
                                       allowed_users=[TELEGRAM_USER], base_url=telegram_api.base_url,
                                       reminder_hours=0, messages_per_second=40)
    settings.approval.mode = "manual"
    settings.images.candidates = 2
    return settings


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per browser-test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
