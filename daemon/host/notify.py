"""Tell systemd how the daemon is doing: the ``sd_notify`` protocol, spoken directly.

How this works: systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET``
naming a Unix datagram socket (a leading ``@`` means the abstract namespace).
Each datagram holds newline-separated ``KEY=value`` assignments: ``READY=1``
once the daemon serves, ``STATUS=…`` for ``systemctl status``, ``WATCHDOG=1``
as a heartbeat, ``STOPPING=1`` when it drains. Without the variable (a terminal,
Windows, a container) every call is a no-op, and a send that fails is logged,
never raised: a service manager going away must not stop the work.

The watchdog is fed only from the engine's main loop (``Heartbeat`` is its
``on_tick``), never from a timer thread, so a loop that hangs stops the pings
and systemd restarts the daemon.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

import structlog

from daemon.runs.store import RunStore

log = structlog.get_logger("tandava.notify")

# STATUS= is re-read at most this often: listing the state root is cheap, not free.
STATUS_EVERY_SECONDS = 5.0


class Notifier:
    """One daemon's line to its service manager; every method is a no-op without one."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog = _watchdog_seconds(env, os.getpid() if pid is None else pid)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """``WatchdogSec`` in seconds when systemd watches this process, else None."""
        return self._watchdog if self.enabled else None

    def ready(self) -> bool:
        return self.send("READY=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self, *, drain_seconds: float | None = None) -> bool:
        """Say the daemon drains; with ``drain_seconds``, give the watchdog that long meanwhile."""
        lines = ["STOPPING=1", "STATUS=stopping: finishing the work in flight"]
        if drain_seconds is not None and self.watchdog_interval() is not None:
            lines.append(f"WATCHDOG_USEC={int(drain_seconds * 1_000_000)}")
        return self.send(*lines)

    def send(self, *assignments: str) -> bool:
        """Send one datagram; True when it left."""
        family = getattr(socket, "AF_UNIX", None)
        if self.address is None or family is None:
            return False
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(assignments).encode("utf-8"))
        except OSError as exc:
            log.warning("notify.failed", socket=self.address.replace("\0", "@"), error=str(exc))
            return False
        return True


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    return value if value.startswith("/") else None


def _watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    owner = env.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None  # the watchdog is another process's (we were started by it)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Heartbeat:
    """The engine's ``on_tick``: READY on the first tick, WATCHDOG every half interval, STATUS when it changed."""

    def __init__(
        self,
        notifier: Notifier,
        status: Callable[[], str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        status_every: float = STATUS_EVERY_SECONDS,
    ) -> None:
        self.notifier = notifier
        self.status = status
        self.clock = clock
        self.status_every = status_every
        self._ready = False
        self._last_ping: float | None = None
        self._last_status_at: float | None = None
        self._last_status = ""

    def __call__(self) -> None:
        if not self.notifier.enabled:
            return
        now = self.clock()
        if not self._ready:
            self._ready = self.notifier.ready()
        interval = self.notifier.watchdog_interval()
        if interval is not None and (self._last_ping is None or now - self._last_ping >= interval / 2):
            self.notifier.watchdog()
            self._last_ping = now
        if self.status is not None and (
            self._last_status_at is None or now - self._last_status_at >= self.status_every
        ):
            self._last_status_at = now
            text = self.status()
            if text != self._last_status:
                self.notifier.status(text)
                self._last_status = text


def run_counts(store: RunStore) -> dict[str, int]:
    """How many runs each state directory holds."""
    counts: dict[str, int] = {}
    for ref in store.iter_runs():
        counts[ref.state.value] = counts.get(ref.state.value, 0) + 1
    return counts


def status_text(counts: Mapping[str, int], note: str = "") -> str:
    """One line for ``systemctl status``: ``runs: 2 incoming, 1 pending_approval; 1 working``."""
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    text = "runs: " + (", ".join(parts) if parts else "none")
    return f"{text}; {note}" if note else text


def announce_stop(notifier: Notifier, stop_event: threading.Event, *, drain_seconds: float) -> threading.Thread:
    """Send STOPPING=1 as soon as a stop is requested, while the engine drains.

    This thread only waits for the stop; it never feeds the watchdog beyond
    extending it once for the drain (``TimeoutStopSec`` bounds that anyway).
    """

    def wait() -> None:
        stop_event.wait()
        notifier.stopping(drain_seconds=drain_seconds)

    thread = threading.Thread(target=wait, name="tandava-notify-stop", daemon=True)
    if notifier.enabled:
        thread.start()
    return thread
