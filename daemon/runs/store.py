"""The run store: run folders under the state root, moved between state directories.

How this works: the state root holds one directory per ``State``. A run is a
folder inside exactly one of them; moving a run is one ``os.replace`` of the
whole folder, so a crash leaves it either where it was or where it went. The
manifest inside is rewritten atomically after the move; if a crash falls
between the two, ``reconcile`` notices the manifest disagrees with the
directory and trusts the directory.

A song enters through ``create``: its manifest and audio are assembled in a
hidden ``.ingest-<run_id>`` folder and the folder is renamed into
``incoming/`` when whole. ``reconcile`` finishes or unwinds any ingest a crash
interrupted without ever deleting the only copy of a person's file.

One daemon owns a state root at a time (``lock``): two processes renaming the
same folders would race, and one rotating log file per process depends on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from daemon.errors import RunNotFound, StageError, StoreError, StoreLocked
from daemon.runs import fsutil, oslock
from daemon.runs.manifest import (
    ERROR_FILE,
    MANIFEST,
    SCHEMA_VERSION,
    ErrorRecord,
    Manifest,
    Song,
    StateChange,
    hash8_of,
    new_run_id,
    utcnow,
)
from daemon.runs.states import Event, State, next_state

INGEST_PREFIX = ".ingest-"
# The manifest as it was before its last rewrite (see ``RunStore.save``).
MANIFEST_BACKUP = MANIFEST + ".bak"
LOCK_FILE = ".tandava.lock"


@dataclass(frozen=True)
class RunRef:
    """Where a run is right now: its id, state and folder."""

    run_id: str
    state: State
    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST


def _close_resting_stages(manifest: Manifest, state: State) -> bool:
    """Close stages a finished or failed run still shows open (written before every outcome
    closed its stage): a rendered run waits for nobody. Returns whether anything changed."""
    if state not in (State.RENDERED, State.FAILED):
        return False
    error = manifest.last_error
    changed = False
    for name, progress in manifest.stages.items():
        if not progress.is_open or progress.started_at is None:
            continue
        failed = state is State.FAILED and error is not None and error.stage == name
        progress.end(error.at if failed and error is not None else manifest.updated_at, failed=failed)
        changed = True
    return changed


def _short(exc: BaseException) -> str:
    """An exception's message without pydantic's multi-line detail (a log line stays one line)."""
    if isinstance(exc, ValidationError):
        return f"{exc.error_count()} invalid field(s), first: {exc.errors()[0].get('msg', '')}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class RunStore:
    """Run folders under ``root``; every method is safe to interrupt at any instant."""

    def __init__(self, root: Path, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.root = root
        self.clock = clock

    # -- layout ---------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Create the state directories (idempotent)."""
        try:
            for state in State:
                self.dir_for(state).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the state directories under {self.root}: {exc}") from exc

    def dir_for(self, state: State) -> Path:
        return self.root / state.value

    def iter_runs(self, states: Iterable[State] | None = None) -> Iterator[RunRef]:
        """Runs in the given states (all by default), oldest first within each state."""
        for state in states if states is not None else State:
            folder = self.dir_for(state)
            try:
                # A symlinked folder is not a run: following it would move, render or
                # delete whatever it points at.
                names = sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith("."):
                    yield RunRef(name, state, folder / name)

    def find(self, run_id: str) -> RunRef:
        """The run whose id is ``run_id``, starts with it, or (failing both) contains it once.

        A person types what they remember: the start of the id, or a word of
        the song's name.
        """
        refs = list(self.iter_runs())
        for ref in refs:
            if ref.run_id == run_id:
                return ref
        matches = [ref for ref in refs if ref.run_id.startswith(run_id)]
        if not matches:
            matches = [ref for ref in refs if run_id.lower() in ref.run_id.lower()]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RunNotFound(f"no run matches {run_id!r}")
        raise RunNotFound(f"{run_id!r} matches {len(matches)} runs; give more of the id")

    def refresh(self, ref: RunRef) -> RunRef:
        """Where ``ref``'s run is now (another process, e.g. the CLI, may have moved it)."""
        if ref.path.is_dir():
            return ref
        return self.find(ref.run_id)

    # -- manifests ------------------------------------------------------------

    def load(self, ref: RunRef) -> Manifest:
        """Read a run's manifest; a newer schema or a damaged file is a StoreError."""
        try:
            manifest = Manifest.model_validate_json(ref.manifest_path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            raise StoreError(f"cannot read {ref.manifest_path}: {_short(exc)}") from exc
        if manifest.schema_version > SCHEMA_VERSION:
            raise StoreError(
                f"{ref.manifest_path} has schema {manifest.schema_version}; "
                f"this Tandava reads up to {SCHEMA_VERSION}"
            )
        return manifest

    def save(self, ref: RunRef, manifest: Manifest) -> None:
        """Atomically rewrite a run's manifest, keeping the previous one as ``run.json.bak``.

        The previous file was written (whole) by this method, so the backup is
        always a manifest that read back: the way back from a damaged run.json.
        """
        manifest.updated_at = self.clock()
        fsutil.keep_previous(ref.manifest_path, ref.path / MANIFEST_BACKUP)
        fsutil.atomic_write_text(ref.manifest_path, manifest.model_dump_json(indent=2) + "\n")

    def problem_of(self, ref: RunRef, exc: StoreError | None = None) -> str:
        """Why a run folder cannot be read, and what a person does about it (one sentence each)."""
        forget = f"`tandava forget {ref.run_id}`"
        if not ref.manifest_path.is_file():
            return (f"{ref.path} is not a Tandava run: no run.json. Move it out of "
                    f"{ref.state.value}/, or archive it with {forget}.")
        if exc is not None and "schema" in str(exc):
            return f"{exc}: upgrade Tandava, or archive the run with {forget}."
        backup = "restore it from run.json.bak" if (ref.path / MANIFEST_BACKUP).is_file() else "restore it"
        return f"{ref.manifest_path} is damaged: {backup} or {forget}."

    # -- moves ----------------------------------------------------------------

    def move(self, ref: RunRef, event: Event, *, note: str = "") -> RunRef:
        """Apply ``event``: one atomic folder rename, then the manifest records it."""
        manifest = self.load(ref)
        target = next_state(ref.state, event, failed_from=manifest.failed_from)
        new_ref = self._rename(ref, target)
        manifest.state = target
        manifest.history.append(StateChange(state=target, at=self.clock(), note=note or event.value))
        if event is Event.RETRY:
            manifest.failed_from = None
        self.save(new_ref, manifest)
        return new_ref

    def fail(self, ref: RunRef, stage: str, error: StageError, *, attempt: int = 0) -> RunRef:
        """Record ``error`` (manifest and ``error.json``) and move the run to failed/."""
        manifest = self.load(ref)
        record = ErrorRecord(
            stage=stage,
            cause=error.cause,
            reason=error.reason,
            hint=error.hint,
            at=self.clock(),
            attempt=attempt,
            retryable=error.retryable,
        )
        manifest.errors.append(record)
        manifest.failed_from = ref.state
        manifest.progress(stage).end(record.at, failed=True)
        self.save(ref, manifest)
        error_doc = record.model_dump(mode="json") | {
            "run_id": ref.run_id,
            "failed_in": ref.state.value,
            "retry": f"tandava retry {ref.run_id}",
        }
        figures = getattr(error, "figures", None)
        if figures:  # QC measurements: what exactly was wrong with the last output
            error_doc["figures"] = figures
        fsutil.atomic_write_json(ref.path / ERROR_FILE, error_doc)
        return self.move(ref, Event.FAIL, note=f"{stage}: {error.reason}")

    def retry(self, ref: RunRef) -> RunRef:
        """Send a failed run back to the state it failed in; its error stays in the history."""
        manifest = self.load(ref)
        if manifest.failed_from is not None:
            # A fresh start of the failed stage: its attempts count from zero again.
            for progress in manifest.stages.values():
                progress.attempts = 0
                progress.failed_at = None
            self.save(ref, manifest)
        new_ref = self.move(ref, Event.RETRY, note="retry requested")
        with contextlib.suppress(FileNotFoundError):
            (new_ref.path / ERROR_FILE).unlink()
        return new_ref

    def _rename(self, ref: RunRef, target: State) -> RunRef:
        dest = self.dir_for(target) / ref.run_id
        if dest.exists():
            raise StoreError(f"cannot move {ref.run_id} to {target.value}/: a folder of that name exists")
        try:
            os.replace(ref.path, dest)
        except OSError as exc:
            raise StoreError(f"cannot move {ref.run_id} to {target.value}/: {exc}") from exc
        fsutil.fsync_dir(dest.parent)
        fsutil.fsync_dir(ref.path.parent)
        return RunRef(ref.run_id, target, dest)

    # -- intake ---------------------------------------------------------------

    def find_by_hash(self, digest: str) -> RunRef | None:
        """The run holding a song with this content hash, in any state."""
        for ref in self.iter_runs():
            if hash8_of(ref.run_id) != digest[:8]:
                continue
            with contextlib.suppress(StoreError):
                if self.load(ref).song.sha256 == digest:
                    return ref
        return None

    def create(self, song_path: Path, digest: str, *, id_digest: str | None = None,
               extras: Mapping[str, Path] | None = None) -> RunRef:
        """Turn a song in the inbox into a run in incoming/, moving the file into it.

        ``digest`` is the content hash ("" when unreadable; ``id_digest`` then
        names the run instead). ``extras`` (name in the run folder → a file or
        folder) are linked or copied in before the song moves, so the run is
        never visible without them and their sources stay until the run exists.
        """
        now = self.clock()
        run_id = new_run_id(now, song_path.name, id_digest or digest)
        staging = self.dir_for(State.INCOMING) / f"{INGEST_PREFIX}{run_id}"
        final = self.dir_for(State.INCOMING) / run_id
        if final.exists() or staging.exists():
            raise StoreError(f"run {run_id} already exists")
        size = song_path.stat().st_size
        manifest = Manifest(
            run_id=run_id,
            song=Song(
                original_name=song_path.name,
                file_name=song_path.name,
                size=size,
                sha256=digest,
                dropped_from=str(song_path),
            ),
            created_at=now,
            updated_at=now,
            history=[StateChange(state=State.INCOMING, at=now, note="song arrived")],
        )
        try:
            staging.mkdir(parents=True)
            self.save(RunRef(run_id, State.INCOMING, staging), manifest)
            for name, source in (extras or {}).items():
                _link_or_copy_tree(source, staging / name)
            fsutil.move_file(song_path, staging / song_path.name)
            os.replace(staging, final)
        except OSError as exc:
            # A full disk fails here on every retry: leave no staging folder behind.
            self._unwind_ingest(staging, song_path)
            raise StoreError(
                f"cannot take {song_path.name} into {final.parent}: {exc.strerror or exc}; "
                "the song stays in the inbox and is tried again (free some space if the disk is full)"
            ) from exc
        fsutil.fsync_dir(final.parent)
        return RunRef(run_id, State.INCOMING, final)

    def _unwind_ingest(self, staging: Path, song_path: Path) -> None:
        """Undo a failed ``create``: the song goes back to the inbox, then the staging folder goes.

        If the song cannot go back, the folder stays: it holds the only copy,
        and ``reconcile`` finishes the ingest on the next start.
        """
        moved_in = staging / song_path.name
        if moved_in.exists() and not song_path.exists():
            try:
                fsutil.move_file(moved_in, song_path)
            except OSError:
                return
        shutil.rmtree(staging, ignore_errors=True)

    # -- start-up -------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Bring the store back to a known state after a crash; returns what it did.

        Sweeps our temp files, finishes or unwinds interrupted ingests, and makes
        every manifest agree with the directory its run sits in. Never deletes a
        person's song: an ingest is unwound only while the song is still in the
        inbox, and finished when the run folder holds the only copy.
        """
        self.ensure_layout()
        actions: list[str] = []
        folders = [self.root, *(ref.path for ref in self.iter_runs())]
        for folder in folders:
            for tmp in fsutil.iter_temp_files(folder):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    actions.append(f"removed temp file {tmp.relative_to(self.root)}")
        actions.extend(self._reconcile_ingests())
        actions.extend(self._reconcile_manifests())
        return actions

    def _reconcile_ingests(self) -> list[str]:
        actions = []
        incoming = self.dir_for(State.INCOMING)
        for staging in sorted(incoming.glob(f"{INGEST_PREFIX}*")):
            run_id = staging.name[len(INGEST_PREFIX) :]
            ref = RunRef(run_id, State.INCOMING, staging)
            try:
                manifest = self.load(ref)
            except StoreError:
                # No manifest means the song was never moved in (manifest comes first).
                shutil.rmtree(staging, ignore_errors=True)
                actions.append(f"discarded empty ingest {run_id}")
                continue
            song_here = staging / manifest.song.file_name
            source = Path(manifest.song.dropped_from)
            if song_here.exists() and not source.exists():
                os.replace(staging, incoming / run_id)
                actions.append(f"finished ingest of {run_id}")
            else:
                # The song is still in the inbox (or was never moved): this copy
                # is ours, and the watcher will offer the song again.
                shutil.rmtree(staging, ignore_errors=True)
                actions.append(f"unwound ingest of {run_id}; the song stays in the inbox")
        return actions

    def _reconcile_manifests(self) -> list[str]:
        actions = []
        for ref in self.iter_runs():
            try:
                manifest = self.load(ref)
            except StoreError as exc:
                actions.append(f"cannot read manifest of {ref.run_id}: {exc}")
                continue
            changed = False
            if manifest.state is not ref.state:
                manifest.state = ref.state
                manifest.history.append(
                    StateChange(state=ref.state, at=self.clock(), note="reconciled after restart")
                )
                changed = True
                actions.append(f"recorded {ref.run_id} as {ref.state.value}")
            if _close_resting_stages(manifest, ref.state):
                changed = True
                actions.append(f"closed the stages {ref.run_id} left open")
            if changed:
                self.save(ref, manifest)
        return actions

    # -- ownership ------------------------------------------------------------

    def lock(self) -> Callable[[], None]:
        """Take the state root for this process; returns the release function.

        The lock is the operating system's (``oslock``): exactly one process
        holds it, and it ends with the process, so a daemon killed with -9
        leaves nothing to take over. The pid in the file only names the owner
        in the refusal.
        """
        path = self.root / LOCK_FILE
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            held = oslock.try_lock(path, str(os.getpid()))
        except PermissionError as exc:
            raise StoreError(
                f"cannot lock {path}: permission denied; run Tandava as the user that owns "
                f"{self.root}, or give this user write access to it"
            ) from exc
        except OSError as exc:
            raise StoreError(
                f"cannot lock {path}: {exc.strerror or exc}; put the state root on a local disk "
                "(some network filesystems refuse file locks)"
            ) from exc
        if held is None:
            owner = oslock.read_note(path)
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise StoreLocked(
                f"another Tandava{who} is running on {self.root}; stop it first, "
                "or give this one another state root"
            )
        return held.release


def _link_or_copy_tree(source: Path, dest: Path) -> None:
    """``source`` (a file or a folder) at ``dest``: hard links on the same volume, copies elsewhere."""

    def place(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, dest, copy_function=place)
    else:
        place(str(source), str(dest))
