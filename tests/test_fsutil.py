"""Crash-safe file primitives: temp-then-rename, cross-device moves, never overwriting."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.runs import fsutil


def test_atomic_write_replaces_whole_content(tmp_path: Path) -> None:
    """A write replaces the old content in one step and leaves no temp file."""
    target = tmp_path / "run.json"
    fsutil.atomic_write_json(target, {"a": 1})
    fsutil.atomic_write_json(target, {"a": "शिव"})
    assert fsutil.read_json(target) == {"a": "शिव"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_failed_write_keeps_old_content_and_no_temp(tmp_path: Path) -> None:
    """An error mid-write (disk full, crash) leaves the old file intact and no temp behind."""
    target = tmp_path / "segments.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(OSError), fsutil.replacing(target) as fh:
        fh.write(b"half")
        raise OSError(28, "No space left on device")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["segments.json"]


def test_temp_names_are_recognised_and_user_names_are_not() -> None:
    """Only names made by temp_path_for count as ours for the sweep."""
    ours = fsutil.temp_path_for(Path("x") / "analysis.json").name
    assert fsutil.is_temp_name(ours)
    for theirs in ("song.tmp", ".song.mp3", ".x.tmp", "analysis.json"):
        assert not fsutil.is_temp_name(theirs)


def test_free_name_never_overwrites(tmp_path: Path) -> None:
    """Moving aside picks 'name (2)', 'name (3)'… when the name is taken."""
    (tmp_path / "a.mp3").write_bytes(b"1")
    (tmp_path / "a (2).mp3").write_bytes(b"2")
    assert fsutil.free_name(tmp_path, "a.mp3").name == "a (3).mp3"
    assert fsutil.free_name(tmp_path, "b.mp3").name == "b.mp3"


@pytest.fixture
def other_device(tmp_path: Path) -> Iterator[Path]:
    """A folder on a different filesystem than tmp_path (tmpfs), or skip."""
    for candidate in (Path("/dev/shm"), Path("/run")):
        if candidate.is_dir() and os.access(candidate, os.W_OK) and candidate.stat().st_dev != tmp_path.stat().st_dev:
            with tempfile.TemporaryDirectory(dir=candidate) as folder:
                yield Path(folder)
            return
    pytest.skip("no second writable filesystem here")


def test_move_across_filesystems_copies_then_removes_source(tmp_path: Path, other_device: Path) -> None:
    """An inbox on another filesystem: the song arrives whole, then the source goes."""
    src = other_device / "song.mp3"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    data = src.read_bytes()
    dst = tmp_path / "run" / "song.mp3"
    dst.parent.mkdir()
    fsutil.move_file(src, dst)
    assert dst.read_bytes() == data
    assert not src.exists()
    assert [p.name for p in dst.parent.iterdir()] == ["song.mp3"]


def test_move_across_filesystems_keeps_a_source_that_changes_during_the_copy(
    tmp_path: Path, other_device: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source still being written while it is copied stays where it is, and no copy is left."""
    import shutil

    src = other_device / "song.mp3"
    src.write_bytes(os.urandom(1024 * 1024))
    real_copy = shutil.copyfileobj

    def copy_while_the_writer_appends(fin: object, fout: object, length: int = 0) -> None:
        real_copy(fin, fout, length)  # type: ignore[arg-type]
        with src.open("ab") as f:
            f.write(b"the rest of the song")

    monkeypatch.setattr(shutil, "copyfileobj", copy_while_the_writer_appends)
    dst = tmp_path / "run" / "song.mp3"
    dst.parent.mkdir()
    with pytest.raises(fsutil.FileChangedError, match="changed while it was copied"):
        fsutil.move_file(src, dst)
    assert src.stat().st_size == 1024 * 1024 + len(b"the rest of the song")
    assert list(dst.parent.iterdir()) == []
