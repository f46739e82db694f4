"""The panel's POST bodies: refused on Content-Length, read with a cap, never held whole (issue 11 item 9)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_web import new_failed_run

from daemon.channels.web.server import WebPanel
from daemon.config import Settings
from daemon.runs.store import RunStore

BIG = 400 * 1024 * 1024
CHUNK = b"x" * (256 * 1024)


@pytest.fixture
def panel(settings: Settings, store: RunStore) -> Iterator[WebPanel]:
    """A panel on 127.0.0.1, any free port, no token."""
    settings.web.port = 0
    with WebPanel(settings, store, poll_seconds=0.5) as running:
        yield running


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


def _post_big(url: str, path: str, *, chunked: bool) -> bytes:
    """POST 400 MB (no Origin header, like curl) and return what the server answered."""
    with socket.create_connection(_address(url), timeout=30) as sock:
        framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {BIG}".encode()
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n" + framing + b"\r\n\r\n")
        sent = 0
        try:
            while sent < BIG:
                if chunked:
                    sock.sendall(f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n")
                else:
                    sock.sendall(CHUNK)
                sent += len(CHUNK)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed while the body was still coming: expected
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        except OSError:
            pass
        return answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_400_mb_post_is_a_413_and_memory_stays_flat(panel: WebPanel, store: RunStore, tmp_path: Path,
                                                       chunked: bool) -> None:
    """A 400 MB POST without an Origin gets 413 while the daemon's RSS grows by under 20 MB."""
    ref = new_failed_run(store, tmp_path)
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answer = _post_big(panel.url, f"/runs/{ref.run_id}/retry", chunked=chunked)
    finally:
        done.set()
        sampler.join()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert peak[0] - before < 20 * 1024 * 1024
    assert store.find(ref.run_id).state.value == "failed"
