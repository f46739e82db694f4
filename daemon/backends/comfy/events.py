"""ComfyUI's websocket messages and history entries as typed events, parsed without I/O.

How this works (h11's split between receiving bytes and reading events):
the socket loop only receives frames and hands them to ``parse_text`` or
``parse_binary``; ``JobWatch`` folds the events of one prompt into what the
daemon needs to know: running or not, progress, the files written, and how
the job ended. Nothing here opens a socket, so every quirk in PROTOCOL.md is
tested against the captured frames in milliseconds.

Quirks this encodes (PROTOCOL.md §3, §4):
- the end of a job is ``executing`` with ``node: null`` *for that prompt*;
  success is only ``execution_success``; ``execution_error`` and
  ``execution_interrupted`` both end as history ``status_str: "error"``, told
  apart by the last history message;
- a socket that reconnects mid-job gets ``executing`` with no ``prompt_id``;
- video outputs arrive under ``images`` with ``animated: [true]``;
- unknown message types are kept as ``Unknown`` (newer servers add types).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.errors import TransientError


class ProtocolError(TransientError):
    """A frame or history entry that does not have ComfyUI's shape."""


@dataclass(frozen=True)
class OutputFile:
    """A file a node wrote, as ``/view`` addresses it."""

    filename: str
    subfolder: str
    type: str
    animated: bool = False


@dataclass(frozen=True)
class Status:
    queue_remaining: int
    sid: str | None = None


@dataclass(frozen=True)
class ExecutionStart:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Executing:
    """A node starts; ``node is None`` ends the job. ``prompt_id`` is None after a reconnect."""

    prompt_id: str | None
    node: str | None


@dataclass(frozen=True)
class NodeProgress:
    value: float
    max: float
    state: str


@dataclass(frozen=True)
class ProgressState:
    prompt_id: str
    nodes: dict[str, NodeProgress]


@dataclass(frozen=True)
class Progress:
    prompt_id: str | None
    node: str | None
    value: float
    max: float


@dataclass(frozen=True)
class Executed:
    prompt_id: str
    node: str
    files: tuple[OutputFile, ...]


@dataclass(frozen=True)
class ExecutionSuccess:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionError:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str | None
    node_type: str | None


@dataclass(frozen=True)
class FeatureFlags:
    flags: dict[str, Any]


@dataclass(frozen=True)
class Preview:
    """A binary preview image (type 1, or 4 with metadata)."""

    image_type: str
    data: bytes
    prompt_id: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class Text:
    """A binary text frame (type 3) from a node."""

    node: str
    text: str


@dataclass(frozen=True)
class Unknown:
    type: str
    data: Any


Event = (
    Status | ExecutionStart | ExecutionCached | Executing | ProgressState | Progress | Executed
    | ExecutionSuccess | ExecutionError | ExecutionInterrupted | FeatureFlags | Preview | Text | Unknown
)


def parse_text(raw: str | bytes) -> Event:
    """One text frame ``{"type", "data"}`` as an event."""
    try:
        message = json.loads(raw)
        kind, data = message["type"], message.get("data") or {}
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtocolError(f"ComfyUI sent a message Tandava cannot read: {exc}", cause="Protocol") from exc
    try:
        return _PARSERS.get(kind, _unknown(kind))(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"ComfyUI's {kind!r} message lacks {exc}", cause="Protocol") from exc


def _unknown(kind: str) -> Any:
    return lambda data: Unknown(kind, data)


def _files(output: dict[str, Any]) -> tuple[OutputFile, ...]:
    # Core video nodes report under "images" with "animated"; VideoHelperSuite's
    # VHS_VideoCombine reports its videos under "gifs".
    animated = bool(output.get("animated") and any(output["animated"]))
    return tuple(
        OutputFile(item["filename"], item.get("subfolder", ""), item.get("type", "output"), animated)
        for item in output.get("images", [])
    ) + tuple(
        OutputFile(item["filename"], item.get("subfolder", ""), item.get("type", "output"), True)
        for item in output.get("gifs", [])
    )


def _status(data: dict[str, Any]) -> Status:
    return Status(int(data["status"]["exec_info"]["queue_remaining"]), data.get("sid"))


def _error(data: dict[str, Any]) -> ExecutionError:
    return ExecutionError(
        data["prompt_id"], data.get("node_id"), data.get("node_type"),
        data.get("exception_type", ""), data.get("exception_message", ""), tuple(data.get("traceback", ())),
    )


_PARSERS: dict[str, Any] = {
    "status": _status,
    "execution_start": lambda d: ExecutionStart(d["prompt_id"]),
    "execution_cached": lambda d: ExecutionCached(d["prompt_id"], tuple(d.get("nodes", ()))),
    "executing": lambda d: Executing(d.get("prompt_id"), d["node"]),
    "progress_state": lambda d: ProgressState(
        d["prompt_id"],
        {k: NodeProgress(float(v["value"]), float(v["max"]), v["state"]) for k, v in d["nodes"].items()},
    ),
    "progress": lambda d: Progress(d.get("prompt_id"), d.get("node"), float(d["value"]), float(d["max"])),
    "executed": lambda d: Executed(d["prompt_id"], d["node"], _files(d.get("output") or {})),
    "execution_success": lambda d: ExecutionSuccess(d["prompt_id"]),
    "execution_error": _error,
    "execution_interrupted": lambda d: ExecutionInterrupted(d["prompt_id"], d.get("node_id"), d.get("node_type")),
    "feature_flags": lambda d: FeatureFlags(dict(d)),
}

