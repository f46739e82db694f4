"""The three approval channels agree: a decision made in Telegram, the web panel or the CLI shows in the other two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from faketelegram import CHAT_ID, TOKEN, FakeTelegram
from pydantic import SecretStr
from test_approval import new_pending_run
from test_telegram import USER, button, edited, messages, running
from test_web import post

from daemon.cli import main
from daemon.config import Settings, TelegramConfig
from daemon.report import pending_lines
from daemon.store import RunStore
from daemon.web import WebPanel


def panel_shows_approved(panel: WebPanel, run_id: str, segment: int, candidate: int) -> bool:
    page = requests.get(f"{panel.url}runs/{run_id}", headers={"X-Tandava-Fetch": "1"}, timeout=10).text
    return f'<figure class="cand c-approved" id="c-{segment}-{candidate}">' in page


def cli_pending(settings: Settings) -> str:
    return "\n".join(pending_lines(settings.paths.state_root))


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    """A fake Bot API."""
    with FakeTelegram(rate=50) as server:
        yield server


@pytest.fixture
def tg(settings: Settings, fake: FakeTelegram) -> Settings:
    """The bot on the fake, the panel on a free port, manual approval."""
    settings.telegram = TelegramConfig(enabled=True, token=SecretStr(TOKEN), chat_id=CHAT_ID,
                                       allowed_users=[USER], base_url=fake.base_url, reminder_hours=0,
                                       messages_per_second=40)
    settings.approval.mode = "manual"
    settings.images.candidates = 2
    return settings


def test_a_decision_in_any_channel_shows_in_the_other_two(store: RunStore, tmp_path: Path, tg: Settings,
                                                          fake: FakeTelegram) -> None:
    """Telegram tap → panel and CLI; panel click → Telegram and CLI; CLI command → Telegram and panel."""
    ref, _ = new_pending_run(store, tmp_path, tg, segments=3)
    tg.web.port = 0
    with WebPanel(tg, store, poll_seconds=0.5) as panel, running(tg, store):
        fake.wait_for(lambda: len(fake.sent("sendMessage")) >= 4)
        _, controls = messages(fake)

        fake.tap(USER, button(fake, controls[0], "✅1"), controls[0])  # Telegram
        fake.wait_for(lambda: panel_shows_approved(panel, ref.run_id, 0, 1))
        assert "[approved 1]" in cli_pending(tg)

        with requests.Session() as session:  # the web panel
            assert post(session, panel.url, f"/runs/{ref.run_id}/decide", verdict="approve", segment=1,
                        candidate=0).status_code == 303
        fake.wait_for(lambda: edited(fake, controls[1], "✅"))
        assert cli_pending(tg).count("[approved") == 2

        assert main(["--config", str(tg.config_file), "approve", ref.run_id, "2:1"]) == 0  # the CLI
        fake.wait_for(lambda: edited(fake, controls[2], "✅"))
        assert panel_shows_approved(panel, ref.run_id, 2, 1)
