"""Intake: what happens to a song the inbox watcher says has finished arriving.

The song's content hash decides whether it is new. A new song becomes a run in
``incoming/`` (the file moves into the run folder). A song whose content is
already a run is a duplicate: it is moved aside to ``<inbox>/duplicates/``,
never deleted, and the log names the run that already holds it. A file the
daemon cannot read still becomes a run, so the analysis stage can fail it with
a reason a person sees in ``failed/`` instead of a file silently stuck in the
inbox.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path

import structlog

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
            stat = path.stat()
        except FileNotFoundError:
            return None
        digest, id_digest = "", None
        try:
            digest = fsutil.sha256_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Unreadable (permissions, a locked file): name the run by what we
            # can see, and let the analysis stage explain the problem.
            id_digest = hashlib.sha256(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
            log.warning("intake.unreadable", file=path.name, error=str(exc))
        if digest:
            existing = self.store.find_by_hash(digest)
            if existing is not None:
                self._move_aside(path, existing)
                return None
        ref = self.store.create(path, digest, id_digest=id_digest, extras=extras)
        log.info("run.created", run_id=ref.run_id, stage="intake", file=path.name, size=stat.st_size, sha256=digest[:16])
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
