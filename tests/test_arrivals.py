"""How people's tools copy songs into the inbox, end to end: watcher, intake and store, real files and threads.

Each copy pattern must give exactly one run holding the whole song. The stable
window is shortened (``WINDOW``) and every pause scaled with it, so the tests
run in seconds; ``bench/bench_arrivals.py`` runs the same patterns at full size.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import LogCapture

from daemon.intake.intake import Intake
from daemon.intake.watcher import InboxWatcher
from daemon.runs.store import RunStore

WINDOW = 1.2  # the stable window in these tests (2 s by default)
# Between a writer's closes: longer than the half second a close-write used to
# buy (the bug), shorter than the window.
GAP = 0.65
CHUNK = 64 * 1024


@pytest.fixture
def cap() -> LogCapture:
    return LogCapture()


@pytest.fixture
def watched(store: RunStore, inbox: Path, cap: LogCapture) -> Iterator[Callable[[], list[bytes]]]:
    """A running watcher feeding the real intake; yields a function listing each run's song bytes."""
    intake = Intake(store, inbox)
    watcher = InboxWatcher(
        inbox, intake.take, stable_seconds=WINDOW, rescan_seconds=1.0, poll_seconds=0.2,
        log=structlog.wrap_logger(None, processors=[cap]),
    )  # fmt: skip
    watcher.start()

    def songs() -> list[bytes]:
        return [next(p for p in ref.path.iterdir() if p.suffix == ".mp3").read_bytes() for ref in store.iter_runs()]

    try:
        yield songs
    finally:
        watcher.stop()


def settle_and_list(songs: Callable[[], list[bytes]], expected: bytes) -> list[bytes]:
    """Wait until a run holds the whole song (or time runs out), then one more window for any stray run."""
    deadline = time.monotonic() + 10 * WINDOW
    while time.monotonic() < deadline and expected not in songs():
        time.sleep(0.05)
    time.sleep(2 * WINDOW)
    return songs()


def test_chunked_copy_each_chunk_its_own_open_append_close_makes_one_whole_run(
    inbox: Path, watched: Callable[[], list[bytes]]
) -> None:
    """A copy in chunks, each opened, appended and closed (dd oflag=append), is never taken while it grows, then is one run."""
    song = os.urandom(CHUNK * 6)
    for i in range(6):
        with (inbox / "chunked.mp3").open("ab") as f:  # a close-write after every chunk
            f.write(song[i * CHUNK : (i + 1) * CHUNK])
        time.sleep(GAP)
        assert watched() == [] or i == 5
    assert settle_and_list(watched, song) == [song]


def test_copy_pausing_longer_than_the_window_through_one_handle_makes_one_whole_run(
    inbox: Path, watched: Callable[[], list[bytes]]
) -> None:
    """A copy that stops halfway for longer than the window (a stalled share) still ends as one whole run."""
    song = os.urandom(CHUNK * 8)
    with (inbox / "paused.mp3").open("wb", buffering=0) as f:
        f.write(song[: CHUNK * 4])
        time.sleep(WINDOW * 3)  # the half may be taken now: the writer's handle follows the file
        f.write(song[CHUNK * 4 :])
    assert settle_and_list(watched, song) == [song]


def test_writer_that_reopens_the_file_after_closing_it_makes_one_whole_run(
    inbox: Path, watched: Callable[[], list[bytes]]
) -> None:
    """A writer that closes the copy, then reopens it to rewrite its tag and append, gives one run of the final file."""
    body = os.urandom(CHUNK * 6)
    path = inbox / "retagged.mp3"
    path.write_bytes(b"\0" * 128 + body)  # closed: a close-write event, but not proof
    time.sleep(GAP)
    with path.open("r+b") as f:  # the tagger: rewrite the header in place, then add a trailer
        f.write(b"ID3" + b"\1" * 125)
        f.seek(0, os.SEEK_END)
        f.write(b"TAG" + b"\2" * 125)
    final = b"ID3" + b"\1" * 125 + body + b"TAG" + b"\2" * 125
    assert settle_and_list(watched, final) == [final]


def test_file_changing_while_intake_reads_it_is_not_moved(
    store: RunStore, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the song grows while it is being hashed, intake leaves it in the inbox and says it is still changing."""
    from daemon.intake.files import StillChanging
    from daemon.runs import fsutil

    path = inbox / "growing.mp3"
    path.write_bytes(os.urandom(CHUNK))
    real_hash = fsutil.sha256_file

    def hash_while_a_writer_appends(p: Path) -> str:
        digest = real_hash(p)
        with p.open("ab") as f:
            f.write(b"more")
        return digest

    monkeypatch.setattr(fsutil, "sha256_file", hash_while_a_writer_appends)
    with pytest.raises(StillChanging):
        Intake(store, inbox).accept(path)
    assert path.exists() and list(store.iter_runs()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_song_swapped_for_a_symlink_while_it_is_read_is_not_moved(
    store: RunStore, inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A song replaced by a link to another file while intake hashes it is left alone, and the link is never moved."""
    from daemon.intake.files import StillChanging
    from daemon.runs import fsutil

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    path = inbox / "swap.mp3"
    path.write_bytes(os.urandom(CHUNK))
    real_hash = fsutil.sha256_file

    def hash_then_swap(p: Path) -> str:
        digest = real_hash(p)
        p.unlink()
        p.symlink_to(secret)
        return digest

    monkeypatch.setattr(fsutil, "sha256_file", hash_then_swap)
    with pytest.raises(StillChanging):
        Intake(store, inbox).accept(path)
    monkeypatch.undo()
    assert list(store.iter_runs()) == []
    assert Intake(store, inbox).accept(path) is None  # looked at again: a link, refused
    assert path.is_symlink() and list(store.iter_runs()) == []
