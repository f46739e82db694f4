"""Keep a ComfyUI server alive: launch it, adopt it, tell crashed from hung from busy, restart it.

How this works: the one question asked of a server is ``health`` (GET /system_stats, PROTOCOL.md
§7): ok, refused, timeout or error. ``ComfyProcess.ensure_running`` turns it into one action:

    ok                                   adopt it (launched by us or not) and use it
    not ok, nobody on the port           launch ComfyUI, wait for ok
    not ok, our ComfyUI on the port      stale: kill its process tree, wait for the port, launch
    not ok, another program on the port  PortTaken naming it; it is never killed

"Ours" is proven, not guessed: the listener (``port_owner``, via psutil) runs
``<folder>/main.py`` of the configured folder (``is_our_comfyui``, resolved paths).
``diagnose`` tells crashed (refused, §9) from hung (no answer, or no websocket event for too
long) from busy, so the client can interrupt and ``restart``. ``RemoteComfy`` has the same face
for a URL we do not own and only ever looks. Every wait polls a ``threading.Event`` so the daemon
can stop mid-start (ComfyUI needs 3-5 s, §10; minutes with many custom nodes). Processes are
handled through psutil only: Linux and Windows alike.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
import requests
import structlog

from daemon.config import ManagedComfyConfig, managed_comfy_url
from daemon.errors import Unavailable
from daemon.logs import roll_file

# ComfyUI's own log: rolled at each launch once it passes this size, a few kept.
COMFY_LOG_MAX_BYTES = 20 * 1024 * 1024
COMFY_LOG_BACKUPS = 5
log = structlog.get_logger("tandava.comfy")

Health = Literal["ok", "refused", "timeout", "error"]
Diagnosis = Literal["ok", "busy", "crashed", "hung"]

POLL_SECONDS = 0.25  # ComfyUI answers 3-5 s after start; a quarter second costs nothing
KILL_TIMEOUT_SECONDS = 10.0  # terminate, then kill what is still alive; also the wait for its port
EXIT_GRACE_SECONDS = 1.0  # a crashed server's exit code, for the log, is worth this wait
LOG_TAIL_LINES = 20
_WILDCARDS = {"0.0.0.0", "::", ""}
_WORDS = {"refused": "connection refused", "timeout": "no answer in time", "error": "it answers, but not as ComfyUI"}


class PortTaken(Unavailable):
    """Another program listens on the managed ComfyUI's port; Tandava will not kill it."""

    def __init__(self, cfg: ManagedComfyConfig, owner: Owner) -> None:
        self.owner = owner
        super().__init__(
            f"port {cfg.port} on {cfg.host} is held by {owner.name} ({owner}), not by the ComfyUI in {cfg.folder}",
            "Stop that program, or set another port under [comfy.managed] port; "
            "Tandava never stops a program it did not start",
            recheck_seconds=30.0,
        )


def health(url: str, timeout: float) -> Health:
    """How the server at ``url`` answers GET /system_stats within ``timeout`` seconds."""
    try:
        with requests.Session() as session:
            session.trust_env = False  # an HTTP_PROXY must not swallow a check of 127.0.0.1
            response = session.get(f"{url.rstrip('/')}/system_stats", timeout=timeout)
    except requests.Timeout:  # ConnectTimeout too: nobody answered in time
        return "timeout"
    except requests.ConnectionError:  # refused, reset, or closed without a reply
        return "refused"
    except requests.RequestException:
        return "error"
    data = None
    with contextlib.suppress(ValueError):  # a body that is not JSON
        data = response.json() if response.status_code == 200 else None
    shaped = isinstance(data, dict) and isinstance(data.get("system"), dict) and isinstance(data.get("devices"), list)
    return "ok" if shaped else "error"


@dataclass
class Owner:
    """The process listening on a port; ``pid`` is None when the system will not say."""

    pid: int | None
    name: str
    cmdline: list[str]

    def __str__(self) -> str:
        if self.pid is None:
            return "a process Tandava has no permission to identify"
        return f"pid {self.pid} {' '.join(self.cmdline) or self.name}"


def _listens(conn: Any, port: int, host: str) -> bool:
    if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
        return False
    ip = conn.laddr.ip  # a listener on 0.0.0.0 blocks 127.0.0.1 too, and the other way round
    return ip in _WILDCARDS or host in _WILDCARDS or ip == host or (host == "localhost" and ip in {"127.0.0.1", "::1"})


