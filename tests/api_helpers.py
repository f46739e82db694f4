"""Helpers shared by the HTTP API tests: a daemon on a free port, uploads, and following SSE."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from daemon.app import run
from daemon.config import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with requests.get(url, timeout=1) as response:
            return response.status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running_daemon(settings: Settings) -> Iterator[str]:
    """The whole daemon (engine, intake, panel and API) in a thread; yields the API's base URL."""
    import time

    if not settings.web.port:
        settings.web.port = free_port()
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.web.port}/api/v1"
    deadline = time.monotonic() + 30
    while not _answers(base + "/health") and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield base
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def upload(base: str, song: Path, *, options: dict[str, Any] | None = None, photos: list[Path] = (),  # type: ignore[assignment]
           name: str | None = None, session: requests.Session | None = None) -> requests.Response:
    """POST a song (and photos and options) the way curl -F does."""
    client = session or requests
    files: list[tuple[str, Any]] = []
    with song.open("rb") as fh:
        files.append(("song", (name or song.name, fh, "audio/wav")))
        handles = [p.open("rb") for p in photos]
        try:
            files.extend(("photos", (p.name, h, "image/png")) for p, h in zip(photos, handles, strict=True))
            data = {"options": json.dumps(options)} if options is not None else None
            return client.post(base + "/runs", files=files, data=data, timeout=60)
        finally:
            for h in handles:
                h.close()


def follow(base: str, run_id: str, until: Callable[[dict[str, Any]], bool], *, after: int = 0,
           timeout: float = 120.0) -> list[dict[str, Any]]:
    """Read the SSE stream (this run's events) until ``until(event)``; returns the events read."""
    import time

    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    headers = {"Last-Event-ID": str(after)} if after else {}
    with requests.get(f"{base}/events", params={"run": run_id}, headers=headers, stream=True,
                      timeout=(5, timeout)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                event = json.loads(line[6:])
                seen.append(event)
                if until(event):
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"the stream ended before the awaited event; saw {[e['type'] for e in seen]}")
