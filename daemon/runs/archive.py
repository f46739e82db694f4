"""Forgetting runs: moving them out of the state directories, into ``<state root>/archive/``.

How this works: a run a person no longer wants to see (a failed song, a
folder that is not a run, a finished video they have kept elsewhere) is moved
whole, with one rename, into ``archive/`` beside the state directories. The
engine, the panel and ``status`` list state directories only, so an archived
run is gone from every view; its song and everything made for it are still
on disk, and moving the folder back into a state directory brings it back.
Only ``delete=True`` (the CLI's ``--delete``) removes a run for good, song
included: a person's song is never deleted on the daemon's own initiative.

Runs being worked on (a stage may be writing into them) are refused; a run
waiting for a person, a finished or failed run, and a folder that cannot be
read as a run can be forgotten.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from daemon.errors import StoreError
from daemon.runs import fsutil
from daemon.runs.manifest import StateChange
from daemon.runs.states import State
from daemon.runs.store import RunRef, RunStore

ARCHIVE_DIR = "archive"
# States whose runs no stage is writing into: what a person may forget.
RESTING: frozenset[State] = frozenset({State.FAILED, State.RENDERED, State.PENDING_APPROVAL})


@dataclass(frozen=True)
class Forgotten:
    """A run that was archived (``to`` its new folder) or deleted (``to`` is None)."""

    run_id: str
    state: State
    to: Path | None
    bytes: int


def archive_dir(store: RunStore) -> Path:
    return store.root / ARCHIVE_DIR


def refusal(store: RunStore, ref: RunRef) -> str | None:
    """Why ``ref`` cannot be forgotten now, or None when it can."""
    if ref.state in RESTING:
        return None
    try:
        store.load(ref)
    except StoreError:
        return None  # not a run, or a damaged one: no stage works on it
    return (f"{ref.run_id} is being worked on (in {ref.state.value}/); forget it once it "
            "waits for you, fails or is finished")


def forget(store: RunStore, ref: RunRef, *, delete: bool = False) -> Forgotten:
    """Archive the run (or, with ``delete``, remove it, song included); raises StoreError when refused."""
    reason = refusal(store, ref)
    if reason is not None:
        raise StoreError(reason)
    size = tree_size(ref.path)
    if delete:
        try:
            shutil.rmtree(ref.path)
        except OSError as exc:
            raise StoreError(f"cannot delete {ref.path}: {exc}") from exc
        return Forgotten(ref.run_id, ref.state, None, size)
    _note(store, ref)
    folder = archive_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    dest = fsutil.free_name(folder, ref.run_id)
    try:
        os.replace(ref.path, dest)
    except OSError as exc:
        raise StoreError(f"cannot move {ref.run_id} to {ARCHIVE_DIR}/: {exc}") from exc
    fsutil.fsync_dir(folder)
    fsutil.fsync_dir(ref.path.parent)
    return Forgotten(ref.run_id, ref.state, dest, size)


def _note(store: RunStore, ref: RunRef) -> None:
    """Record the archiving in the run's history, when it has a readable one."""
    try:
        manifest = store.load(ref)
    except StoreError:
        return
    manifest.history.append(StateChange(state=ref.state, at=store.clock(),
                                        note=f"forgotten: moved to {ARCHIVE_DIR}/"))
    store.save(ref, manifest)


def failed_runs(store: RunStore, *, older_than: timedelta = timedelta(0),
                now: datetime | None = None) -> list[RunRef]:
    """Failed runs whose last failure is older than ``older_than`` (all of them by default)."""
    now = now or store.clock()
    chosen = []
    for ref in store.iter_runs([State.FAILED]):
        try:
            error = store.load(ref).last_error
            at = error.at if error is not None else None
        except StoreError:
            at = None
        if at is None:  # no readable failure time: the folder's own
            try:
                at = datetime.fromtimestamp(ref.path.stat().st_mtime, tz=now.tzinfo)
            except OSError:
                continue
        if now - at >= older_than:
            chosen.append(ref)
    return chosen


def parse_age(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m`` or a number of days; raises ValueError with the accepted forms."""
    units = {"d": "days", "h": "hours", "m": "minutes", "w": "weeks"}
    value = text.strip().lower()
    unit = units.get(value[-1:], "")
    number = value[:-1] if unit else value
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not an age: write 7d, 12h, 30m or 2w") from None
    if amount < 0:
        raise ValueError(f"{text!r} is negative: an age is 0 or more")
    return timedelta(**{unit or "days": amount})


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed; unreadable parts count as 0)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def human_bytes(size: float) -> str:
    """``812 B``, ``3.4 MB``, ``1.2 GB``."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} TB"