def port_owner(port: int, host: str = "127.0.0.1") -> Owner | None:
    """Who listens on ``host:port``, or None if nobody does."""
    hidden = False
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if _listens(conn, port, host) and conn.pid is not None:
                try:
                    proc = psutil.Process(conn.pid)
                    return Owner(conn.pid, proc.name(), proc.cmdline())
                except psutil.Error:  # gone meanwhile, or another user's: the pid still names it
                    return Owner(conn.pid, "(unknown)", [])
            hidden = hidden or _listens(conn, port, host)  # Linux hides other users' pids
        if not hidden:
            return None
    except psutil.AccessDenied:
        pass  # macOS and hardened systems refuse the system-wide table; ask each process
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(_listens(conn, port, host) for conn in proc.net_connections(kind="tcp")):
                return Owner(proc.pid, proc.info["name"] or "", proc.info["cmdline"] or [])
    return Owner(None, "unknown", []) if hidden or not _port_is_free(port, host) else None


def is_our_comfyui(owner: Owner, folder: Path) -> bool:
    """True only if ``owner`` runs ``<folder>/main.py`` (paths resolved, relative ones against its cwd)."""
    if owner.pid is None:
        return False
    target = os.path.normcase((folder / "main.py").resolve())
    try:
        cwd: Path | None = Path(psutil.Process(owner.pid).cwd())
    except psutil.Error:
        cwd = None  # relative arguments then cannot be placed, so they do not match
    scripts = [Path(arg) for arg in owner.cmdline[1:] if Path(arg).name.lower() == "main.py"]
    # (cwd / an absolute path) is that absolute path
    return any(os.path.normcase(((cwd or Path()) / p).resolve()) == target for p in scripts if p.is_absolute() or cwd)


def refuse_foreign_owner(cfg: ManagedComfyConfig) -> Owner | None:
    """Who listens on the managed port: nobody (None) or our ComfyUI; another program raises PortTaken.

    The daemon asks before it launches or kills anything; ``tandava doctor`` asks the same.
    """
    owner = port_owner(cfg.port, cfg.host)
    if owner is not None and not is_our_comfyui(owner, cfg.folder):
        raise PortTaken(cfg, owner)
    return owner


def kill_tree(pid: int, timeout: float = KILL_TIMEOUT_SECONDS) -> None:
    """Terminate ``pid`` and all its descendants, then kill what survives ``timeout``."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for signal_ in ("terminate", "kill"):
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                getattr(proc, signal_)()
        deadline = time.monotonic() + timeout
        while (procs := [p for p in procs if not _is_gone(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)


def _is_gone(proc: psutil.Process) -> bool:
    # A zombie is gone: its port is closed, and init reaps orphans when it likes (wait_procs waits).
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _port_is_free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As ComfyUI (aiohttp) does on POSIX, so TIME_WAIT sockets do not count; on Windows
        # the same option would allow binding a port that is in use.
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_free(port: int, host: str, timeout: float, stop: threading.Event | None = None) -> bool:
    """Wait until ``host:port`` can be bound; False after ``timeout`` or when ``stop`` is set."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    while not _port_is_free(port, host):
        if time.monotonic() >= deadline or stop.wait(0.1):
            return False
    return True


def _judge(state: Health, running_job: bool, last_event_age: float | None, silence_seconds: float) -> Diagnosis:
    if state == "timeout":
        return "hung"
    if state != "ok":  # refused: dead (§9); a non-ComfyUI answer: a proxy before a dead one, or worse
        return "crashed"
    if running_job and last_event_age is not None and last_event_age > silence_seconds:
        return "hung"
    return "busy" if running_job else "ok"


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    # ComfyUI writes UTF-8 (we set PYTHONIOENCODING); replace what is not, never fail here.
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:])


class _Interrupted(Unavailable):
    def __init__(self) -> None:
        super().__init__("ComfyUI was not started: Tandava is stopping", recheck_seconds=0.0)


class _LaunchFailed(Exception):
    """One launch that did not answer; ``args`` are (why, log tail)."""


def managed_url(cfg: ManagedComfyConfig) -> str:
    """Where a managed ComfyUI answers (see ``config.managed_comfy_url``)."""
    return managed_comfy_url(cfg)


