"""The local web control panel: runs by state, the approval gallery, retry, the finished video.

How this works: ``WebPanel`` serves the Starlette app of ``daemon.channels.web.app``
with uvicorn on a thread of its own, inside the daemon process, over the same
``RunStore`` the engine works on. Every page is built from
``decisions.run_view`` and every action calls ``decisions.*``, so the panel,
the CLI and Telegram always show and do the same thing.

Start-up binds the listening socket here, before uvicorn runs, so that the
two things that can go wrong are raised to the caller as ``ConfigError``
naming the key to change: a host reachable from other machines without
``web.token`` ("refuse to start without one"), and a port already taken.
Binding ourselves also gives the real port when ``web.port = 0``. uvicorn
then runs ``Server.run`` on that socket in a daemon thread: it installs no
signal handlers off the main thread, and ``_ThreadServer`` makes sure it
never does (the daemon's host owns signals). Its loggers have no handlers of
their own (``log_config=None``) and propagate to the root logger that
``daemon.logs`` configured, at WARNING, without access lines. ``stop`` sets
``should_exit``; uvicorn notices within a tenth of a second, gives open
connections (a video being streamed) one second, and the thread ends.

    panel = WebPanel(settings, store)
    url = panel.start()      # "http://127.0.0.1:8420/"
    ...
    panel.stop()

Security rules (enforced by ``web_app.Guard``): loopback needs no token
unless one is configured; anything else needs one on every request; POSTs
from other sites are refused; files are served only from inside run folders.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from types import TracebackType

import structlog
import uvicorn

from daemon.channels.web.api.checks import doctor_checks as api_checks
from daemon.channels.web.api.routes import Api
from daemon.channels.web.app import PanelApp
from daemon.channels.web.guard import LOOPBACK_HOSTS
from daemon.checks import Check
from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.intake.intake import Intake
from daemon.runs.store import RunStore

log = structlog.get_logger("tandava.web")

# How often an open page asks for fresh progress: live enough, and cheap with the view cache.
POLL_SECONDS = 3.0
# Long enough for a loaded machine to start a thread and an event loop.
_START_TIMEOUT_SECONDS = 10.0
# A video being streamed gets this long to finish when the daemon stops.
_GRACEFUL_SECONDS = 1
# Shorter than this, a token can be guessed by someone on the same network.
_MIN_TOKEN_CHARS = 16
# EADDRINUSE on Linux/macOS; WSAEADDRINUSE and WSAEACCES (a port Windows reserved) on Windows.
_IN_USE = {errno.EADDRINUSE, 10048, 10013}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_rule(host: str, token: str) -> None:
    """Refuse a panel reachable from other machines without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            "web.token", "",
            f"a token, because web.host = {host!r} lets other machines reach the panel: set "
            "TANDAVA_WEB__TOKEN (in .env) to a long random value, or bind web.host = \"127.0.0.1\"")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); ConfigError names what to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, IndexError) as exc:
        raise ConfigError("web.host", host, f"an address of this machine ({exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "nt":
            # Windows' SO_REUSEADDR would let a second server take the same port silently.
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_EXCLUSIVEADDRUSE", -5), 1)
        else:
            # A restarted daemon must not wait for the old connections' TIME_WAIT to pass.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno in _IN_USE:
            raise ConfigError(
                "web.port", port,
                f"a free port: {host}:{port} is already in use (another program, or another "
                "Tandava); choose another web.port, or 0 for any free one") from None
        raise ConfigError("web.host", host, f"an address this machine can listen on "
                          f"({exc.strerror or exc})") from None
    return sock


def url_for(host: str, port: int) -> str:
    """The address a browser on this machine opens (a wildcard bind is reached via loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class _ThreadServer(uvicorn.Server):
    """uvicorn without signal handling: the daemon's host owns signals, and this runs on a thread."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebPanel:
    """The web control panel of one daemon; ``start`` serves it, ``stop`` ends it."""

    def __init__(self, settings: Settings, store: RunStore, *, poll_seconds: float = POLL_SECONDS,
                 intake: Intake | None = None) -> None:
        self.settings = settings
        self.store = store
        self.poll_seconds = poll_seconds
        # The HTTP API takes songs through the daemon's intake (its own when none is given).
        self.intake = intake or Intake(store, settings.paths.inbox)
        self._api: Api | None = None
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._url = ""

    @property
    def url(self) -> str:
        """Where the panel is served ("" when it is not running)."""
        return self._url

    def start(self) -> str:
        """Serve the panel; returns its URL. Raises ConfigError (token rule, port taken)."""
        if self._thread is not None:
            return self._url
        cfg = self.settings.web
        token = cfg.token.get_secret_value()
        require_token_rule(cfg.host, token)
        sock = bind(cfg.host, cfg.port)
        # On loopback the Host header must name this machine: DNS rebinding cannot reach in.
        hosts = LOOPBACK_HOSTS | {cfg.host.strip("[]").lower()} if is_loopback(cfg.host) else None
        api = Api(self.settings, self.store, self.intake)
        panel = PanelApp(self.store, token=token, hosts=hosts,
                         csrf=secrets.token_urlsafe(24), poll_seconds=self.poll_seconds,
                         inbox=self.settings.paths.inbox, api=api.app)
        config = uvicorn.Config(
            panel.app, log_config=None, log_level=logging.WARNING, access_log=False,
            lifespan="off", loop="asyncio", http="h11", ws="none", server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SECONDS)
        server = _ThreadServer(config)
        thread = threading.Thread(target=_serve, args=(server, sock), name="tandava-web", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise ConfigError("web.host", cfg.host, "an address the panel can serve on "
                                  "(the server did not start; the log says why)")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        self._url = url_for(cfg.host, sock.getsockname()[1])
        api.start()
        self._api = api
        log.info("web.started", url=self._url, auth="token" if token else "loopback only")
        return self._url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (idempotent); returns when the server thread has ended."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        if self._api is not None:
            self._api.stop()
            self._api = None
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True  # connections that would not close in time are cut
            thread.join(timeout)
        self._server = self._thread = None
        self._url = ""
        log.info("web.stopped")

    def __enter__(self) -> WebPanel:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        server.run(sockets=[sock])
    except BaseException as exc:  # uvicorn ends a failed start-up with SystemExit
        log.error("web.failed", error=repr(exc))
    finally:
        sock.close()


def doctor_checks(settings: Settings) -> Iterator[Check]:
    """``tandava doctor``: the token rule, and the panel's port is free (or already ours)."""
    cfg = settings.web
    if not cfg.enabled:
        yield Check("web panel", True, "disabled (web.enabled = false); so is the HTTP API")
        return
    token = cfg.token.get_secret_value()
    if not is_loopback(cfg.host):
        if not token:
            yield Check("web panel token", False, f"web.host = {cfg.host} lets other machines in "
                        "and web.token is empty: set TANDAVA_WEB__TOKEN (in .env) to a long random "
                        "value, or set web.host = \"127.0.0.1\"")
        elif len(token) < _MIN_TOKEN_CHARS:
            yield Check("web panel token", False, f"web.token has {len(token)} characters; use at "
                        f"least {_MIN_TOKEN_CHARS} random ones (python -c \"import secrets; "
                        "print(secrets.token_urlsafe(24))\")")
        else:
            yield Check("web panel token", True, f"set; every request to {cfg.host} must carry it")
    else:
        needed = "required too (it is set)" if token else "not needed on loopback"
        yield Check("web panel token", True, f"{cfg.host} is reachable from this machine only; "
                    f"token {needed}")
    yield _port_check(cfg.host, cfg.port, token)
    yield from api_checks(settings, url_for(cfg.host, cfg.port), is_loopback(cfg.host))


def _port_check(host: str, port: int, token: str) -> Check:
    if port == 0:
        return Check("web panel port", True, "any free port, chosen at start (see the log for the URL)")
    try:
        bind(host, port).close()
    except ConfigError as exc:
        url = url_for(host, port)
        if _is_tandava(url, token):
            return Check("web panel port", True, f"{url} is served by a running Tandava")
        return Check("web panel port", False, str(exc))
    return Check("web panel port", True, f"{host}:{port} is free ({url_for(host, port)})")


def _is_tandava(url: str, token: str) -> bool:
    request = urllib.request.Request(url + "healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=1.5) as response:
            return bool(json.loads(response.read().decode("utf-8")).get("app") == "tandava")
    except (OSError, ValueError, urllib.error.URLError):
        return False
