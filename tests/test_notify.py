"""The sd_notify protocol against a real Unix datagram socket, and the main-loop heartbeat."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.host.notify import Heartbeat, Notifier, announce_stop, run_counts, status_text
from daemon.runs.engine import Engine
from daemon.runs.store import RunStore

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or getattr(socket, "AF_UNIX", None) is None, reason="no AF_UNIX datagrams"
)


class Manager:
    """The service manager's end: a bound datagram socket and what arrived on it."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.name, **extra}

    def received(self) -> list[str]:
        """Every assignment sent so far, in order."""
        lines: list[str] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return lines
            lines += data.decode("utf-8").split("\n")


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    """A notify socket bound to a path, as systemd makes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "notify"
        sock.bind(str(path))
        sock.setblocking(False)
        yield Manager(sock, str(path))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_socket_is_a_noop() -> None:
    """Without $NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval() is None
    Heartbeat(notifier, lambda: "x")()


def test_ready_status_watchdog_stopping_arrive(manager: Manager) -> None:
    """READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 reach a socket bound to a path."""
    notifier = Notifier(manager.env())
    assert notifier.ready() and notifier.status("runs: 1 incoming") and notifier.watchdog()
    assert notifier.stopping()
    assert manager.received() == [
        "READY=1", "STATUS=runs: 1 incoming", "WATCHDOG=1", "STOPPING=1",
        "STATUS=stopping: finishing the work in flight",
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the abstract namespace is Linux's")
def test_abstract_namespace_socket() -> None:
    """A leading '@' in $NOTIFY_SOCKET addresses the abstract namespace."""
    name = f"tandava-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"


def test_watchdog_interval_belongs_to_our_pid(manager: Manager) -> None:
    """$WATCHDOG_USEC counts only when $WATCHDOG_PID is unset or ours."""
    assert Notifier(manager.env(WATCHDOG_USEC="60000000")).watchdog_interval() == 60.0
    mine = manager.env(WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid()))
    assert Notifier(mine).watchdog_interval() == 4.0
    other = manager.env(WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid() + 1))
    notifier = Notifier(other)
    assert notifier.watchdog_interval() is None
    clock = Clock()
    beat = Heartbeat(notifier, clock=clock)
    for _ in range(5):
        beat()
        clock.now += 10
    assert "WATCHDOG=1" not in manager.received()


def test_heartbeat_pings_only_when_the_loop_ticks(manager: Manager) -> None:
    """Pings come at most every half interval, and only from ticks: a stalled loop sends none."""
    clock = Clock()
    beat = Heartbeat(Notifier(manager.env(WATCHDOG_USEC="10000000")), clock=clock)
    for _ in range(20):  # 10 s of ticks every 0.5 s
        beat()
        clock.now += 0.5
    assert manager.received().count("WATCHDOG=1") == 2  # at 0 s and 5 s
    clock.now += 60  # the loop is stuck: nobody calls the heartbeat
    assert manager.received() == []
    beat()
    assert manager.received() == ["WATCHDOG=1"]


def test_heartbeat_ready_once_and_status_when_changed(manager: Manager) -> None:
    """READY=1 on the first tick only; STATUS= is re-read every 5 s and sent only when it changed."""
    clock = Clock()
    texts = iter(["runs: none", "runs: none", "runs: 1 incoming"])
    beat = Heartbeat(Notifier(manager.env()), lambda: next(texts), clock=clock, status_every=5)
    beat()
    beat()  # too soon to look again
    clock.now += 5
    beat()  # same text: not sent
    clock.now += 5
    beat()
    assert manager.received() == ["READY=1", "STATUS=runs: none", "STATUS=runs: 1 incoming"]


def test_status_text_counts_runs(store: RunStore, tmp_path: Path) -> None:
    """STATUS= names how many runs each state holds, and a note."""
    for name in ("a.mp3", "b.mp3"):
        song = tmp_path / name
        song.write_bytes(name.encode())
        store.create(song, name)
    assert status_text(run_counts(store), "0 working") == "runs: 2 incoming; 0 working"
    assert status_text({}) == "runs: none"


def test_engine_ticks_drive_the_heartbeat(manager: Manager, store: RunStore) -> None:
    """A real Engine calls the heartbeat from its loop; while on_tick blocks, no ping leaves."""
    beat = Heartbeat(Notifier(manager.env(WATCHDOG_USEC="100000")))  # ping at most every 50 ms
    stop = threading.Event()
    stalled = threading.Event()
    release = threading.Event()
    ticks = 0

    def on_tick() -> None:
        nonlocal ticks
        beat()
        ticks += 1
        if ticks == 5:
            stalled.set()
            release.wait(5)  # the main loop hangs here

    engine = Engine(store, [], workers={"cpu": 1, "gpu": 1}, tick_seconds=0.06)
    thread = threading.Thread(target=engine.run, args=(stop,), kwargs={"on_tick": on_tick})
    thread.start()
    try:
        assert stalled.wait(5)
        before = manager.received()
        assert before[0] == "READY=1" and before.count("WATCHDOG=1") == 5
        threading.Event().wait(0.3)  # six watchdog half-intervals of a stuck loop
        assert manager.received() == []
    finally:
        stop.set()
        release.set()
        thread.join(5)


def test_announce_stop_sends_stopping_and_extends_the_watchdog(manager: Manager) -> None:
    """A stop request sends STOPPING=1 with a watchdog long enough for the drain."""
    stop = threading.Event()
    thread = announce_stop(Notifier(manager.env(WATCHDOG_USEC="60000000")), stop, drain_seconds=120)
    stop.set()
    thread.join(5)
    assert manager.received() == [
        "STOPPING=1", "STATUS=stopping: finishing the work in flight", "WATCHDOG_USEC=120000000",
    ]