_IMAGE_TYPES = {1: "jpeg", 2: "png"}


def parse_binary(frame: bytes) -> Event:
    """One binary frame: a 4-byte big-endian event type, then its payload."""
    if len(frame) < 4:
        raise ProtocolError("ComfyUI sent a binary frame shorter than its header", cause="Protocol")
    (kind,) = struct.unpack(">I", frame[:4])
    body = frame[4:]
    try:
        if kind == 1:
            (image_type,) = struct.unpack(">I", body[:4])
            return Preview(_IMAGE_TYPES.get(image_type, str(image_type)), body[4:])
        if kind == 3:
            (length,) = struct.unpack(">I", body[:4])
            return Text(body[4 : 4 + length].decode("utf-8"), body[4 + length :].decode("utf-8", "replace"))
        if kind == 4:
            (length,) = struct.unpack(">I", body[:4])
            meta = json.loads(body[4 : 4 + length])
            return Preview(str(meta.get("image_type", "")).split("/")[-1], body[4 + length :],
                           meta.get("prompt_id"), meta.get("node_id"))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"ComfyUI sent a malformed binary frame of type {kind}: {exc}", cause="Protocol") from exc
    return Unknown(f"binary:{kind}", body)


Outcome = Literal["success", "error", "interrupted"]


@dataclass
class JobWatch:
    """What the events say about one prompt: fold them in with ``feed``.

    ``done`` becomes True at the end marker; ``outcome`` is "success" only if
    ``execution_success`` was seen before it.
    """

    prompt_id: str
    started: bool = False
    done: bool = False
    outcome: Outcome | None = None
    node: str | None = None
    progress: float = 0.0
    files: dict[str, tuple[OutputFile, ...]] = field(default_factory=dict)
    error: ExecutionError | ExecutionInterrupted | None = None
    cached: tuple[str, ...] = ()

    def feed(self, event: Event) -> None:
        """Update from one event; events of other prompts are ignored."""
        match event:
            case Executing(prompt_id=None, node=node) if self.started and not self.done:
                self.node = node  # a reconnect mid-job names only the node
            case Executing(prompt_id=pid, node=None) if pid == self.prompt_id:
                self.done = True
                self.outcome = self.outcome or "error"
            case Executing(prompt_id=pid, node=node) if pid == self.prompt_id:
                self.started, self.node = True, node
            case ExecutionStart(prompt_id=pid) if pid == self.prompt_id:
                self.started = True
            case ExecutionCached(prompt_id=pid, nodes=nodes) if pid == self.prompt_id:
                self.cached = nodes
            case ProgressState(prompt_id=pid, nodes=nodes) if pid == self.prompt_id and nodes:
                self.started = True
                self.progress = sum(min(1.0, n.value / n.max) if n.max else 1.0 for n in nodes.values()) / len(nodes)
            case Executed(prompt_id=pid, node=node, files=files) if pid == self.prompt_id:
                self.files[node] = files
            case ExecutionSuccess(prompt_id=pid) if pid == self.prompt_id:
                self.outcome = "success"
            case ExecutionError(prompt_id=pid) if pid == self.prompt_id:
                self.outcome, self.error = "error", event
            case ExecutionInterrupted(prompt_id=pid) if pid == self.prompt_id:
                self.outcome, self.error = "interrupted", event
            case _:
                pass

    @property
    def outputs(self) -> list[OutputFile]:
        """Every file the job's output nodes reported, in node order."""
        return [f for node in sorted(self.files, key=_node_order) for f in self.files[node]]


def _node_order(node: str) -> tuple[int, str]:
    return (int(node), "") if node.isdigit() else (1 << 30, node)


@dataclass(frozen=True)
class HistoryOutcome:
    """A finished prompt as ``/history/{prompt_id}`` tells it."""

    outcome: Outcome
    files: tuple[OutputFile, ...]
    error: ExecutionError | ExecutionInterrupted | None = None


def parse_history(prompt_id: str, body: dict[str, Any]) -> HistoryOutcome | None:
    """The outcome of ``prompt_id`` from a ``/history`` answer; None while it has not finished."""
    entry = body.get(prompt_id)
    if not entry:
        return None
    try:
        status = entry["status"]
        messages = status.get("messages", [])
        outputs = entry.get("outputs", {})
        files = tuple(f for node in sorted(outputs, key=_node_order) for f in _files(outputs[node]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"ComfyUI's history entry for {prompt_id} lacks {exc}", cause="Protocol") from exc
    if status.get("status_str") == "success" and status.get("completed"):
        return HistoryOutcome("success", files)
    last_kind, last_data = messages[-1] if messages else ("", {})
    if last_kind == "execution_interrupted":
        data = {"prompt_id": prompt_id, **last_data}
        return HistoryOutcome("interrupted", files, ExecutionInterrupted(prompt_id, data.get("node_id"), data.get("node_type")))
    if last_kind == "execution_error":
        return HistoryOutcome("error", files, _error({"prompt_id": prompt_id, **last_data}))
    return HistoryOutcome("error", files)