class ComfyProcess:
    """One managed ComfyUI: launched, adopted, diagnosed and restarted here; thread-safe."""

    def __init__(self, cfg: ManagedComfyConfig, *, log_dir: Path, health_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, launch_attempts: int = 3,
                 backoff_seconds: float = 2.0) -> None:
        self.cfg = cfg
        self.log_file = cfg.log_file or log_dir / "comfyui.log"
        self.health_timeout = health_timeout
        self.clock = clock
        self.launch_attempts = max(1, launch_attempts)
        self.backoff_seconds = backoff_seconds
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted = False
        self._lock = threading.RLock()  # one launch at a time, whoever asks

    @property
    def url(self) -> str:
        return managed_url(self.cfg)

    @property
    def pid(self) -> int | None:
        """The pid of the ComfyUI we launched and that still runs; None for an adopted one."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def ensure_running(self, stop: threading.Event) -> str:
        """Make sure a healthy ComfyUI answers at ``url`` and return the url; see the module docstring."""
        with self._lock:
            state = health(self.url, self.health_timeout)
            if state == "ok":
                if self.pid is None and not self._adopted:
                    log.info("comfy.adopted", url=self.url)
                    self._adopted = True
                return self.url
            self._clear_port(stop, state)
            return self._launch_with_retries(stop)

    def restart(self, reason: str, stop: threading.Event) -> str:
        """Kill the running server (ours, or our stale one on the port) and launch a new one."""
        with self._lock:
            self.restarts += 1
            log.warning("comfy.restarting", reason=reason, url=self.url, restarts=self.restarts)
            self._clear_port(stop, "restart")
            return self._launch_with_retries(stop)

    def diagnose(self, running_job: bool, last_event_age: float | None, silence_seconds: float) -> Diagnosis:
        """crashed, hung, busy or ok, from one health check and the age of the job's last event."""
        state = health(self.url, self.health_timeout)
        verdict = _judge(state, running_job, last_event_age, silence_seconds)
        if verdict == "crashed" and self._lock.acquire(blocking=False):  # a launch may hold it for minutes
            try:
                if self._proc is not None:  # its port closes a moment before its exit code exists
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout=EXIT_GRACE_SECONDS)
                self._reap()
            finally:
                self._lock.release()
        if verdict in ("crashed", "hung"):
            log.warning("comfy.diagnosed", verdict=verdict, health=state, last_event_age=last_event_age, url=self.url)
        return verdict

    def stop(self) -> None:
        """Stop the ComfyUI we launched (daemon shutdown); an adopted one is left running."""
        with self._lock:
            if self.pid is not None and self._proc is not None:
                log.info("comfy.stopping", pid=self._proc.pid)
                kill_tree(self._proc.pid)
                self._proc.wait()
                self._proc = None
            self._reap()

    def _clear_port(self, stop: threading.Event, why: str) -> None:
        """Kill our child and our stale ComfyUI on the port; a foreign owner raises PortTaken."""
        self._adopted = False
        self._reap()
        try:
            owner = refuse_foreign_owner(self.cfg)
        except PortTaken as exc:
            log.error("comfy.port_taken", port=self.cfg.port, owner=str(exc.owner))
            raise
        if self._proc is not None and (owner is None or owner.pid != self._proc.pid):
            self._kill(self._proc.pid, stop)  # alive but not the one listening: of no use
        if owner is not None:
            log.warning("comfy.stale", pid=owner.pid, why=why, url=self.url)
            self._kill(owner.pid, stop)
            log.info("comfy.stale_killed", pid=owner.pid)

    def _reap(self) -> None:
        """Forget our child if it has exited, logging its exit code once."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            log.warning("comfy.exited", pid=proc.pid, code=proc.returncode, log_file=str(self.log_file))
            self._proc = None

    def _kill(self, pid: int | None, stop: threading.Event) -> None:
        if pid is not None:
            try:
                kill_tree(pid)
            except psutil.AccessDenied:
                raise Unavailable(f"ComfyUI (pid {pid}) on port {self.cfg.port} does not answer and Tandava may not stop it",
                                  "Stop that ComfyUI yourself (it runs as another user); Tandava then starts its own",
                                  recheck_seconds=60.0) from None
            if self._proc is not None and self._proc.pid == pid:
                self._proc.wait()  # kill_tree left it a zombie, so its Popen is settled here
                self._proc = None
        if not wait_port_free(self.cfg.port, self.cfg.host, KILL_TIMEOUT_SECONDS, stop):
            if stop.is_set():
                raise _Interrupted
            raise Unavailable(f"port {self.cfg.port} is still in use after stopping ComfyUI (pid {pid})",
                              "Tandava will check again; if it stays taken, see which program holds it")

    def _launch_with_retries(self, stop: threading.Event) -> str:
        why, tail = "not started", ""
        for attempt in range(1, self.launch_attempts + 1):
            try:
                return self._launch_once(stop)
            except _LaunchFailed as exc:
                why, tail = exc.args
                log.warning("comfy.launch_failed", attempt=attempt, why=why, log_file=str(self.log_file))
            if attempt < self.launch_attempts and stop.wait(self.backoff_seconds * 2 ** (attempt - 1)):
                raise _Interrupted
        raise Unavailable(
            f"ComfyUI in {self.cfg.folder} did not start after {self.launch_attempts} tries ({why})"
            + (f"; the last lines of its log:\n{tail}" if tail else ""),
            f"Read {self.log_file} and fix what ComfyUI reports there; Tandava will try again",
            recheck_seconds=60.0,
        )

    def _launch_once(self, stop: threading.Event) -> str:
        cfg = self.cfg
        command = [str(cfg.python or sys.executable), str(cfg.folder / "main.py"),
                   "--listen", cfg.host, "--port", str(cfg.port), *cfg.args]
        env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
        # Its own process group/session: a Ctrl+C in the daemon's console is ours to handle,
        # and a server that outlives a crashed daemon is adopted on the next start.
        group: dict[str, Any] = {"start_new_session": True}
        if sys.platform == "win32":
            group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        started = self.clock()
        # ComfyUI holds its log open while it runs: roll it only between launches.
        roll_file(self.log_file, COMFY_LOG_BACKUPS, max_bytes=COMFY_LOG_MAX_BYTES)
        with self.log_file.open("ab") as out:  # bytes: ComfyUI's output is not ours to re-encode
            proc = subprocess.Popen(command, cwd=cfg.folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, **group)
        self._proc = proc
        log.info("comfy.launching", pid=proc.pid, command=command, log_file=str(self.log_file))
        deadline = started + cfg.start_timeout_seconds
        while True:
            if stop.is_set():
                self._kill(proc.pid, threading.Event())  # a half-started server is of no use to anyone
                raise _Interrupted
            if (code := proc.poll()) is not None:
                self._reap()
                raise _LaunchFailed(f"it exited with code {code}", _log_tail(self.log_file))
            if health(self.url, max(0.1, min(self.health_timeout, deadline - self.clock()))) == "ok":
                log.info("comfy.ready", pid=proc.pid, seconds=round(self.clock() - started, 2), url=self.url)
                return self.url
            if self.clock() >= deadline:
                self._kill(proc.pid, stop)
                raise _LaunchFailed(f"it did not answer within {cfg.start_timeout_seconds:g} s", _log_tail(self.log_file))
            stop.wait(POLL_SECONDS)


class RemoteComfy:
    """A ComfyUI at a URL Tandava does not own: it is watched, never launched or killed."""

    def __init__(self, url: str, *, health_timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.health_timeout = health_timeout

    def ensure_running(self, stop: threading.Event) -> str:
        """Return the url if the server is healthy; otherwise Unavailable (the engine checks again later)."""
        state = health(self.url, self.health_timeout)
        if state == "ok":
            return self.url
        raise Unavailable(f"ComfyUI at {self.url} is not answering ({_WORDS[state]}); Tandava will keep checking",
                          "Start ComfyUI there, or correct the URL under [comfy] servers")

    def diagnose(self, running_job: bool, last_event_age: float | None, silence_seconds: float) -> Diagnosis:
        """crashed, hung, busy or ok, judged exactly as for a managed server."""
        return _judge(health(self.url, self.health_timeout), running_job, last_event_age, silence_seconds)

    def restart(self, reason: str, stop: threading.Event) -> str:
        """A server we do not own cannot be restarted from here: say so, and keep waiting for it."""
        raise Unavailable(f"ComfyUI at {self.url} needs a restart ({reason}), and Tandava does not own it",
                          "Restart ComfyUI on that machine; the jobs it held are sent again once it answers.")

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""
