"""Crash-safe file primitives: nothing half-written is ever visible under its final name.

Every write goes to a temp file in the same folder (so the final rename never
crosses a filesystem), is flushed and fsynced, then ``os.replace``-d over the
final name, and the folder is fsynced so the rename itself survives a power cut
(POSIX only: Windows cannot open a directory, and NTFS journals the rename).

Temp names carry a marker (``.tandava-``) so the start-up sweep removes only
files this package made, never a person's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

TEMP_MARKER = ".tandava-"
TEMP_SUFFIX = ".tmp"
_HASH_CHUNK = 1024 * 1024


def temp_path_for(path: Path) -> Path:
    """A hidden, unique sibling of ``path`` that the sweep recognises as ours."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temp files (and so safe to sweep)."""
    return name.startswith(".") and TEMP_MARKER in name and name.endswith(TEMP_SUFFIX)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable; a no-op where folders cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """Open a temp sibling of ``path`` for writing; on success it is synced and renamed over ``path``.

    On any error the temp file is removed and ``path`` is untouched.
    """
    tmp = temp_path_for(path)
    try:
        with tmp.open("wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old content or the new, never a part."""
    with replacing(path) as fh:
        fh.write(data)


def keep_previous(path: Path, backup: Path) -> bool:
    """Make ``backup`` a whole copy of ``path`` as it is now; False when it could not.

    A hard link under a temp name renamed over ``backup``: no data is copied and
    the backup is never half-written. Where links are not supported (FAT, some
    shares) the content is copied the same way. A backup is a convenience: a
    failure (``path`` missing, a backup held open on Windows) never stops the
    write it precedes.
    """
    tmp = temp_path_for(backup)
    try:
        try:
            os.link(path, tmp)
        except FileNotFoundError:
            return False
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, backup)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write JSON, UTF-8, human-readable (a person may open it)."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by ``atomic_write_json``."""
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def move_file(src: Path, dst: Path) -> None:
    """Move a file so ``dst`` appears complete or not at all.

    Within one filesystem this is a hard link then an unlink: ``dst`` appears
    whole at once and a crash in between leaves the song in both places, which
    start-up reconcile resolves. A plain rename would do the same, but the inbox
    watcher would see it as a "moved out" event, which watchdog holds back for
    half a second hoping to pair it, delaying every event queued behind it. Where
    links are not supported (FAT, some shares) it falls back to a rename.

    Across filesystems (an inbox on a share, a state root on a local disk) the
    content is copied to a temp name beside ``dst``, synced and renamed, and
    only then is ``src`` removed: a crash in between leaves the source in
    place, never a torn copy. A source that changed during the copy is kept
    and the copy removed (``FileChangedError``): its writer is not done.
    """
    try:
        os.link(src, dst)
    except OSError as exc:
        if isinstance(exc, FileExistsError):
            raise
        try:
            os.replace(src, dst)
        except OSError as exc2:
            if not _is_cross_device(exc2):
                raise
        else:
            fsync_dir(dst.parent)
            return
    else:
        fsync_dir(dst.parent)
        src.unlink()
        return
    before = src.stat()
    with src.open("rb") as fin, replacing(dst) as fout:
        shutil.copyfileobj(fin, fout, _HASH_CHUNK)
    after = src.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        # A writer is still at work on the source (a stalled copy resumed): removing
        # it would lose what it writes next. Keep the source; the caller tries later.
        dst.unlink()
        raise FileChangedError(f"{src.name} changed while it was copied; it stays where it was")
    shutil.copystat(src, dst)
    src.unlink()


class FileChangedError(OSError):
    """The source of a cross-device move changed while it was copied; it was left in place."""


def _is_cross_device(exc: OSError) -> bool:
    # EXDEV on POSIX; ERROR_NOT_SAME_DEVICE (17) on Windows.
    import errno

    return exc.errno == errno.EXDEV or getattr(exc, "winerror", None) == 17


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name (2)``, ``name (3)``… if taken; never overwrites."""
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem} ({n}){suffix}"
        n += 1
    return candidate


def iter_temp_files(folder: Path) -> Iterator[Path]:
    """Our temp files directly inside ``folder`` and one level below."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_file() and is_temp_name(entry.name):
            yield entry
        elif entry.is_dir():
            for sub in entry.iterdir():
                if sub.is_file() and is_temp_name(sub.name):
                    yield sub
