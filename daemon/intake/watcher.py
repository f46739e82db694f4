"""The inbox watcher: decides when a song has finished arriving, and says so once.

How this works. Watchdog events only say *which name* to look at; the worker
thread decides from ``stat`` and its own clock, so a lost, late or repeated
event costs latency, never correctness. A song is ready when its (size, mtime)
has held still for ``stable_seconds`` since its *last* change. A close-write is
only a hint to look: chunked copies (``dd`` a chunk a second, SMB clients, sync
tools, appending downloads) open, append and close many times, and a tagger
reopens a file it just closed. On Windows it must also open exclusively:
Explorer holds a file it is still copying, whose size may be final early.
Entries that look like songs but are never taken (dotfiles, folders, symbolic
links, which are never followed) are logged once each, with the reason
(``files.refusal``).

Each (name, size, mtime) goes to ``on_ready`` once. Returning means the owner
dealt with it (moved it, or chose to leave it); raising ``StillChanging`` means
it changed under the owner's hands (a new arrival, waited for again); raising
anything else means "again later", after a backoff. A changed file is a new arrival. The same thread rescans every
``rescan_seconds`` (events get lost) and supervises the observer: it rebuilds
one that died (watchdog's polling observer dies silently after a share outage,
watchdog#1065) or that watches a replaced folder, and rides out the folder
vanishing. One thread means no locks on the state and a serial callback; it
sleeps on an Event between deadlines, so idling costs one ``stat`` a second.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any, Literal

import psutil
import structlog
from structlog.typing import FilteringBoundLogger
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon import defaults
from daemon.intake.files import (
    Signature,
    StillChanging,
    can_open_exclusively,
    is_song_name,
    looks_like_song,
    refusal,
)

# Filesystems whose changes can come from elsewhere (another machine, the VM
# host, Windows under WSL), which inotify never hears about: poll them.
NETWORK_FSTYPES = frozenset({
    "cifs", "smb", "smb2", "smb3", "smbfs", "nfs", "nfs4", "afpfs", "afs", "ncpfs",
    "9p", "drvfs", "virtiofs", "vboxsf", "vmhgfs", "fuse.vmhgfs-fuse", "davfs",
    "fuse.sshfs", "sshfs", "fuse.rclone", "fuse.davfs2", "fuse.s3fs", "ceph",
    "fuse.ceph", "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "beegfs",
})  # fmt: skip
# Only these reach the worker; in particular no open/close-nowrite events, which
# the owner's own reads (hashing a song) would otherwise trigger in bulk.
_EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
]  # fmt: skip
__all__ = ["InboxWatcher", "StillChanging", "can_open_exclusively", "is_network_path", "is_song_name"]


def is_network_path(
    path: PurePath, partitions: Callable[..., Iterable[Any]] = psutil.disk_partitions
) -> bool:
    """True if ``path`` lives on a network or host-shared filesystem; False when in doubt."""
    try:
        if isinstance(path, PureWindowsPath) and path.drive.startswith("\\\\"):
            return True
        resolved = path.resolve() if isinstance(path, Path) else path
        # Windows resolves a mapped drive letter to its UNC form.
        if isinstance(resolved, PureWindowsPath) and resolved.drive.startswith("\\\\"):
            return True
        best, best_depth = None, -1
        for part in partitions(all=True):
            mount = type(resolved)(part.mountpoint)
            if resolved.is_relative_to(mount) and len(mount.parts) > best_depth:
                best, best_depth = part, len(mount.parts)
        if best is None:
            return False
        opts = {opt.strip().lower() for opt in str(best.opts).split(",")}
        return str(best.fstype).lower() in NETWORK_FSTYPES or "remote" in opts
    except Exception:  # a broken mount table must not stop the daemon from watching
        return False


def new_observer(polling: bool, poll_seconds: float) -> BaseObserver:
    """A watchdog observer: the platform's native one, or one that polls every ``poll_seconds``."""
    return PollingObserver(timeout=poll_seconds) if polling else Observer()


