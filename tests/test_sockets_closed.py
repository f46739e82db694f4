"""Teardown is deterministic: once a ComfyUI client, listener or fake server says it stopped, its sockets are closed.

A socket left for the garbage collector is reported ("unclosed <socket …>") in whatever test
runs next, and only on a busy machine; these tests look at the process's real connections.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests
from fakecomfy import FakeComfy

from daemon.backends.comfy.client import ComfyClient, Listener
from daemon.errors import Unavailable

# A socket in any other state has been closed by its owner (the kernel may still be finishing).
OPEN = {psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT, psutil.CONN_LISTEN, psutil.CONN_SYN_SENT}


def client_side(port: int) -> list[str]:
    """This process's sockets connected to ``port`` that it has not closed."""
    return [f"{c.laddr} -> {c.raddr} {c.status}" for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status in OPEN]


def server_side(port: int) -> list[str]:
    """This process's sockets on ``port`` (the fake's listener and accepted connections) not closed."""
    return [f"{c.laddr} <- {c.raddr} {c.status}" for c in psutil.Process().net_connections(kind="tcp")
            if c.laddr and c.laddr.port == port and c.status in OPEN]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_closed_client_opens_no_new_connection(tmp_path: Path) -> None:
    """A request after close() is refused as Unavailable instead of opening a pool nobody closes."""
    with FakeComfy(tmp_path / "comfy") as fake:
        client = ComfyClient(fake.url, client_id="t", timeout=5)
        client.system_stats()
        client.close()
        assert client_side(fake.port) == []
        with pytest.raises(Unavailable, match="Tandava is stopping"):
            client.system_stats()
        assert client_side(fake.port) == []


def test_a_request_in_flight_during_close_closes_its_connection(tmp_path: Path) -> None:
    """A request that was under way when close() ran leaves no connection behind once it ends."""
    with FakeComfy(tmp_path / "comfy") as fake:
        client = ComfyClient(fake.url, client_id="t", timeout=20)
        fake.hang()
        done = threading.Event()
        worker = threading.Thread(target=lambda: (client.queue(), done.set()), daemon=True)
        worker.start()
        wait_for(lambda: len(client_side(fake.port)) == 1)  # the parked request
        client.close()
        fake.unhang()
        worker.join(20)
        assert done.is_set()
        wait_for(lambda: client_side(fake.port) == [])


def test_listener_stop_returns_with_its_socket_closed(tmp_path: Path) -> None:
    """Listener.stop() wakes the reader and returns only after it has closed the websocket."""
    with FakeComfy(tmp_path / "comfy") as fake:
        listener = Listener(fake.url, "t", on_event=lambda _e: None)
        listener.start()
        wait_for(lambda: listener.connected)
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 5  # woken at once, not after a receive timeout
        assert not listener._thread.is_alive()
        assert client_side(fake.port) == []


def test_a_stopped_fake_has_closed_every_connection(tmp_path: Path) -> None:
    """FakeComfy.stop() returns with its listener and every accepted connection closed, idle ones too."""
    fake = FakeComfy(tmp_path / "comfy").start()
    with requests.Session() as session:
        session.get(f"{fake.url}/system_stats", timeout=10)  # an idle keep-alive connection stays open
        assert len(server_side(fake.port)) == 2  # the listener and the accepted connection
        fake.stop()
        assert server_side(fake.port) == []
