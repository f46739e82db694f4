"""What native decoders write to stderr, caught around decoding and logged as events.

How this works. libmpg123 (inside libsndfile) and FFmpeg print warnings
straight to file descriptor 2, beneath Python's logging: 21 raw lines for one
bad MP3 land in the middle of the daemon's JSON-lines console and break a
JSON-lines reader and journald's parsing. ``captured()`` points fd 2 at a temp
file while its block runs, then logs what it caught as one structured
``audio.decoder_message`` event.

fd 2 belongs to the whole process, so concurrent decodes (the CPU workers)
share one redirection, under a lock: the first block in redirects, the last
one out restores. Each block logs what was written while it ran, which on a
busy moment may include a neighbour's lines; the event names the file being
decoded, and nothing is lost or printed raw. Anything else written to fd 2
during a decode is caught too, so the console log handler writes to its own
duplicate of fd 2 (``logs.default_console``), not to fd 2 itself.

``os.dup``/``os.dup2`` exist on Windows as well; there they catch what a
library writes through the C runtime's stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

_log = structlog.get_logger("tandava.audio")

# One bad file can print hundreds of lines; the first ones say what happened.
_MAX_LINES = 40
_MAX_LINE_CHARS = 500


class _Redirect:
    """The shared redirection of fd 2: a temp file while at least one block is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None
        self._path: Path | None = None
        self._writer: int | None = None

    def enter(self) -> int:
        """Open a block; returns where its output starts in the temp file."""
        with self._lock:
            if self._depth == 0:
                self._start()
            self._depth += 1
            return self._size()

    def leave(self, start: int) -> bytes:
        """Close a block; returns what fd 2 received since ``start``."""
        with self._lock:
            caught = self._read(start)
            self._depth -= 1
            if self._depth == 0:
                self._stop()
            return caught

    def _start(self) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # Python's own buffered text belongs on the real stderr
        fd, name = tempfile.mkstemp(prefix="tandava-stderr-", suffix=".txt")
        os.close(fd)
        self._path = Path(name)
        try:
            self._writer = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            self._saved = os.dup(2)
            os.dup2(self._writer, 2)
        except OSError:
            self._stop()
            raise

    def _stop(self) -> None:
        if self._saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
        if self._writer is not None:
            os.close(self._writer)
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        self._saved = self._writer = self._path = None

    def _size(self) -> int:
        return os.fstat(self._writer).st_size if self._writer is not None else 0

    def _read(self, start: int) -> bytes:
        if self._path is None:
            return b""
        with self._path.open("rb") as fh:
            fh.seek(start)
            return fh.read(self._size() - start)


_REDIRECT = _Redirect()


@contextlib.contextmanager
def captured(file: str, decoder: str = "") -> Iterator[None]:
    """Catch what native code writes to fd 2 inside the block; log it as ``audio.decoder_message``."""
    try:
        start = _REDIRECT.enter()
    except OSError:
        yield  # no fd 2 to redirect (a service without a console): nothing can reach it either
        return
    try:
        yield
    finally:
        _report(_REDIRECT.leave(start), file, decoder)


def _report(raw: bytes, file: str, decoder: str) -> None:
    lines = [line.strip() for line in raw.decode("utf-8", "backslashreplace").splitlines() if line.strip()]
    if not lines:
        return
    fields: dict[str, Any] = {"file": file, "lines": [line[:_MAX_LINE_CHARS] for line in lines[:_MAX_LINES]]}
    if len(lines) > _MAX_LINES:
        fields["more_lines"] = len(lines) - _MAX_LINES
    if decoder:
        fields["decoder"] = decoder
    _log.info("audio.decoder_message", **fields)
