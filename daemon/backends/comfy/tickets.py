"""What the pool keeps per job and per server: tickets, servers, their keepers, and how a job's end reads.

A ``Ticket`` follows one job from Tandava's queue to a server and back; a
``Server`` holds a ComfyUI's client, its live listener, the tickets it holds
and what its memory has shown (``vram.Ledger``). ``job_error`` turns how a
job ended on the server into the error a stage raises: retryable for a
runtime failure or an interrupt, a wait for an out-of-memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from daemon.backends.comfy.client import ComfyClient, Listener
from daemon.backends.comfy.events import HistoryOutcome, JobWatch
from daemon.backends.comfy.vram import Ledger
from daemon.backends.comfy.workflows import Workflow
from daemon.errors import StageError, TransientError, Unavailable

Health = Literal["ok", "busy", "crashed", "hung"]


class Keeper(Protocol):
    """Keeps a server alive (``ComfyProcess``) or only looks at it (``RemoteComfy``)."""

    def ensure_running(self, stop: threading.Event) -> str: ...

    def diagnose(self, running_job: bool, last_event_age: float | None, silence_seconds: float) -> Health: ...

    def restart(self, reason: str, stop: threading.Event) -> str: ...


@dataclass(eq=False)
class Ticket:
    """One job's journey through the pool; ``done`` is set when it ended either way."""

    prompt_id: str
    workflow: Workflow
    values: dict[str, Any]
    start_image: Path | None
    enqueued: float
    server: Server | None = None
    posted_at: float = 0.0
    started_at: float = 0.0
    losses: int = 0
    position: int = 0  # place in the server's queue while pending there
    interrupted_at: float = 0.0  # when we interrupted it for silence (escalation step one)
    # The start image as it was when the job was queued: the run folder it came from may move
    # (analyzed → approved) before a server takes the job, so the path alone is not enough.
    start_bytes: bytes | None = None
    watch: JobWatch = field(init=False)
    result: HistoryOutcome | None = None
    error: StageError | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.watch = JobWatch(self.prompt_id)

    def finish(self, result: HistoryOutcome | None = None, error: StageError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class Server:
    """One ComfyUI server: its client, live events, the jobs it holds and what it has loaded."""

    def __init__(self, client: ComfyClient, keeper: Keeper, *, depth: int = 2, name: str = "") -> None:
        self.client = client
        self.keeper = keeper
        self.depth = depth
        self.name = name or client.url
        self.held: dict[str, Ticket] = {}
        self.ledger = Ledger()  # loaded models, learned VRAM needs, backoff when short
        self.up = False
        self.down_since: float | None = None
        self.listener: Listener | None = None
        self.problem: str | None = None  # why it is down, for the runs waiting on it
        # Workflows that passed preflight here since the server (re)started.
        self.checked: set[str] = set()

    def running(self) -> Ticket | None:
        return next((t for t in self.held.values() if t.started_at), None)


def job_error(ticket: Ticket, outcome: HistoryOutcome) -> StageError:
    error = outcome.error
    where = f"node {getattr(error, 'node_id', '?')} ({getattr(error, 'node_type', '?')})"
    if outcome.outcome == "interrupted":
        return TransientError(f"ComfyUI job {ticket.prompt_id} was interrupted at {where}",
                              "Someone pressed Cancel in ComfyUI, or it was restarted; the job is made again.",
                              cause="JobInterrupted")
    message = getattr(error, "exception_message", "") or "no message"
    kind = getattr(error, "exception_type", "") or "error"
    if "OutOfMemory" in kind or "out of memory" in message.lower():
        return Unavailable(f"ComfyUI ran out of GPU memory in {ticket.workflow.name} at {where}: {message.strip()}",
                           "Tandava waits and tries again; close other GPU programs or lower the size in the workflow.",
                           cause="OutOfMemory", recheck_seconds=30.0)
    return TransientError(
        f"ComfyUI failed in {ticket.workflow.name} at {where}: {kind}: {message.strip()}",
        "It will be tried again; if it keeps failing, run `tandava doctor` and look at ComfyUI's log.",
        cause="ComfyExecutionError")
