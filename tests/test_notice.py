"""Channel-neutral notices: actions kept apart from words, rendered as code, buttons or plain words."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from hypothesis import given
from hypothesis import strategies as st
from test_approval import gate_once, new_pending_run
from test_web import new_failed_run, panel  # noqa: F401  (the panel fixture)

from daemon.approval.decisions import run_view
from daemon.approval.notice import Action, Code, actions, cli, parse, parse_command, plain, say
from daemon.approval.store import ApprovalStore
from daemon.channels.telegram.state import TelegramRecord
from daemon.channels.telegram.views import song_text
from daemon.channels.web.pages import notice_html
from daemon.channels.web.server import WebPanel
from daemon.config import Settings
from daemon.host.report import status_lines
from daemon.runs.store import RunStore

RUN = "20261204-101500_shiva-tandava_3fa2b9c1"
BACKTICK = "`"

run_ids = st.from_regex(r"[0-9]{8}-[0-9]{6}_[a-z0-9-]{1,20}_[0-9a-f]{8}", fullmatch=True)
numbers = st.integers(min_value=0, max_value=999)


@given(run_ids, numbers, numbers)
def test_every_action_parses_back_from_its_command(run_id: str, segment: int, candidate: int) -> None:
    """An action written as its CLI command is read back as the same action."""
    for act in (Action("pending", run_id), Action("pending"), Action("approve-all", run_id),
                Action("approve", run_id, segment, candidate), Action("regenerate", run_id, segment),
                Action("retry", run_id)):
        assert parse_command(act.command) == act
        assert parse(say("before ", act, " after")) == ["before ", act, " after"]


def test_other_commands_stay_code() -> None:
    """Commands no channel offers as an action, and unfilled placeholders, are code, not actions."""
    text = "Run `tandava doctor`, then `ollama pull gemma3:12b`, then `tandava retry <run>`."
    assert actions(text) == []
    assert [p for p in parse(text) if isinstance(p, Code)] == [
        Code("tandava doctor"), Code("ollama pull gemma3:12b"), Code("tandava retry <run>")]


def test_the_cli_shows_commands_in_backticks() -> None:
    """The CLI's rendering is the stored form: each action's command, as code."""
    text = say("waiting: ", Action("pending", RUN), ", then ", Action("approve-all", RUN))
    assert cli(text) == f"waiting: `tandava pending {RUN}`, then `tandava approve {RUN} --all`"


def test_telegram_gets_plain_words() -> None:
    """Telegram's rendering has no backticks: actions are words, retry stays the command to type."""
    text = say("stuck: ", Action("approve", RUN, 2, 5), " anyway, or ", Action("regenerate", RUN, 2),
               "; or ", Action("retry", RUN), "; see ", Code("tandava doctor"))
    words = plain(text)
    assert BACKTICK not in words
    assert words == (f"stuck: approve 2:5 anyway, or ask for new candidates for segment 2; "
                     f"or tandava retry {RUN}; see tandava doctor")


def test_the_panel_renders_actions_as_buttons_and_links() -> None:
    """In the panel an action is a form or a link inside the sentence; other code is <code>; no backticks."""
    text = say("<b>waiting</b>: ", Action("pending", RUN), ", then ", Action("approve-all", RUN),
               " or ", Action("regenerate", RUN, 2), ", or ", Action("approve", RUN, 2, 5), "; ",
               Code("tandava doctor"))
    page = notice_html(text, "tok")
    assert BACKTICK not in page and "&lt;b&gt;waiting&lt;/b&gt;" in page
    assert f'<a class="inline" href="/runs/{RUN}">review the candidates</a>' in page
    # An action that names no run is about the run the notice belongs to.
    assert f'href="/runs/{RUN}"' in notice_html(say("see ", Action("pending")), "tok", RUN)
    assert f'action="/runs/{RUN}/approve-all"' in page and ">approve them all</button>" in page
    assert re.search(r'name="verdict" value="regenerate".*ask for new candidates for segment 2', page)
    assert 'name="candidate" value="5"' in page and "<code>tandava doctor</code>" in page


def test_the_gate_says_what_a_person_can_do(store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """A waiting run's reason offers review and approve-all; once all is rejected, approve-anyway and regenerate."""
    settings.approval.mode, settings.images.max_rounds = "manual", 1
    ref, backend = new_pending_run(store, tmp_path, settings, segments=2)
    gate_once(store, settings, backend)
    waiting = store.load(store.find(ref.run_id)).stages["approval"].detail["waiting"]
    assert actions(waiting) == [Action("pending"), Action("approve-all", ref.run_id)]
    for candidate in (0, 1):
        ApprovalStore(store).decide(ref.run_id, 1, candidate, "reject", by="t", channel="cli")
    gate_once(store, settings, backend)
    waiting = store.load(store.find(ref.run_id)).stages["approval"].detail["waiting"]
    assert actions(waiting) == [Action("approve", ref.run_id, 1, 1), Action("regenerate", ref.run_id, 1)]
    status = "\n".join(status_lines(store.root))
    assert f"`tandava regenerate {ref.run_id} 1`" in status  # the CLI shows the command


def test_the_panel_page_has_no_backticks(panel: WebPanel, store: RunStore, tmp_path: Path,  # noqa: F811
                                         settings: Settings) -> None:
    """The index shows a waiting run's reason with its actions as buttons; no page shows the CLI's backticks."""
    settings.approval.mode = "manual"
    ref, backend = new_pending_run(store, tmp_path, settings, segments=2)
    gate_once(store, settings, backend)
    index = requests.get(panel.url, timeout=10).text
    assert "waiting for a person to approve 2 of 2 segment(s)" in index
    assert f'<form class="act inline" method="post" action="/runs/{ref.run_id}/approve-all">' in index
    for url in (panel.url, f"{panel.url}runs/{ref.run_id}"):
        page = requests.get(url, timeout=10).text
        assert BACKTICK not in page.split("<main", 1)[1].split("</main>", 1)[0], url


def test_a_failed_run_hint_in_telegram_has_no_backticks(store: RunStore, tmp_path: Path) -> None:
    """Telegram's message for a failed run words its hint plainly."""
    ref = new_failed_run(store, tmp_path, hint="Free some disk space, then run `tandava retry <run>`.")
    text = song_text(run_view(store, ref), TelegramRecord(run_id=ref.run_id, chat_id=1))
    assert BACKTICK not in text and f"then run tandava retry {ref.run_id}." in text
