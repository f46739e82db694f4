"""How far each run has got, as the engine knows it: counts in memory, the stage's progress on disk.

How this works: a stage reports each step it counts (``StepCount``: candidates
23/82, clips 12/41, assembly 153.2/240.0 s of video) through
``StageRun.report``. The count goes to two places. In memory, to the
engine's ``ProgressBoard``, which a live view in the same process reads up to
four times a second without touching the disk. On disk, into the stage's
``detail["progress"]`` in ``run.json`` (``StepCount.to_json``), written with
the manifest's next save, so ``tandava status``, the panel, the API and a
``status --watch`` in another process see the same figure a moment later.

The board also keeps what the engine learns as runs move: which state and
stage each run is in, what it waits for, and which runs finished (rendered
or failed) since the board was made. It holds no paths and does no I/O; one
lock guards it, and readers get copies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

# A run in these states has left the pipeline: its row leaves the board.
FINISHED_STATES = frozenset({"rendered", "failed"})
# Finished runs remembered by id (a daemon runs for months; the count is kept apart).
FINISHED_KEPT = 100


@dataclass(frozen=True)
class StepCount:
    """How far one counted step of a stage got: ``done`` of ``total`` (items, or seconds when ``unit`` is "s")."""

    step: str
    done: float
    total: float
    unit: str = ""

    @property
    def fraction(self) -> float:
        """0..1; a step with nothing to do is complete."""
        if self.total <= 0:
            return 1.0
        return min(1.0, max(0.0, self.done / self.total))

    def label(self) -> str:
        """``clips 12/41`` for counts, ``assembly 64 %`` for a measured quantity."""
        if self.unit:
            return f"{self.step} {self.fraction * 100:.0f} %"
        return f"{self.step} {int(self.done)}/{int(self.total)}"

    def to_json(self) -> dict[str, Any]:
        """What ``run.json`` keeps under the stage's ``detail["progress"]``."""
        return {"step": self.step, "done": round(self.done, 3), "total": round(self.total, 3),
                "unit": self.unit, "fraction": round(self.fraction, 4)}

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> StepCount | None:
        """The count recorded in a stage's detail, or None (absent, or written by hand and broken)."""
        raw = detail.get("progress")
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(str(raw["step"]), float(raw["done"]), float(raw["total"]), str(raw.get("unit") or ""))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class RunProgress:
    """One run as the engine sees it now."""

    run_id: str
    song: str
    state: str
    stage: str = ""  # empty: queued for its next stage
    count: StepCount | None = None
    waiting: str = ""
    # A short phrase for a person when the run waits for one ("3 of 5 segments to approve").
    ask: str = ""


class ProgressBoard:
    """Runs in the pipeline and what finished, kept by the engine and read by a live view."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._runs: dict[str, RunProgress] = {}
        self._finished: deque[tuple[str, str]] = deque(maxlen=FINISHED_KEPT)
        self.finished_count = 0
        self._lock = threading.Lock()
        # Bumped on every change: a reader can tell that nothing moved.
        self.version = 0

    def begin(self, run_id: str, song: str, state: str, stage: str, count: StepCount | None = None) -> None:
        """A stage starts (or looks again at) a run; a waiting reason of the same stage is kept.

        Until the stage counts something itself, the run shows the last count
        it had (``candidates 82/82`` while it is offered): what is done stays said.
        """
        with self._lock:
            old = self._runs.get(run_id)
            same = old is not None and old.stage == stage and old.state == state
            self._runs[run_id] = RunProgress(
                run_id, song, state, stage,
                count if count is not None else (old.count if old else None),
                old.waiting if same and old else "", old.ask if same and old else "",
            )
            self.version += 1

    def report(self, run_id: str, count: StepCount) -> None:
        """A counted step moved on."""
        with self._lock:
            old = self._runs.get(run_id)
            if old is None:
                return
            self._runs[run_id] = replace(old, count=count, waiting="", ask="")
            self.version += 1

    def wait(self, run_id: str, reason: str, ask: str = "") -> None:
        """The run cannot go on yet: why, and what a person could do."""
        with self._lock:
            old = self._runs.get(run_id)
            if old is None or (old.waiting == reason and old.ask == ask):
                return
            self._runs[run_id] = replace(old, waiting=reason, ask=ask)
            self.version += 1

    def moved(self, run_id: str, state: str) -> None:
        """The run moved to ``state``: queued there, or gone from the board when it finished."""
        with self._lock:
            old = self._runs.pop(run_id, None)
            if state in FINISHED_STATES:
                self._finished.append((run_id, state))
                self.finished_count += 1
            elif old is not None:
                self._runs[run_id] = RunProgress(run_id, old.song, state, count=old.count)
            self.version += 1

    def runs(self) -> list[RunProgress]:
        """The runs on the board, oldest id first (ids start with their arrival time)."""
        with self._lock:
            return [self._runs[k] for k in sorted(self._runs)]

    def finished(self) -> list[tuple[str, str]]:
        """(run id, "rendered" or "failed") of the last runs that finished (``finished_count``: all of them)."""
        with self._lock:
            return list(self._finished)

    def as_json(self) -> dict[str, dict[str, Any]]:
        """The board for the health file: per run, its stage, count and waiting reason."""
        return {
            r.run_id: {"state": r.state, "stage": r.stage, "waiting": r.waiting, "ask": r.ask,
                       **({"progress": r.count.to_json()} if r.count is not None else {})}
            for r in self.runs()
        }
