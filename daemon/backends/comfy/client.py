"""One ComfyUI server on the wire: HTTP with requests, live events over its websocket.

How this works: ``ComfyClient`` is a thin translation of PROTOCOL.md's
routes into methods, with every foreign failure mapped into our exception
tree at this edge: connection refused and timeouts become ``Unavailable``
(the run waits for the server), a 400 or a 200 carrying ``node_errors``
becomes ``WorkflowError`` (the graph itself is wrong), anything else odd a
``TransientError``. ``Listener`` keeps one websocket open under a fixed
``clientId`` (ComfyUI sends a job's messages only to the socket named in the
prompt's ``client_id``), parses each frame with ``events.parse_text`` and
hands the events to a callback. ComfyUI sends no heartbeat, so the listener
pings, and it reconnects with backoff after the server goes away.

The client id is derived from the state root, so a daemon restarted after a
crash reconnects under the same id and receives the live messages of jobs its
predecessor posted.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import structlog
import websocket

from daemon.backends.comfy.events import (
    Event,
    HistoryOutcome,
    OutputFile,
    ProtocolError,
    parse_binary,
    parse_history,
    parse_text,
)
from daemon.errors import TransientError, Unavailable, WorkflowError
from daemon.runs import fsutil

log = structlog.get_logger("tandava.comfy")

PING_SECONDS = 20.0
RECONNECT_MAX_SECONDS = 10.0
# The reader wakes within a second of a stop; a machine under load may take much longer.
STOP_TIMEOUT_SECONDS = 30.0


def client_id_for(state_root: Path) -> str:
    """A stable websocket client id per installation (see the module docstring)."""
    digest = hashlib.sha256(str(state_root.resolve()).encode("utf-8")).hexdigest()[:16]
    return f"tandava-{digest}"


@dataclass(frozen=True)
class Stats:
    """What ``/system_stats`` says about the first device (on a CPU server: system RAM)."""

    device: str
    device_type: str
    vram_total: int
    vram_free: int


@dataclass(frozen=True)
class QueueState:
    running: tuple[str, ...]
    pending: tuple[str, ...]

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


class ComfyClient:
    """HTTP calls to one ComfyUI server, each failure translated into our errors."""

    def __init__(self, url: str, *, client_id: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        self.timeout = timeout
        self._session = requests.Session()
        self._object_info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close every pooled connection; a request still in flight closes its own when it ends."""
        self._closed = True
        self._session.close()

    # -- plumbing -------------------------------------------------------------

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> requests.Response:
        if self._closed:
            raise Unavailable(f"the connection to ComfyUI at {self.url} is closed: Tandava is stopping",
                              "Nothing to do: the job is picked up again at the next start.", cause="ComfyClosed")
        try:
            return self._session.request(method, self.url + path, timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise Unavailable(
                f"ComfyUI at {self.url} did not answer {path} within {timeout or self.timeout:.0f} s (hung or overloaded)",
                "Tandava keeps checking; if it stays like this, restart ComfyUI.",
                cause="ComfyTimeout", recheck_seconds=10.0,
            ) from exc
        except requests.ConnectionError as exc:
            raise Unavailable(
                f"ComfyUI at {self.url} cannot be reached (connection refused: not running or restarting)",
                "Start ComfyUI (or let Tandava manage it with [comfy.managed]); the run carries on when it is back.",
                cause="ComfyDown", recheck_seconds=10.0,
            ) from exc
        finally:
            if self._closed:
                # close() ran during this request: the pool requests made for it would
                # otherwise keep its socket open until the garbage collector finds it.
                self._session.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 500:
            raise TransientError(f"ComfyUI at {self.url} failed on {path}: HTTP {response.status_code}",
                                 cause="ComfyServerError")
        if response.status_code != 200:
            raise ProtocolError(f"ComfyUI at {self.url} answered {path} with HTTP {response.status_code}",
                                   cause="Protocol")
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(f"ComfyUI at {self.url} answered {path} with something that is not JSON",
                                   cause="Protocol") from exc

    # -- introspection ----------------------------------------------------------

    def system_stats(self, *, timeout: float | None = None) -> Stats:
        body = self._json("GET", "/system_stats", timeout=timeout)
        try:
            device = body["devices"][0]
            return Stats(str(device.get("name", "")), str(device.get("type", "")),
                         int(device["vram_total"]), int(device["vram_free"]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ProtocolError(f"ComfyUI at {self.url} sent /system_stats without device figures",
                                   cause="Protocol") from exc

    def object_info(self, *, refresh: bool = False) -> dict[str, Any]:
        """Every node class the server knows, cached until ``refresh``."""
        with self._lock:
            if self._object_info is None or refresh:
                info = self._json("GET", "/object_info", timeout=max(self.timeout, 60.0))
                if not isinstance(info, dict):
                    raise ProtocolError(f"ComfyUI at {self.url} sent an /object_info that is not a mapping")
                self._object_info = info
            return self._object_info

    # -- jobs -------------------------------------------------------------------

    def post_prompt(self, graph: dict[str, Any], prompt_id: str, *, workflow: str) -> int:
        """Queue ``graph`` under our own ``prompt_id``; returns the server's queue number."""
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        response = self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            raise _rejected(workflow, self.url, _safe_json(response))
        if response.status_code != 200:
            raise TransientError(f"ComfyUI at {self.url} failed to queue {workflow}: HTTP {response.status_code}",
                                 cause="ComfyServerError")
        answer = _safe_json(response)
        if answer.get("node_errors"):
            # 200 with node_errors: only the valid outputs run, which is not the
            # job we asked for (PROTOCOL.md §1); take it back and say why.
            self.cancel(prompt_id)
            raise _rejected(workflow, self.url, answer)
        return int(answer.get("number", -1))

    def queue(self) -> QueueState:
        body = self._json("GET", "/queue")
        try:
            return QueueState(tuple(item[1] for item in body.get("queue_running", [])),
                              tuple(item[1] for item in body.get("queue_pending", [])))
        except (IndexError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"ComfyUI at {self.url} sent a /queue of an unknown shape") from exc

    def history(self, prompt_id: str) -> HistoryOutcome | None:
        """The finished job, or None while it is queued, running or unknown (200 ``{}``)."""
        return parse_history(prompt_id, self._json("GET", f"/history/{prompt_id}"))

    def cancel(self, prompt_id: str) -> None:
        """Take a job back: delete it if pending, interrupt it only if it is the one running.

        Servers before late 2025 ignore ``prompt_id`` on /interrupt and stop
        whatever runs, on a shared server maybe someone else's job: so
        interrupt only after /queue shows that ours is running.
        """
        _check(self._request("POST", "/queue", json={"delete": [prompt_id]}), "/queue delete")
        if prompt_id in self.queue().running:
            _check(self._request("POST", "/interrupt", json={"prompt_id": prompt_id}), "/interrupt")

    def free(self) -> None:
        """Ask the server to unload models; it only sets a flag, so callers poll afterwards."""
        _check(self._request("POST", "/free", json={"unload_models": True, "free_memory": True}), "/free")

    # -- files ------------------------------------------------------------------

    def upload_image(self, path: Path, name: str, *, data: bytes | None = None) -> str:
        """Upload a start image to ``input/`` (``data``, or the file at ``path``); returns the name
        LoadImage must use."""
        body = data if data is not None else path.read_bytes()
        response = self._request("POST", "/upload/image", files={"image": (name, body, "image/png")},
                                 data={"overwrite": "true", "type": "input"})
        if response.status_code != 200:
            raise TransientError(f"ComfyUI at {self.url} refused the upload of {path.name}: HTTP {response.status_code}",
                                 cause="ComfyUpload")
        answer = _safe_json(response)
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else str(answer.get("name", name))

    def download(self, file: OutputFile, dest: Path) -> Path:
        """Fetch an output through ``/view`` into ``dest``, temp-then-rename."""
        params = {"filename": file.filename, "subfolder": file.subfolder, "type": file.type}
        response = self._request("GET", "/view", params=params, stream=True, timeout=max(self.timeout, 120.0))
        with response:
            if response.status_code != 200:
                raise TransientError(
                    f"ComfyUI at {self.url} could not hand over {file.subfolder}/{file.filename}: HTTP {response.status_code}",
                    cause="ComfyView")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with fsutil.replacing(dest) as fh:
                    for chunk in response.iter_content(1 << 20):
                        fh.write(chunk)
            except requests.RequestException as exc:
                raise Unavailable(f"ComfyUI at {self.url} went away while sending {file.filename}",
                                  cause="ComfyDown") from exc
        return dest


def _check(response: requests.Response, what: str) -> None:
    """Control calls answer 200 with an empty body; anything else (a proxy's 403) is worth a warning."""
    if response.status_code != 200:
        log.warning("comfy.control_refused", call=what, status=response.status_code, url=response.url)


def _safe_json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _rejected(workflow: str, url: str, body: dict[str, Any]) -> WorkflowError:
    """A refused prompt as a sentence naming the node, the input and what was wrong."""
    problems: list[str] = []
    for node, info in (body.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            details = f": {err['details']}" if err.get("details") else ""
            problems.append(f"node {node} ({info.get('class_type', '?')}): {err.get('message', '')}{details}")
    error = body.get("error") or {}
    if not problems:
        problems.append(str(error.get("message") or "the server gave no reason"))
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return WorkflowError(
        f"ComfyUI at {url} refused workflow {workflow}: " + "; ".join(problems[:3]) + more,
        "Run `tandava doctor` to check the workflows against the server; install the missing "
        "model or node pack, or fix the workflow's mapping, then `tandava retry <run>`.",
        cause="WorkflowRejected",
    )


def ws_url(http_url: str, client_id: str) -> str:
    parts = urlsplit(http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", f"clientId={client_id}", ""))


class Listener:
    """Keeps a websocket to one server open and hands every parsed event to ``on_event``.

    ``on_state(connected)`` is called on each connect and disconnect, so the
    owner can ask ``/history`` about jobs whose messages were lost meanwhile.
    """

    def __init__(self, url: str, client_id: str, on_event: Callable[[Event], None],
                 on_state: Callable[[bool], None] = lambda _c: None) -> None:
        self.url = ws_url(url, client_id)
        self.on_event = on_event
        self.on_state = on_state
        self.connected = False
        self.last_event = time.monotonic()
        self._stop = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._thread = threading.Thread(target=self._loop, name=f"tandava-ws-{urlsplit(url).port}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop listening; returns once the reader has closed its socket (within a second, or ``timeout``).

        The socket is closed by the reader thread alone: closing it from here while the
        reader is inside ``recv`` raced it, and a socket could be left for the garbage
        collector. Shutting it down wakes the reader at once instead.
        """
        self._stop.set()
        ws = self._ws
        sock = getattr(ws, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed, or never fully connected
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("comfy.ws_stop_slow", url=self.url, seconds=timeout)

    def _loop(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                ws = websocket.create_connection(self.url, timeout=5, enable_multithread=True)
            except (OSError, websocket.WebSocketException):
                self._stop.wait(delay)
                delay = min(RECONNECT_MAX_SECONDS, delay * 2)
                continue
            delay = 0.2
            self._ws = ws
            self._set_connected(True)
            try:
                self._receive(ws)
            finally:
                self._ws = None
                # Closing a broken socket may fail in many ways; it is going away regardless.
                with contextlib.suppress(Exception):
                    ws.close(timeout=0.5)
                ws.shutdown()  # close() skips a socket it thinks is already disconnected
                self._set_connected(False)

    def _receive(self, ws: websocket.WebSocket) -> None:
        ws.settimeout(1.0)
        last_ping = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_ping > PING_SECONDS:
                # ComfyUI never pings; a ping that cannot be sent ends this connection.
                ws.ping()
                last_ping = time.monotonic()
            try:
                opcode, payload = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException):
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
            try:
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    event = parse_text(payload)
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    event = parse_binary(payload)
                else:
                    continue
            except TransientError as exc:
                log.warning("comfy.bad_message", error=str(exc))
                continue
            self.last_event = time.monotonic()
            self.on_event(event)

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            log.info("comfy.ws_connected" if connected else "comfy.ws_disconnected", url=self.url)
            self.on_state(connected)

