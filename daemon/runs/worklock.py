"""Who is working on a run right now: a daemon's stage or a person's command.

How this works: one lock file per run, ``.locks/<run_id>.work`` under the
state root, held with the operating system's lock (daemon.runs.oslock), so a
process that dies (``kill -9``, a crash) drops it without leaving anything to
clean up. The engine holds it around every stage it runs on a run; a command
that rewrites a run's plan (``tandava retry RUN --tempo``) holds it for its
edit. Nobody waits for it: the engine leaves a run it cannot take for the next
tick, and a command refuses, naming who holds the run (the lock file's note).

Without it, a stage that loaded a run's records before a command rewrote them
would save the old records back over the new ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from daemon.errors import StoreError
from daemon.runs import oslock

LOCKS_DIR = ".locks"
_SUFFIX = ".work"


def lock_path(state_root: Path, run_id: str) -> Path:
    """The run's work lock file."""
    return state_root / LOCKS_DIR / f"{run_id}{_SUFFIX}"


@contextlib.contextmanager
def working_on(state_root: Path, run_id: str, who: str) -> Iterator[bool]:
    """Hold the run's work lock for the block; yields False (and holds nothing) if another has it.

    ``who`` is written into the file for the person an error names it to.
    Raises StoreError when the lock file cannot be opened at all.
    """
    path = lock_path(state_root, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        held = oslock.try_lock(path, note=who)
    except OSError as exc:  # the state root's share blinked: the caller's store-error path
        raise StoreError(f"cannot take the work lock of {run_id} ({path}): {exc}") from exc
    if held is None:
        yield False
        return
    try:
        yield True
    finally:
        held.release()


def holder(state_root: Path, run_id: str) -> str:
    """Who holds the run's work lock, as its holder described itself ("" if unknown)."""
    return oslock.read_note(lock_path(state_root, run_id))