def _shown(value: object) -> str:
    """Text safe for any log sink: undecodable bytes in a file name become escapes."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class _Arrival:
    """What the worker knows about one name in the inbox."""

    sig: Signature
    since: float  # clock time ``sig`` was first seen: the last change we know of
    handed: Signature | None = None
    failures: int = 0
    retry_at: float = 0.0
    due: float | None = None  # next time the worker must look


class _EventSink(FileSystemEventHandler):
    """Turns watchdog events into names for the worker to look at; no I/O here."""

    def __init__(self, folder: Path, hints: queue.SimpleQueue[str], wake: threading.Event) -> None:
        self._folder, self._hints, self._wake = folder, hints, wake

    def dispatch(self, event: FileSystemEvent) -> None:
        # Folders too: one named like a song is refused aloud, not ignored.
        self._hint(event.src_path)
        if isinstance(event, FileMovedEvent):
            self._hint(event.dest_path)

    def _hint(self, raw: bytes | str) -> None:
        path = Path(os.fsdecode(raw))
        # Non-recursive: inbox/duplicates/ and other subfolders are not ours.
        if path.parent == self._folder and looks_like_song(path.name):
            self._hints.put(path.name)
            self._wake.set()


class InboxWatcher:
    """Watches one inbox folder and calls ``on_ready(path)`` once per song that finished arriving."""

    def __init__(
        self,
        folder: Path,
        on_ready: Callable[[Path], None],
        *,
        stable_seconds: float = defaults.STABLE_SECONDS,
        rescan_seconds: float = defaults.RESCAN_SECONDS,
        poll_seconds: float = defaults.POLL_SECONDS,
        polling: Literal["auto", "always", "never"] = "auto",
        clock: Callable[[], float] = time.monotonic,
        log: FilteringBoundLogger | None = None,
        observer_factory: Callable[[bool, float], BaseObserver] = new_observer,
    ) -> None:
        self._folder = Path(folder).absolute()
        self._on_ready = on_ready
        self._stable, self._rescan_every, self._poll = stable_seconds, rescan_seconds, poll_seconds
        self._polling = polling
        self._clock = clock
        self._log = log if log is not None else structlog.get_logger("tandava.inbox")
        self._new_observer = observer_factory
        self._hints: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sink = _EventSink(self._folder, self._hints, self._wake)
        self._arrivals: dict[str, _Arrival] = {}
        self._refused: dict[str, str] = {}  # name -> the reason already logged
        self._observer: BaseObserver | None = None
        self._observer_lock = threading.Lock()
        self._observed_id: tuple[int, int] | None = None
        self._mode = self._choose_mode()
        self._folder_present = True
        self._observer_failing = False
        self._next_rescan = 0.0
        self._next_watch_check = 0.0
        self._worker: threading.Thread | None = None

    @property
    def mode(self) -> str:
        """How changes are noticed right now: "native" events or "polling"."""
        return self._mode

    def start(self) -> None:
        """Start observing and the worker thread; the first thing the worker does is a full scan."""
        if self._worker is not None:
            raise RuntimeError("InboxWatcher.start() called twice")
        self._supervise()  # here, so that a file dropped right after start() is seen
        self._next_rescan = self._clock()
        self._worker = threading.Thread(target=self._run, name="tandava-inbox", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and the observer; safe to call twice, and from ``on_ready`` itself."""
        self._stopping.set()
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        self._stop_observer(timeout)

    # --- worker thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                dues = [a.due for a in self._arrivals.values() if a.due is not None]
                deadline = min([self._next_rescan, self._next_watch_check, *dues])
                self._wake.wait(max(0.0, deadline - self._clock()))
                self._wake.clear()  # before draining, so a hint queued meanwhile wakes us again
                if self._stopping.is_set():
                    break
                try:
                    self._tick()
                except Exception:  # the watcher outlives any one bad file or flaky share
                    self._log.exception("inbox.worker_error", folder=_shown(self._folder))
                    self._stopping.wait(defaults.WATCH_CHECK_SECONDS)
        finally:
            self._stop_observer()

    def _tick(self) -> None:
        now = self._clock()
        if now >= self._next_watch_check:
            self._next_watch_check = now + defaults.WATCH_CHECK_SECONDS
            self._supervise()
        hinted: set[str] = set()
        while True:
            try:
                hinted.add(self._hints.get_nowait())
            except queue.Empty:
                break
        if self._clock() >= self._next_rescan:
            self._next_rescan = self._clock() + self._rescan_every
            if self._folder_present:
                self._rescan()
        for name in sorted(hinted):
            self._check(name)
        for name, arrival in list(self._arrivals.items()):
            if arrival.due is not None and arrival.due <= self._clock() and name not in hinted:
                self._check(name)

    def _rescan(self) -> None:
        try:
            present = {p.name for p in self._folder.iterdir() if looks_like_song(p.name)}
        except OSError:
            return  # the supervisor reports a missing folder, once
        for name in self._arrivals.keys() - present:
            del self._arrivals[name]
        for name in self._refused.keys() - present:
            del self._refused[name]  # gone: if it comes back, it is said again
        for name in sorted(present):
            self._check(name)

    def _check(self, name: str) -> None:
        path = self._folder / name
        now = self._clock()
        try:
            st = path.lstat()  # a symbolic link is judged as a link, never followed
        except OSError as exc:
            arrival = self._arrivals.get(name)
            if isinstance(exc, FileNotFoundError) and self._folder.is_dir():
                self._arrivals.pop(name, None)
                self._refused.pop(name, None)
            elif arrival is not None:
                # The share is away: keep what we know, and let its return trigger a rescan.
                arrival.due = None
            return
        reason = refusal(path, st)
        if reason is not None:
            self._arrivals.pop(name, None)
            if self._refused.get(name) != reason:
                self._refused[name] = reason
                self._log.warning("inbox.ignored", path=_shown(path), reason=reason)
            return
        self._refused.pop(name, None)
        sig = (st.st_size, st.st_mtime_ns)
        arrival = self._arrivals.get(name)
        if arrival is None or arrival.sig != sig:
            if arrival is None or arrival.handed is not None:
                self._log.info("inbox.file_seen", path=_shown(path), size=sig[0])
            arrival = self._arrivals[name] = _Arrival(sig, since=now)
        if arrival.handed == sig:
            arrival.due = None
            return
        # Stable since the last change, however many times its writer closed it meanwhile.
        ready_at = max(arrival.since + self._stable, arrival.retry_at)
        if now < ready_at:
            arrival.due = ready_at
        elif not can_open_exclusively(path):
            arrival.due = now + defaults.SETTLE_SECONDS
        else:
            self._hand_over(path, arrival)

    def _hand_over(self, path: Path, arrival: _Arrival) -> None:
        arrival.due = None
        self._log.info("inbox.file_ready", path=_shown(path), size=arrival.sig[0])
        try:
            self._on_ready(path)
        except StillChanging:
            # Not a failure: it is still arriving. Whatever it is now starts a new wait.
            self._log.info("inbox.still_changing", path=_shown(path), waiting=self._stable)
            arrival.since = self._clock()
            arrival.due = arrival.since + self._stable
            return
        except Exception as exc:
            arrival.failures += 1
            backoff = defaults.BACKOFF_INITIAL_SECONDS * 2 ** (arrival.failures - 1)
            backoff = min(backoff, defaults.BACKOFF_MAX_SECONDS)
            arrival.retry_at = arrival.due = self._clock() + backoff
            self._log.exception(
                "inbox.handoff_failed", path=_shown(path), error=_shown(exc),
                attempt=arrival.failures, retry_in=backoff,
            )  # fmt: skip
        else:
            arrival.handed = arrival.sig

    # --- supervision ---------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            st = self._folder.stat()
            folder_id = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
        except OSError:
            folder_id = None
        if folder_id is None:
            if self._folder_present:
                self._folder_present = False
                self._log.warning("inbox.folder_missing", folder=_shown(self._folder))
            self._stop_observer()
            return
        if not self._folder_present:
            self._folder_present = True
            self._log.info("inbox.folder_back", folder=_shown(self._folder))
        elif (observer := self._observer) is not None:
            if not observer.is_alive() or not all(e.is_alive() for e in observer.emitters):
                reason = "observer_died"
            # inotify follows the directory's inode, so after a swap it hears the old one.
            elif self._mode == "native" and folder_id != self._observed_id:
                reason = "folder_replaced"
            else:
                return
            self._log.warning("inbox.observer_restarted", folder=_shown(self._folder), reason=reason)
        self._build_observer(folder_id)
        self._next_rescan = self._clock()  # whatever happened meanwhile was not heard

    def _choose_mode(self) -> str:
        if self._polling == "auto":
            return "polling" if is_network_path(self._folder) else "native"
        return "polling" if self._polling == "always" else "native"

    def _build_observer(self, folder_id: tuple[int, int]) -> None:
        self._stop_observer()
        mode = self._choose_mode()
        # Out of inotify watches, or no native API here: in "auto", polling still works.
        modes = [mode, "polling"] if mode == "native" and self._polling == "auto" else [mode]
        for mode in modes:
            try:
                observer = self._start_observer(mode)
                break
            except Exception as exc:
                if not self._observer_failing:
                    self._log.error(
                        "inbox.observer_failed", folder=_shown(self._folder), mode=mode, error=_shown(exc)
                    )
        else:
            self._observer_failing = True  # log once; the next check tries again
            return
        self._observer_failing = False
        if mode != self._mode or self._observed_id is None:
            self._log.info("inbox.mode", mode=mode, folder=_shown(self._folder))
        with self._observer_lock:
            self._observer, self._mode, self._observed_id = observer, mode, folder_id
        if self._stopping.is_set():  # stop() timed out waiting for us and has come and gone
            self._stop_observer()

    def _start_observer(self, mode: str) -> BaseObserver:
        observer = self._new_observer(mode == "polling", self._poll)
        try:
            observer.schedule(self._sink, str(self._folder), recursive=False, event_filter=_EVENT_TYPES)
            observer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                observer.stop()  # the inotify observer owns a reader thread from birth
            raise
        return observer

    def _stop_observer(self, timeout: float = 5.0) -> None:
        with self._observer_lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive() and observer is not threading.current_thread():
                observer.join(timeout)

