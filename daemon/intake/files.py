"""What an entry of the inbox is: a song to take, a name to pass over silently, or one to refuse aloud.

How this works: names decide first (``is_song_name``): temp, partial, backup
and non-audio names are other programs' business and pass without a word. A
name that *looks* like a song but is not taken (a dotfile, a folder, a
symbolic link, a pipe) gets a reason a person can act on (``refusal``), which
the watcher logs once. Types come from ``lstat``: a link is never followed, so
``p.mp3 -> /etc/passwd`` and a link loop are refused, not read.

``signature`` is what "unchanged" means (size and mtime), and
``can_open_exclusively`` is Windows' extra proof that a writer is gone.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from daemon import defaults

Signature = tuple[int, int]  # (size, mtime_ns): what "unchanged" means

# Hidden files (rsync and Syncthing temps, macOS "._" forks) and Office lock files.
_EXCLUDED_PREFIXES = (".", "~$")
# macOS writes a "._name" fork beside every file it copies to a share: not a person's song.
_APPLE_FORK = "._"
_ERROR_SHARING_VIOLATION, _ERROR_LOCK_VIOLATION = 32, 33

DOTFILE = "dotfiles are never taken: rename it without the leading dot"
SYMLINK = "symbolic links are never followed: copy the song itself into the inbox"
LOOP = "it is a symbolic link that points back at itself; symbolic links are never followed: copy the song itself into the inbox"
FOLDER = "it is a folder, not a song (subfolders are not watched): put the song files themselves into the inbox"
SPECIAL = "it is not a regular file (a pipe, socket or device): copy the song itself into the inbox"


class StillChanging(Exception):  # noqa: N818 (a signal to the watcher, not an error)
    """Raised by the watcher's ``on_ready`` when the file changed while it was read: wait for it again."""


def is_song_name(name: str) -> bool:
    """True for an audio file a person dropped; False for temp, partial, hidden and backup names."""
    if not name or name.startswith(_EXCLUDED_PREFIXES) or name.endswith("~"):
        return False
    if "/" in name or "\\" in name:
        return False
    lower = name.lower()
    # ".part", ".crdownload", ".tmp" and friends fail here because they are not audio suffixes.
    return any(lower.endswith(s) and len(lower) > len(s) for s in defaults.AUDIO_SUFFIXES)


def looks_like_song(name: str) -> bool:
    """A song name, or one that would be if it did not start with a dot: worth a word if not taken."""
    if is_song_name(name):
        return True
    return name.startswith(".") and not name.startswith(_APPLE_FORK) and is_song_name(name.lstrip("."))


def refusal(path: Path, st: os.stat_result) -> str | None:
    """Why the song-like entry at ``path`` (``st`` from ``lstat``) is not taken; None for a song to take."""
    if path.name.startswith("."):
        return DOTFILE
    if stat.S_ISLNK(st.st_mode):
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return LOOP
        return SYMLINK
    if stat.S_ISDIR(st.st_mode):
        return FOLDER
    if not stat.S_ISREG(st.st_mode):
        return SPECIAL
    return None


def signature(path: Path) -> Signature | None:
    """(size, mtime_ns) of a regular file, without following links; None for anything else or a gone file."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def can_open_exclusively(path: Path) -> bool:
    """False while another program holds the file open for writing (Windows only; True elsewhere)."""
    if sys.platform != "win32":
        # POSIX has no mandatory sharing modes, so an open proves nothing; and an
        # unreadable song must still reach the owner, which moves it aside with a reason.
        return True
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateFileW.restype = wintypes.HANDLE
    kernel32.CreateFileW.argtypes = [
        wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID,
        wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE,
    ]  # fmt: skip
    generic_read, share_none, open_existing = 0x80000000, 0, 3
    handle = kernel32.CreateFileW(str(path), generic_read, share_none, None, open_existing, 0, None)
    if handle == wintypes.HANDLE(-1).value:
        return ctypes.get_last_error() not in (_ERROR_SHARING_VIOLATION, _ERROR_LOCK_VIOLATION)
    kernel32.CloseHandle(handle)
    return True
