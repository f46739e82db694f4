"""The inbox watcher, with real files, real watchdog observers and real threads."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path, PureWindowsPath
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import LogCapture
from watchdog.observers.api import BaseObserver

from daemon.intake.settle import settle_once
from daemon.intake.watcher import (
    InboxWatcher,
    can_open_exclusively,
    is_network_path,
    is_song_name,
    new_observer,
)

FAST = {"stable_seconds": 0.3, "rescan_seconds": 1.0, "poll_seconds": 0.2}
WAIT = 5.0  # generous upper bound; every wait returns as soon as its condition holds


def wait_until(condition: Callable[[], object], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


class Recorder:
    """An on_ready that records each call with the file's size at that instant."""

    def __init__(self, action: Callable[[Path], None] | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self._action = action

    def __call__(self, path: Path) -> None:
        self.calls.append((path.name, path.stat().st_size))
        if self._action is not None:
            self._action(path)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def cap() -> LogCapture:
    return LogCapture()


@pytest.fixture
def make_watcher(inbox: Path, cap: LogCapture) -> Iterator[Callable[..., InboxWatcher]]:
    started: list[InboxWatcher] = []

    def make(on_ready: Callable[[Path], None], **kwargs: Any) -> InboxWatcher:
        options = {**FAST, "log": structlog.wrap_logger(None, processors=[cap]), **kwargs}
        watcher = InboxWatcher(inbox, on_ready, **options)
        watcher.start()
        started.append(watcher)
        return watcher

    yield make
    for watcher in started:
        watcher.stop()


def events(cap: LogCapture, name: str) -> list[dict[str, Any]]:
    return [entry for entry in cap.entries if entry["event"] == name]


def drop(path: Path, size: int = 4096) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_slow_copy_is_handed_over_once_when_complete(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    """A file written in chunks with short pauses through one handle is handed over once, at its final size."""
    got = Recorder()
    make_watcher(got, stable_seconds=0.5)
    chunk, chunks = 64 * 1024, 8
    with (inbox / "slow.mp3").open("wb", buffering=0) as f:
        for _ in range(chunks):
            f.write(os.urandom(chunk))
            time.sleep(0.1)  # shorter than the stable window; 0.8 s in all is longer
            assert got.calls == []
    assert wait_until(lambda: got.calls)
    time.sleep(0.5 + 0.5)  # one more stable window and settle: nothing else may come
    assert got.calls == [("slow.mp3", chunk * chunks)]


@pytest.mark.skipif(sys.platform != "linux", reason="close-write events come from inotify")
def test_closed_file_waits_for_the_stable_window(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    """A close-write is a hint, not proof: a closed file is handed over only after the stable window."""
    got = Recorder()
    make_watcher(got, stable_seconds=1.5, rescan_seconds=60.0)
    drop(inbox / "closed.mp3")
    time.sleep(1.0)  # twice the half second a close-write used to be trusted after
    assert got.calls == []
    assert wait_until(lambda: got.calls, timeout=3.0)
    assert got.names == ["closed.mp3"]


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_song_like_entries_that_are_not_taken_are_logged_once_with_the_reason(
    tmp_path: Path, inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """A folder named x.mp3, a symlink loop, a link to a file elsewhere and a dotfile song: each logged once, none taken."""
    (inbox / "x.mp3").mkdir()
    (inbox / "loop.mp3").symlink_to(inbox / "loop.mp3")
    secret = drop(tmp_path / "passwd")
    (inbox / "p.mp3").symlink_to(secret)
    drop(inbox / ".hidden song.mp3")
    drop(inbox / "._mac fork.mp3")  # macOS metadata beside a copied file: not worth a word
    got = Recorder()
    make_watcher(got, rescan_seconds=0.3)
    drop(inbox / "sentinel.mp3")
    assert wait_until(lambda: got.calls)
    time.sleep(1.0)  # three more rescans: still one line each
    assert got.names == ["sentinel.mp3"]
    reasons = {Path(e["path"]).name: e["reason"] for e in events(cap, "inbox.ignored")}
    assert len(events(cap, "inbox.ignored")) == len(reasons) == 4
    assert reasons[".hidden song.mp3"] == "dotfiles are never taken: rename it without the leading dot"
    assert "is a folder, not a song" in reasons["x.mp3"]
    assert "points back at itself" in reasons["loop.mp3"]
    assert "symbolic links are never followed" in reasons["p.mp3"]
    assert secret.exists()


def test_ignored_entry_is_logged_again_after_it_comes_back(
    inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """Once an ignored entry is gone, its return is a new fact worth one more line."""
    got = Recorder()
    make_watcher(got, rescan_seconds=0.3)
    hidden = drop(inbox / ".again.mp3")
    assert wait_until(lambda: len(events(cap, "inbox.ignored")) == 1)
    hidden.unlink()
    time.sleep(0.7)
    drop(hidden)
    assert wait_until(lambda: len(events(cap, "inbox.ignored")) == 2)


def test_replaced_inbox_folder_is_watched_again(
    tmp_path: Path, inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    """An inbox swapped for a new folder of the same name is watched again, without a rescan."""
    got = Recorder()
    make_watcher(got, rescan_seconds=60.0)
    inbox.rename(tmp_path / "old-inbox")
    inbox.mkdir()
    time.sleep(1.5)  # one supervisor check, so the song below can only arrive by events
    drop(inbox / "new.mp3")
    assert wait_until(lambda: got.calls)


def test_partial_download_renamed_to_song_is_taken(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    """A browser's song.mp3.part is ignored until it is renamed to song.mp3, then taken once."""
    got = Recorder()
    make_watcher(got)
    part = drop(inbox / "song.mp3.part")
    part.rename(inbox / "song.mp3")
    assert wait_until(lambda: got.calls)
    assert got.names == ["song.mp3"]


def test_temporary_hidden_and_foreign_names_are_never_taken(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    """Partial, temp, lock, hidden, non-audio and subfolder files are never handed over."""
    got = Recorder()
    make_watcher(got, rescan_seconds=0.3)
    (inbox / "duplicates").mkdir()
    for name in ["a.mp3.crdownload", "b.tmp", "~$c.mp3", ".hidden.mp3", "notes.txt", "d.mp3~"]:
        drop(inbox / name)
    drop(inbox / "duplicates" / "e.mp3")
    drop(inbox / "sentinel.mp3")  # written last: once it is taken, the others had their chance
    assert wait_until(lambda: got.calls)
    time.sleep(1.0)  # three more rescans
    assert got.names == ["sentinel.mp3"]


def test_unicode_spaces_and_upper_case_names_are_taken(
    inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """Songs with Devanagari, emoji, spaces, brackets and upper-case suffixes are taken and logged."""
    names = {"शिव तांडव 🔱.mp3", "My Song (final).MP3", "LOUD.WAV", "drum.Flac"}
    got = Recorder()
    make_watcher(got)
    for name in names:
        drop(inbox / name)
    assert wait_until(lambda: len(got.calls) == len(names))
    assert sorted(got.names) == sorted(names)
    assert {Path(e["path"]).name for e in events(cap, "inbox.file_ready")} == names


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux filesystems accept undecodable names")
def test_undecodable_file_name_is_taken_and_logged(
    inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """A Latin-1 byte in a file name neither crashes the watcher nor its log line."""
    got = Recorder()
    make_watcher(got)
    drop(Path(os.fsdecode(os.fsencode(inbox) + b"/caf\xe9.mp3")))
    assert wait_until(lambda: got.calls)
    assert events(cap, "inbox.file_ready")[0]["path"].endswith("caf\\udce9.mp3")


def test_polling_mode_takes_files(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    """With polling forced, as on a network share, a dropped song is still taken."""
    got = Recorder()
    watcher = make_watcher(got, polling="always", rescan_seconds=60.0)
    assert watcher.mode == "polling"
    drop(inbox / "over smb.mp3")
    assert wait_until(lambda: got.calls)
    assert got.names == ["over smb.mp3"]


def test_supervisor_rebuilds_a_dead_observer(
    inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """An observer that stops by itself is replaced, and the new one hears the next song."""
    made: list[BaseObserver] = []

    def factory(polling: bool, poll_seconds: float) -> BaseObserver:
        made.append(new_observer(polling, poll_seconds))
        return made[-1]

    got = Recorder()
    # No rescan within the test: only the rebuilt observer's events can deliver the song.
    make_watcher(got, polling="never", rescan_seconds=60.0, observer_factory=factory)
    made[0].stop()
    made[0].join()
    assert wait_until(lambda: len(made) == 2 and made[1].is_alive())
    drop(inbox / "after.mp3")
    assert wait_until(lambda: got.calls)
    assert [e["reason"] for e in events(cap, "inbox.observer_restarted")] == ["observer_died"]


def test_folder_outage_stays_quiet(
    tmp_path: Path, inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """A vanished and restored inbox is logged once each way; handed-over songs are not handed again."""
    done = tmp_path / "done"
    done.mkdir()

    def move_out_unless_kept(path: Path) -> None:
        if path.name != "kept.mp3":
            path.rename(done / path.name)

    got = Recorder(move_out_unless_kept)
    make_watcher(got, rescan_seconds=0.3)
    drop(inbox / "kept.mp3")
    drop(inbox / "moved.mp3")
    assert wait_until(lambda: len(got.calls) == 2)
    away = tmp_path / "inbox-away"
    inbox.rename(away)
    assert wait_until(lambda: events(cap, "inbox.folder_missing"))
    time.sleep(0.5)  # rescans while the folder is away
    away.rename(inbox)
    assert wait_until(lambda: events(cap, "inbox.folder_back"))
    time.sleep(1.5)  # several rescans with the left-in-place song sitting there
    assert sorted(got.names) == ["kept.mp3", "moved.mp3"]
    assert len(events(cap, "inbox.folder_missing")) == 1
    assert len(events(cap, "inbox.folder_back")) == 1


def test_file_changed_after_handover_is_a_new_arrival(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    """A song left in place is not handed over again until its content changes."""
    got = Recorder()
    make_watcher(got, rescan_seconds=0.3)
    song = drop(inbox / "left.mp3", size=100)
    assert wait_until(lambda: got.calls)
    time.sleep(1.0)
    assert got.calls == [("left.mp3", 100)]
    with song.open("ab") as f:
        f.write(b"x" * 50)
    assert wait_until(lambda: len(got.calls) == 2)
    assert got.calls[1] == ("left.mp3", 150)


def test_failing_callback_is_retried_after_backoff(
    inbox: Path, make_watcher: Callable[..., InboxWatcher], cap: LogCapture
) -> None:
    """A callback that raises once gets the same file again later, and the watcher keeps working."""
    attempts: list[str] = []

    def flaky(path: Path) -> None:
        attempts.append(path.name)
        if len(attempts) == 1:
            raise OSError("share busy")
        path.unlink()

    make_watcher(flaky)
    drop(inbox / "retry.mp3")
    assert wait_until(lambda: len(attempts) == 2)
    assert attempts == ["retry.mp3", "retry.mp3"]
    failed = events(cap, "inbox.handoff_failed")
    assert [(Path(e["path"]).name, e["attempt"]) for e in failed] == [("retry.mp3", 1)]
    drop(inbox / "next.mp3")
    assert wait_until(lambda: len(attempts) == 3)


def test_song_present_at_start_is_taken(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    """A song that was already in the inbox when the watcher started is taken by the start-up scan."""
    drop(inbox / "waiting.ogg")
    got = Recorder()
    make_watcher(got, rescan_seconds=60.0)
    assert wait_until(lambda: got.calls)
    assert got.names == ["waiting.ogg"]


def test_settle_once_waits_for_a_fresh_song_and_names_what_it_skips(inbox: Path) -> None:
    """--once takes settled songs at once, waits for one written just now, and gives a reason for each skip."""
    old = time.time() - 60
    for name in ["b.mp3", "a.m4a", "c.mp3.part"]:
        os.utime(drop(inbox / name), (old, old))
    drop(inbox / "fresh.mp3")
    drop(inbox / ".dot.mp3")
    (inbox / "folder.mp3").mkdir()
    started = time.monotonic()
    settled = settle_once(inbox, stable_seconds=0.6, max_wait=3.0)
    assert 0.5 <= time.monotonic() - started < 2.5
    assert settled.ready == [inbox / "a.m4a", inbox / "b.mp3", inbox / "fresh.mp3"]
    assert list(settled.waited) == ["fresh.mp3"]
    assert settled.skipped.keys() == {".dot.mp3", "folder.mp3"}
    assert settle_once(inbox / "gone", stable_seconds=0.6, max_wait=1.0).ready == []


def test_settle_once_gives_up_on_a_copy_still_running_and_says_so(inbox: Path) -> None:
    """A song still growing when the wait is over is skipped with a reason that says what to do."""
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.wait(0.1):
            with (inbox / "long copy.mp3").open("ab") as f:
                f.write(b"x" * 1024)

    drop(inbox / "long copy.mp3", size=1024)
    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        settled = settle_once(inbox, stable_seconds=0.5, max_wait=1.2)
    finally:
        stop.set()
        writer.join()
    assert settled.ready == []
    assert "still being written" in settled.skipped["long copy.mp3"]
    assert "tandava run --once" in settled.skipped["long copy.mp3"]


def test_stop_is_idempotent_and_joins_threads(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    """stop() twice is fine and leaves no watcher or observer thread running."""
    made: list[BaseObserver] = []

    def factory(polling: bool, poll_seconds: float) -> BaseObserver:
        made.append(new_observer(polling, poll_seconds))
        return made[-1]

    watcher = make_watcher(Recorder(), observer_factory=factory)
    watcher.stop()
    watcher.stop()
    assert not any(t.name == "tandava-inbox" for t in threading.enumerate())
    assert not any(observer.is_alive() for observer in made)


SONGS = ["a.mp3", "b.WAV", "c.flac", "d.Ogg", "e.m4a", "My Song (final).MP3", "शिव तांडव 🔱.mp3", "x.y.mp3"]
NOT_SONGS = [
    "a.mp3.part", "a.mp3.crdownload", "a.tmp", "a.mp3.partial", "a.mp3.download", "~$a.mp3",
    ".hidden.mp3", "a.mp3~", "notes.txt", ".mp3", "mp3", "", "a.mp4", "a.mp3 ", "dir/a.mp3",
]  # fmt: skip


@pytest.mark.parametrize("name", SONGS)
def test_song_names_are_accepted(name: str) -> None:
    """Audio suffixes in any case, with any stem a person might type, are songs."""
    assert is_song_name(name)


@pytest.mark.parametrize("name", NOT_SONGS)
def test_other_names_are_refused(name: str) -> None:
    """Partial, temp, lock, hidden, backup and non-audio names are not songs."""
    assert not is_song_name(name)


stems = st.text(st.characters(exclude_characters="/\\\x00"), min_size=1).filter(
    lambda s: not s.startswith((".", "~$"))
)
suffixes = st.sampled_from([".mp3", ".wav", ".flac", ".ogg", ".m4a"]).flatmap(
    lambda s: st.tuples(*[st.sampled_from([c.lower(), c.upper()]) for c in s]).map("".join)
)
temp_tails = st.sampled_from([".part", ".crdownload", ".tmp", ".partial", ".download", "~"])


@given(stem=stems, suffix=suffixes, tail=temp_tails)
def test_song_name_property(stem: str, suffix: str, tail: str) -> None:
    """Any visible stem plus an audio suffix is a song; adding a temp or backup tail never is."""
    assert is_song_name(stem + suffix)
    assert not is_song_name(stem + suffix + tail)
    assert not is_song_name("." + stem + suffix)


Part = namedtuple("Part", "device mountpoint fstype opts")
MOUNTS = [
    Part("/dev/sda1", "/", "ext4", "rw"),
    Part("//nas/music", "/mnt/nas", "cifs", "rw,vers=3.0"),
    Part("/dev/sdb1", "/mnt/nas/cache", "ext4", "rw"),
    Part("server:/export", "/srv/nfs", "nfs4", "rw"),
    Part("Z:\\", "Z:\\", "NTFS", "rw,remote"),
]


def fake_partitions(all: bool = False) -> list[Part]:
    return MOUNTS


def broken_partitions(all: bool = False) -> list[Part]:
    raise PermissionError("no mount table here")


def test_tmp_path_is_local(tmp_path: Path) -> None:
    """The test machine's temporary folder is not on a network filesystem."""
    assert is_network_path(tmp_path) is False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX mount points")
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/mnt/nas/inbox", True),
        ("/mnt/nas", True),
        ("/mnt/nas/cache/inbox", False),  # the longest mount point wins
        ("/mnt/nasty/inbox", False),  # a prefix of the text is not a parent folder
        ("/srv/nfs/songs", True),
        ("/home/me/inbox", False),
    ],
)
def test_network_path_from_mount_table(path: str, expected: bool) -> None:
    """The filesystem type of the deepest mount point holding the path decides."""
    assert is_network_path(Path(path), partitions=fake_partitions) is expected


def test_network_path_on_windows_forms() -> None:
    """A UNC path, or a drive the mount table marks remote, is a network path."""
    assert is_network_path(PureWindowsPath(r"\\server\share\inbox"), partitions=fake_partitions)
    assert is_network_path(PureWindowsPath(r"Z:\inbox"), partitions=fake_partitions)
    assert not is_network_path(PureWindowsPath(r"C:\inbox"), partitions=fake_partitions)


def test_network_path_never_raises(tmp_path: Path) -> None:
    """A mount table that cannot be read means "not a network path", not an exception."""
    assert is_network_path(tmp_path, partitions=broken_partitions) is False


@pytest.mark.skipif(sys.platform != "win32", reason="sharing violations exist only on Windows")
def test_file_open_for_writing_cannot_be_opened_exclusively(tmp_path: Path) -> None:
    """While a writer holds the file, it is not ready; once closed, it is."""
    path = tmp_path / "copying.mp3"
    with path.open("wb") as f:
        f.write(b"x")
        assert not can_open_exclusively(path)
    assert can_open_exclusively(path)
