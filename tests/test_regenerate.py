"""Asking for new candidates: a new round is made at once, with new seeds, and offered on every channel."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from faketelegram import FakeTelegram
from test_approval import gate_once, new_pending_run

from daemon.app import run
from daemon.approval import decisions
from daemon.approval.store import DecisionRefused
from daemon.cli import main
from daemon.config import Settings
from daemon.host.report import pending_lines
from daemon.music.synth import write_song
from daemon.runs.states import State
from daemon.runs.store import RunStore


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def daemon(telegram_settings: Settings) -> Iterator[Settings]:
    """The whole daemon (panel on a known port, Telegram on the fake), manual approval, 2 candidates."""
    settings = telegram_settings
    settings.web.port = free_port()
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
    thread.start()
    yield settings
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


def captions(fake: FakeTelegram) -> list[str]:
    return [c for sent in fake.sent("sendMediaGroup") for c in sent.captions]


def test_regenerate_makes_a_new_round_now_offered_everywhere(daemon: Settings, telegram_api: FakeTelegram,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`tandava regenerate RUN 0` makes new candidate files with new seeds, shown by the CLI, panel and Telegram."""
    store = RunStore(daemon.paths.state_root)
    write_song(daemon.paths.inbox / "song.wav", 8.0, 120.0)
    wait_for(lambda: any(store.iter_runs([State.PENDING_APPROVAL])))
    ref = next(store.iter_runs([State.PENDING_APPROVAL]))
    before = decisions.run_view(store, ref).segments[0].candidates
    assert [c.index for c in before] == [0, 1]
    wait_for(lambda: "0:1 · segment 0" in " ".join(captions(telegram_api)))

    assert main(["--config", str(daemon.config_file), "regenerate", ref.run_id, "0"]) == 0
    assert "makes round 2 now" in capsys.readouterr().out

    def new_round() -> bool:
        return len(decisions.run_view(store, store.find(ref.run_id)).segments[0].candidates) == 4

    wait_for(new_round, timeout=30)  # no rejection needed first: the request alone makes it
    seg = decisions.run_view(store, store.find(ref.run_id)).segments[0]
    old, new = seg.candidates[:2], seg.candidates[2:]
    assert [c.status for c in old] == ["rejected", "rejected"] and [c.status for c in new] == ["open", "open"]
    assert {c.seed for c in new}.isdisjoint({c.seed for c in old})
    for cand in new:
        assert cand.image.is_file() and cand.image.read_bytes() not in {c.image.read_bytes() for c in old}
    assert seg.rounds == 2

    listed = "\n".join(pending_lines(daemon.paths.state_root, verbose=True))
    assert all(str(c.image) in listed for c in new)
    page = requests.get(f"http://127.0.0.1:{daemon.web.port}/runs/{ref.run_id}", timeout=10).text
    assert 'id="c-0-2"' in page and 'id="c-0-3"' in page
    wait_for(lambda: "0:3 · segment 0" in " ".join(captions(telegram_api)), timeout=30)
    assert ref.run_id in store.find(ref.run_id).path.name and store.find(ref.run_id).state is State.PENDING_APPROVAL


def test_a_repeated_request_makes_one_round_and_an_approved_segment_is_refused(
        store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """Two requests before the gate looks ask for the same round; asking for an approved segment is refused."""
    settings.approval.mode = "manual"
    settings.images.candidates = 2
    ref, backend = new_pending_run(store, tmp_path, settings)
    first = decisions.decide(store, ref.run_id, "regenerate", 0, None, by="a", channel="cli")
    second = decisions.decide(store, ref.run_id, "regenerate", 0, None, by="b", channel="web")
    assert first.for_round == 2 and second == first
    gate_once(store, settings, backend)
    seg = decisions.run_view(store, store.find(ref.run_id)).segments[0]
    assert [c.index for c in seg.candidates] == [0, 1, 2, 3] and len(backend.made) == 3 * 2 + 2
    decisions.decide(store, ref.run_id, "approve", 1, 0, by="a", channel="cli")
    with pytest.raises(DecisionRefused, match="reject 1:0 first"):
        decisions.decide(store, ref.run_id, "regenerate", 1, None, by="a", channel="cli")
