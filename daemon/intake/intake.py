"""Intake: what happens to a song the inbox watcher says has finished arriving.

The song's content hash decides whether it is new. A new song becomes a run in
``incoming/`` (the file moves into the run folder). A song whose content is
already a run is a duplicate: it is moved aside to ``<inbox>/duplicates/``,
never deleted, and the log names the run that already holds it. A file the
daemon cannot read still becomes a run, so the analysis stage can fail it with
a reason a person sees in ``failed/`` instead of a file silently stuck in the
inbox.

A file that is still growing is never moved: its size and mtime are taken
before and after hashing, and a change in between raises ``StillChanging``
(the watcher waits for it again). Only regular files are taken; a symbolic
link is refused without being followed, so a link to ``/etc/passwd`` is never
read, hashed or moved.
"""

from __future__ import annotations

import hashlib
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

import structlog

from daemon.errors import StoreError
from daemon.intake.files import StillChanging, refusal
from daemon.runs import fsutil
from daemon.runs.store import RunRef, RunStore

log = structlog.get_logger("tandava.intake")

DUPLICATES_DIR = "duplicates"


class Intake:
    """Turns finished arrivals into runs; one call at a time."""

    def __init__(self, store: RunStore, inbox: Path) -> None:
        self.store = store
        self.inbox = inbox
        # The watcher calls serially, but `tandava run --once` and the watcher
        # thread may both reach here during start-up.
        self._lock = threading.Lock()

    def take(self, path: Path) -> None:
        """The watcher's callback: like ``accept``, without a result."""
        self.accept(path)

    def accept(self, path: Path, *, extras: Mapping[str, Path] | None = None) -> RunRef | None:
        """Take ``path`` into the store; returns the new run, or None for a duplicate or a vanished file.

        ``extras`` (the HTTP API's options and photos) go into the run folder with the song.
        """
        with self._lock:
            return self._accept(path, extras)

    def _accept(self, path: Path, extras: Mapping[str, Path] | None = None) -> RunRef | None:
        try:
            before = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(before.st_mode):
            log.warning("intake.refused", file=path.name, reason=refusal(path, before))
            return None
        digest, id_digest = "", None
        try:
            digest = fsutil.sha256_file(path)
            after = path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Unreadable (permissions, a locked file): name the run by what we
            # can see, and let the analysis stage explain the problem.
            after = before
            id_digest = hashlib.sha256(f"{path.name}|{before.st_size}|{before.st_mtime_ns}".encode()).hexdigest()
            log.warning("intake.unreadable", file=path.name, error=str(exc))
        # The inode too: a file swapped for a link (or another file) while we read is not what we read.
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            raise StillChanging(f"{path.name} changed while it was being read")
        if digest:
            existing = self.store.find_by_hash(digest)
            if existing is not None:
                self._move_aside(path, existing)
                return None
        try:
            ref = self.store.create(path, digest, id_digest=id_digest, extras=extras)
        except StoreError as exc:
            if isinstance(exc.__cause__, fsutil.FileChangedError):  # copied across disks while written
                raise StillChanging(str(exc.__cause__)) from exc
            raise
        log.info("run.created", run_id=ref.run_id, stage="intake", file=path.name, size=before.st_size, sha256=digest[:16])
        return ref

    def _move_aside(self, path: Path, existing: RunRef) -> None:
        folder = self.inbox / DUPLICATES_DIR
        folder.mkdir(exist_ok=True)
        dest = fsutil.free_name(folder, path.name)
        fsutil.move_file(path, dest)
        log.warning(
            "intake.duplicate",
            file=path.name,
            moved_to=str(dest),
            run_id=existing.run_id,
            state=existing.state.value,
        )
