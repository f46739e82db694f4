"""What a stage's work function gets from the engine and answers it (daemon.runs.engine runs them).

How this works: a ``Stage`` names its input state, the event it fires when it
finishes a run, the resource it needs and a work function. The function gets
a ``StageRun``: the run, its manifest, and ``done``/``report`` to record
finished steps durably and progress for the live view. It answers None when
the run is finished with the stage, ``Waiting`` when a person (or a server)
must act first, or ``Moved`` when it moved the run itself under its own lock.
Kept apart from the engine so the stages depend on this contract, not on the
engine's loop, pools and retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.runs.manifest import Manifest
from daemon.runs.progress import ProgressBoard, StepCount
from daemon.runs.states import Event, State
from daemon.runs.store import RunRef, RunStore

# The engine's logger: a stage's steps log as the engine always did.
log = structlog.get_logger("tandava.engine")

# A step that reports often (ffmpeg's progress) rewrites run.json at most this often.
PROGRESS_SAVE_SECONDS = 1.0


@dataclass(frozen=True)
class Waiting:
    """A work function's answer when the run cannot go on yet (a person must decide)."""

    reason: str
    recheck_seconds: float = 2.0
    # When a person can unblock it: a short phrase for a live view ("3 of 5 segments to approve").
    ask: str = ""


@dataclass(frozen=True)
class Moved:
    """A work function's answer when it moved the run itself (under a lock it held)."""

    ref: RunRef


Outcome = Waiting | Moved | None


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: where runs wait, what it does, what it fires.

    ``work`` returns None when the run is finished with this stage (the engine
    fires ``done``), ``Waiting`` to be looked at again later, or ``Moved``.
    """

    name: str
    input: State
    done: Event
    work: Callable[[StageRun], Outcome]
    resource: str = "cpu"


@dataclass
class StageRun:
    """What a work function gets: the run, its manifest, and a way to record progress."""

    stage: str
    ref: RunRef
    manifest: Manifest
    store: RunStore
    stop_event: threading.Event
    # Job ids this attempt has handed to a backend (``daemon.stages.jobs``): a job
    # started, then waited for, is one attempt, not two.
    started: set[str] = field(default_factory=set)
    log: Any = field(default=log)
    board: ProgressBoard | None = None
    _saved_at: float = field(default=0.0, repr=False)

    def is_done(self, step: str) -> bool:
        """Whether ``step`` finished in an earlier attempt (then skip it)."""
        return self.manifest.step_done(self.stage, step)

    def done(self, step: str, **detail: Any) -> None:
        """Record ``step`` as finished, durably, before doing anything else."""
        progress = self.manifest.progress(self.stage)
        if step not in progress.steps_done:
            progress.steps_done.append(step)
        progress.detail.update(detail)
        self.store.save(self.ref, self.manifest)
        self.log.info("stage.step_done", step=step)

    def report(self, step: str, done: float, total: float, *, unit: str = "", save: bool = False) -> None:
        """Record how far a counted step got (see ``daemon.runs.progress``).

        The live view sees it at once; ``run.json`` gets it with the next save,
        or now with ``save`` (at most every ``PROGRESS_SAVE_SECONDS``) for a
        step that saves nothing else while it works (the assembly).
        """
        count = StepCount(step, done, total, unit)
        self.manifest.progress(self.stage).detail["progress"] = count.to_json()
        if self.board is not None:
            self.board.report(self.ref.run_id, count)
        now = time.monotonic()
        if save and now - self._saved_at >= PROGRESS_SAVE_SECONDS:
            self._saved_at = now
            self.store.save(self.ref, self.manifest)
