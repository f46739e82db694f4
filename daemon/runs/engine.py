"""The stage engine: runs each stage for the runs waiting in its input state.

How this works: a ``Stage`` names its input state, the event it fires when it
finishes a run, the resource it needs (``cpu`` now; one GPU queue per ComfyUI
backend later) and a work function. Every tick the engine lists each stage's
input directory and hands runs that are not already in flight to a bounded
thread pool for that resource. The directory listing *is* the queue: a run
that a restart, a person (``tandava retry``) or another stage puts there is
picked up on the next tick with no other bookkeeping.

A work function records each finished step in the manifest (``StageRun.done``)
and skips steps already done, so a run interrupted by a crash resumes where it
stopped and nothing finished is redone. ``TransientError`` (and ``OSError``: a
share that went away, a full disk) is retried with exponential backoff and
jitter; ``PermanentError``, or a transient one that outlived its attempts,
moves the run to failed/ with ``error.json``.

Every outcome closes the stage: finished (the engine moved the run, or the
stage moved it itself and answered ``Moved``) or failed (``RunStore.fail``),
and what it waited for is dropped (``StageProgress.end``), so ``status``,
``show`` and the panel never show an ended stage as waiting.

A folder that is not a run (no ``run.json``) or whose manifest is damaged is
named once, in words that say how to fix it, and then left alone until its
``run.json`` changes (``_broken``): no warning every few seconds for months.

Stopping: ``run(stop_event)`` returns once the stop event is set and the work
in flight has finished (a warm stop); queued work that has not started is
dropped and simply found again in its input directory on the next start.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog
import tenacity

from daemon.errors import (
    RUN_PLACEHOLDER,
    PermanentError,
    StageError,
    StoreError,
    TransientError,
    Unavailable,
)
from daemon.runs import worklock
from daemon.runs.progress import ProgressBoard, StepCount
from daemon.runs.stage import Moved, Outcome, Stage, StageRun, Waiting
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore

# The stage contract lives in daemon.runs.stage; these names stay importable from here.
__all__ = ["Engine", "Moved", "Outcome", "Stage", "StageRun", "Waiting"]

log = structlog.get_logger("tandava.engine")

# After a store error (a folder that vanished, a share that blinked), how long
# a run is left alone before the engine looks at it again.
STORE_ERROR_PAUSE_SECONDS = 5.0
# A run's work lock (daemon.runs.worklock): tries, this far apart (s), before
# leaving the run to the next tick.
_LOCK_TRIES, _LOCK_WAIT = 20, 0.05


class Engine:
    """Feeds runs to stages with bounded concurrency per resource."""

    def __init__(
        self,
        store: RunStore,
        stages: list[Stage],
        *,
        workers: dict[str, int] | None = None,
        attempts: int = 5,
        backoff_initial: float = 2.0,
        backoff_max: float = 300.0,
        store_error_pause: float = STORE_ERROR_PAUSE_SECONDS,
        tick_seconds: float = 0.5,
        board: ProgressBoard | None = None,
    ) -> None:
        self.store = store
        # What a live view shows, kept as runs move (no disk read per refresh).
        self.board = board if board is not None else ProgressBoard()
        self.stages = stages
        self.attempts = attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.tick_seconds = tick_seconds
        self.store_error_pause = store_error_pause
        workers = workers or {}
        self._pools = {
            resource: ThreadPoolExecutor(
                max_workers=workers.get(resource, 1), thread_name_prefix=f"tandava-{resource}"
            )
            for resource in {stage.resource for stage in stages}
        }
        self._in_flight: dict[str, Future[None]] = {}
        # Runs that answered Waiting are not looked at again before this time.
        self._not_before: dict[str, float] = {}
        # Folders that cannot be read as runs, by the stamp of their run.json when
        # they were named: they are looked at again only once that changes.
        self._broken: dict[str, _Stamp] = {}
        # The last store error logged per readable run, so a repeat is not logged again.
        self._store_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- the loop ---------------------------------------------------------------

    def run(self, stop_event: threading.Event, *, once: bool = False,
            on_tick: Callable[[], None] | None = None) -> None:
        """Tick until ``stop_event`` is set (or, with ``once``, until nothing is left to do).

        ``on_tick`` runs on this loop after every tick: the heartbeat of a
        service manager's watchdog comes from here, so a stuck loop stops it.
        """
        self._stop = stop_event
        try:
            while not stop_event.is_set():
                # Idle means: nothing was in flight when this tick began (so no
                # worker could move a run past the listing) and the tick found
                # nothing to start.
                was_busy = self.busy()
                submitted = self.tick()
                if on_tick is not None:
                    on_tick()
                if once and not submitted and not was_busy:
                    return
                stop_event.wait(self.tick_seconds)
        finally:
            self.shutdown()

    def tick(self) -> int:
        """Hand every waiting run that is not in flight to its stage; returns how many."""
        submitted = 0
        self._reap()
        now = time.monotonic()
        seen: set[str] = set()
        for stage in self.stages:
            for ref in self.store.iter_runs([stage.input]):
                seen.add(ref.run_id)
                with self._lock:
                    broken = self._broken.get(ref.run_id)
                if broken is not None and broken == _stamp(ref):
                    continue
                with self._lock:
                    if ref.run_id in self._in_flight or self._stop.is_set():
                        continue
                    if self._not_before.get(ref.run_id, 0.0) > now:
                        continue
                    self._broken.pop(ref.run_id, None)
                    self._in_flight[ref.run_id] = self._pools[stage.resource].submit(
                        self._process, stage, ref
                    )
                submitted += 1
        self._forget_gone(seen)
        return submitted

    def _forget_gone(self, seen: set[str]) -> None:
        """Drop what the engine remembers about runs no stage will see again (failed,
        rendered, archived, deleted by hand), so a daemon running for months does not
        keep an entry for every run it ever paused."""
        with self._lock:
            for run_id in [r for r in self._not_before if r not in seen and r not in self._in_flight]:
                del self._not_before[run_id]
            for run_id in [r for r in self._broken if r not in seen]:
                del self._broken[run_id]
            for run_id in [r for r in self._store_errors if r not in seen]:
                del self._store_errors[run_id]

    def busy(self) -> bool:
        """Whether any run is being worked on."""
        self._reap()
        with self._lock:
            return bool(self._in_flight)

    def waiting(self) -> list[str]:
        """Run ids that answered Waiting (a person has to act before they go on)."""
        with self._lock:
            return list(self._not_before)

    def in_flight(self) -> list[str]:
        """Run ids being worked on now; a run only re-checked while it waits (for a person,
        a server) is not being worked on."""
        self._reap()
        with self._lock:
            return [r for r in self._in_flight if r not in self._not_before]

    def shutdown(self, *, wait: bool = True) -> None:
        """Let work in flight finish (``wait``) and drop what has not started."""
        for pool in self._pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)

    def _reap(self) -> None:
        with self._lock:
            for run_id, future in list(self._in_flight.items()):
                if future.done():
                    del self._in_flight[run_id]

    # -- one run through one stage ----------------------------------------------

    def _process(self, stage: Stage, ref: RunRef) -> None:
        who = f"the daemon's {stage.name} stage (pid {os.getpid()})"
        with structlog.contextvars.bound_contextvars(run_id=ref.run_id, stage=stage.name):
            # A stage chained from the one before starts while that one is
            # still returning through its lock: a short wait covers it. A
            # person's command (retry --tempo) holds it longer: the next tick.
            try:
                for _ in range(_LOCK_TRIES):
                    with worklock.working_on(self.store.root, ref.run_id, who) as mine:
                        if mine:
                            self._guarded(stage, ref)
                            return
                    self._stop.wait(_LOCK_WAIT)
            except StoreError as exc:
                self._store_error(ref, exc)
                return
            log.info("run.busy", holder=worklock.holder(self.store.root, ref.run_id))

    def _guarded(self, stage: Stage, ref: RunRef) -> None:
        try:
            self._attempt_stage(stage, ref)
        except StoreError as exc:
            self._store_error(ref, exc)
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("stage.crashed")
            self._fail(stage, ref, PermanentError(
                f"Tandava hit an internal error in {stage.name}: {exc!r}",
                "This is a bug; please report it with the log. "
                f"Then run `tandava retry {ref.run_id}`.",
                cause="InternalError",
            ))

    def _close_moved(self, stage: Stage, ref: RunRef) -> None:
        """Close a stage that moved the run itself (the approval gate, under its lock).

        It saved the manifest where the run went; the stage is closed in that
        copy (ours is older), before the run's next stage can look at it.
        """
        moved = self.store.load(ref)
        moved.progress(stage.name).end(self.store.clock())
        self.store.save(ref, moved)

    def _store_error(self, ref: RunRef, exc: StoreError) -> None:
        """A run that cannot be read: moved under us (look again soon), or broken (say so once)."""
        stamp = _stamp(ref)
        if stamp[0] is None:
            # The folder went (a person ran retry or forget, a share blinked):
            # look again later, without a warning every tick.
            with self._lock:
                self._not_before[ref.run_id] = time.monotonic() + self.store_error_pause
            log.info("stage.run_gone", error=str(exc), retry_in=self.store_error_pause)
            return
        try:
            self.store.load(ref)
        except StoreError as unreadable:
            with self._lock:
                self._broken[ref.run_id] = stamp
            log.warning("run.broken", path=str(ref.path), problem=self.store.problem_of(ref, unreadable))
            return
        # A readable run that cannot move on (a folder of its name is in the way):
        # tried again every few seconds, its reason logged once until it changes.
        with self._lock:
            self._not_before[ref.run_id] = time.monotonic() + self.store_error_pause
            repeated = self._store_errors.get(ref.run_id) == str(exc)
            self._store_errors[ref.run_id] = str(exc)
        if not repeated:
            log.warning("stage.store_error", error=str(exc), retry_in=self.store_error_pause)

    def _attempt_stage(self, stage: Stage, ref: RunRef) -> None:
        manifest = self.store.load(ref)
        progress = manifest.progress(stage.name)
        failures_before = int(progress.detail.get("transient_failures", 0))
        with self._lock:
            rechecking = ref.run_id in self._not_before
        if not rechecking:
            # A run re-checked while it waits for a person is not a new attempt,
            # and must not rewrite its manifest every few seconds for months.
            if progress.started_at is None:
                progress.started_at = self.store.clock()
            progress.attempts += 1
            self.store.save(ref, manifest)
            log.info("stage.started", attempt=progress.attempts)
        self.board.begin(ref.run_id, manifest.song.original_name, ref.state.value, stage.name,
                         StepCount.from_detail(progress.detail))

        def note_failure(retry_state: tenacity.RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            progress.detail["transient_failures"] = failures_before + retry_state.attempt_number
            self.store.save(ref, manifest)
            log.warning("stage.retrying", error=str(exc), attempt=retry_state.attempt_number)

        work = StageRun(stage.name, ref, manifest, self.store, self._stop, board=self.board)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((TransientError, OSError))
            & tenacity.retry_if_not_exception_type(Unavailable),
            stop=tenacity.stop_after_attempt(max(1, self.attempts - failures_before))
            | tenacity.stop_when_event_set(self._stop),
            wait=tenacity.wait_exponential_jitter(
                initial=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
            ),
            sleep=self._sleep,
            before_sleep=note_failure,
            reraise=True,
        )
        try:
            outcome = retrying(stage.work, work)
        except Unavailable as exc:
            # A backend outage parks the run without using an attempt: the
            # run waits for the GPU server as long as the server is away.
            outcome = Waiting(exc.reason, exc.recheck_seconds)
        except (TransientError, OSError) as exc:
            if self._stop.is_set():
                log.info("stage.interrupted", error=str(exc))
                return
            self._fail(stage, ref, _as_stage_error(exc, ref.run_id), attempt=progress.attempts)
            return
        except StageError as exc:
            self._fail(stage, ref, exc, attempt=progress.attempts)
            return
        if isinstance(outcome, Moved):
            self._close_moved(stage, outcome.ref)
        if isinstance(outcome, Waiting):
            with self._lock:
                self._not_before[ref.run_id] = time.monotonic() + outcome.recheck_seconds
            self.board.wait(ref.run_id, outcome.reason, outcome.ask)
            if progress.detail.get("waiting") != outcome.reason:
                progress.detail["waiting"] = outcome.reason
                self.store.save(ref, manifest)
                log.info("stage.waiting", reason=outcome.reason)
            return
        with self._lock:
            self._not_before.pop(ref.run_id, None)
        if isinstance(outcome, Moved):
            self.board.moved(ref.run_id, outcome.ref.state.value)
            log.info("run.moved", to=outcome.ref.state.value)
            self._chain(outcome.ref)
            return
        progress.finished_at = self.store.clock()
        progress.detail.pop("transient_failures", None)
        progress.detail.pop("waiting", None)
        self.store.save(ref, manifest)
        new_ref = self.store.move(ref, stage.done, note=f"{stage.name} finished")
        self.board.moved(ref.run_id, new_ref.state.value)
        log.info("run.moved", to=new_ref.state.value, seconds=_elapsed(progress.started_at, progress.finished_at))
        self._chain(new_ref)

    def _chain(self, ref: RunRef) -> None:
        """Hand a run that just moved to its next stage now, not at the next tick.

        The next stage is queued on its resource's pool from this worker, so a
        GPU that just made the last image of a run gets its first clip without
        waiting for the loop's tick (which would leave it idle up to a tick).
        """
        stage = next((s for s in self.stages if s.input is ref.state), None)
        if stage is None or self._stop.is_set():
            return
        with self._lock:
            self._not_before.pop(ref.run_id, None)
            try:
                self._in_flight[ref.run_id] = self._pools[stage.resource].submit(self._process, stage, ref)
            except RuntimeError:  # the pools are shutting down: the next start picks the run up
                self._in_flight.pop(ref.run_id, None)

    def _sleep(self, seconds: float) -> None:
        # Backoff sleeps end early on stop, so a draining daemon never waits minutes.
        self._stop.wait(seconds)

    def _fail(self, stage: Stage, ref: RunRef, error: StageError, *, attempt: int = 0) -> None:
        error.hint = error.hint.replace(RUN_PLACEHOLDER, ref.run_id)
        try:
            ref = self.store.refresh(ref)
            if ref.state is State.FAILED:
                return
            self.store.fail(ref, stage.name, error, attempt=attempt)
            self.board.moved(ref.run_id, State.FAILED.value)
        except StoreError as exc:
            log.error("stage.cannot_record_failure", error=str(exc), reason=error.reason)
            return
        log.error("run.failed", cause=error.cause, reason=error.reason, hint=error.hint)


# What a run folder looked like when it was found broken: whether it exists,
# and the (mtime, size, inode) of its run.json (None: there is none).
_Stamp = tuple[object, ...]


def _stamp(ref: RunRef) -> _Stamp:
    if not ref.path.is_dir():
        return (None,)
    try:
        st = ref.manifest_path.stat()
    except OSError:
        return (True, None)
    return (True, st.st_mtime_ns, st.st_size, st.st_ino)


def _as_stage_error(exc: BaseException, run_id: str) -> StageError:
    if isinstance(exc, StageError):
        return exc
    return TransientError(
        f"a file operation kept failing: {exc}",
        "Check that the disk is not full and the share is reachable, "
        f"then run `tandava retry {run_id}`.",
        cause=type(exc).__name__,
    )


def _elapsed(start: Any, end: Any) -> float | None:
    try:
        return round((end - start).total_seconds(), 3)
    except (TypeError, AttributeError):
        return None
