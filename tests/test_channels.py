"""The three approval channels agree: a decision made in Telegram, the web panel or the CLI shows in the other two."""

from __future__ import annotations

from pathlib import Path

import requests
from faketelegram import FakeTelegram
from test_approval import new_pending_run
from test_telegram import USER, button, edited, messages, running
from test_web import post

from daemon.channels.web.server import WebPanel
from daemon.cli import main
from daemon.config import Settings
from daemon.host.report import pending_lines
from daemon.runs.store import RunStore


def panel_shows_approved(panel: WebPanel, run_id: str, segment: int, candidate: int) -> bool:
    page = requests.get(f"{panel.url}runs/{run_id}?view=all", headers={"X-Tandava-Fetch": "1"},
                        timeout=10).text
    return f'<figure class="cand c-approved" id="c-{segment}-{candidate}"' in page


def cli_pending(settings: Settings) -> str:
    return "\n".join(pending_lines(settings.paths.state_root))


def test_a_decision_in_any_channel_shows_in_the_other_two(store: RunStore, tmp_path: Path,
                                                          telegram_settings: Settings,
                                                          telegram_api: FakeTelegram) -> None:
    """Telegram tap → panel and CLI; panel click → Telegram and CLI; CLI command → Telegram and panel."""
    tg, fake = telegram_settings, telegram_api
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
