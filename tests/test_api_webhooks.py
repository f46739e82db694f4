"""Webhooks: a receiver that is down for the first three attempts, and a daemon restart, lose no event."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from api_helpers import running_daemon, upload
from pydantic import SecretStr

from daemon.approval import decisions
from daemon.channels.web.api.events import API_DIR, EVENTS_FILE
from daemon.channels.web.api.webhooks import SIGNATURE_HEADER, verify
from daemon.config import Settings
from daemon.music.synth import write_song
from daemon.runs.store import RunStore

SECRET = "whsec-for-tests-0123456789"


class Receiver:
    """A local webhook receiver that answers 503 to its first ``down_for`` requests, then 204."""

    def __init__(self, down_for: int) -> None:
        self.down_for = down_for
        self.attempts = 0
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.attempts += 1
                    down = receiver.attempts <= receiver.down_for
                    if not down:
                        receiver.got.append(({k: v for k, v in self.headers.items()}, body))
                self.send_response(503 if down else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=not-for-logs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver down for the first three attempts."""
    with Receiver(down_for=3) as running:
        yield running


def _state(base: str, run_id: str) -> str:
    return str(requests.get(f"{base}/runs/{run_id}", timeout=10).json()["state"])


def _wait(predicate: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_every_state_change_arrives_signed_in_order_across_a_restart(settings: Settings, tmp_path: Path,
                                                                     receiver: Receiver) -> None:
    """Every run.created/run.state event reaches the receiver, signed, in order, despite 3 failures and a restart."""
    settings.api.webhooks = [receiver.url]
    settings.api.webhook_secret = SecretStr(SECRET)
    settings.api.webhook_backoff_initial_seconds = 0.05
    settings.api.webhook_backoff_max_seconds = 0.2
    settings.api.watch_seconds = 0.1
    settings.approval.mode = "manual"
    song = tmp_path / "hook.wav"
    write_song(song, 8.0, 120.0)
    options = {"candidates": 1, "fps": 16, "width": 128, "height": 80, "transition": "none"}
    with running_daemon(settings) as base:
        run_id = upload(base, song, options=options).json()["id"]
        _wait(lambda: _state(base, run_id) == "pending_approval")
    # The daemon is down: a person approves from the CLI meanwhile.
    decisions.approve_all(RunStore(settings.paths.state_root), run_id, by="cli", channel="cli")
    with running_daemon(settings) as base:
        _wait(lambda: _state(base, run_id) == "rendered")
        log_file = settings.paths.state_root / API_DIR / EVENTS_FILE

        def told() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log_file.read_text("utf-8").splitlines()]

        _wait(lambda: any(e["data"].get("state") == "rendered" for e in told() if e["type"] == "run.state"))
        expected = [e["id"] for e in told() if e["type"] in ("run.created", "run.state")]

        def arrived() -> list[int]:
            with receiver.lock:
                return list(dict.fromkeys(json.loads(body)["id"] for _, body in receiver.got))

        _wait(lambda: arrived() == expected, timeout=30)
    assert receiver.attempts >= len(expected) + 3
    states = []
    for headers, body in receiver.got:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert headers["X-Tandava-Event-Id"] == str(json.loads(body)["id"])
        event = json.loads(body)
        states.append(event["data"]["state"])
    assert list(dict.fromkeys(states)) == ["incoming", "analyzed", "imaged", "pending_approval", "approved",
                                           "rendered"]
    assert not verify(SECRET, receiver.got[0][1] + b" ", receiver.got[0][0][SIGNATURE_HEADER])
