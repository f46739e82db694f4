"""An exclusive lock on a file that the operating system holds for this process's life.

How this works: the lock is the kernel's (``flock`` on POSIX, a byte-range lock
via ``msvcrt.locking`` on Windows), so taking it is one atomic call, and the
kernel drops it when the process ends, however it ends (``kill -9``, a power
cut ends everything anyway). There is no stale lock to detect and no pid to
trust: a file left behind by a dead process is simply locked again. The pid
written into the file is for people reading an error, never read to decide.

The holder removes the file on release. A process that opened the file just
before that removal would lock an orphaned inode, so after locking it checks
that the file it holds is still the one at the path, and tries again if not.

On Windows the lock covers one byte far past the end of the file, so the pid
at the start stays readable while the lock is held.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# Windows: lock a byte no pid will ever reach (locking past the end is allowed).
_WIN_LOCK_OFFSET = 1 << 30
# A release racing our open makes us retry; more than a few in a row means
# someone is churning the file, and the caller reports it as held.
_ATTEMPTS = 20


class HeldLock:
    """A lock this process holds; ``release`` gives it up (safe to call twice)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if sys.platform != "win32":
                # Remove it while we still hold it, so nobody locks a file we are about to delete.
                with contextlib.suppress(OSError):
                    if _is_file_at(fd, self.path):
                        self.path.unlink()
            _unlock(fd)
        finally:
            os.close(fd)
        if sys.platform == "win32":
            # Windows refuses to delete a file another process has open: then it is theirs.
            with contextlib.suppress(OSError):
                self.path.unlink()


def try_lock(path: Path, note: str = "") -> HeldLock | None:
    """Take the lock on ``path`` (created if missing) and write ``note`` into it; None if another holds it."""
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _lock(fd):
                os.close(fd)
                return None
            if _is_file_at(fd, path):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, note.encode("utf-8"))
                return HeldLock(path, fd)
            _unlock(fd)  # the holder removed it as we opened it: open the new one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    return None


def read_note(path: Path) -> str:
    """What the holder wrote into the lock file ("" when there is none or it cannot be read)."""
    try:
        with path.open("rb") as fh:
            return fh.read(256).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except OSError:
        return False


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> bool:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
