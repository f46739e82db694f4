"""The run store: intake, atomic moves, failure records, retry, reconcile, lock."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from daemon.errors import BadInput, IllegalTransition, RunNotFound, StoreError, StoreLocked
from daemon.runs import fsutil
from daemon.runs.manifest import slugify
from daemon.runs.states import Event, State
from daemon.runs.store import INGEST_PREFIX, RunStore


def drop(inbox: Path, name: str = "song.mp3", data: bytes = b"ID3 fake audio") -> Path:
    path = inbox / name
    path.write_bytes(data)
    return path


def test_create_moves_song_into_incoming_run(store: RunStore, inbox: Path) -> None:
    """A new song becomes a run folder in incoming/ holding the song and run.json."""
    song = drop(inbox, "Shiva Tandava.mp3")
    ref = store.create(song, fsutil.sha256_file(song))
    assert ref.state is State.INCOMING
    assert ref.path.parent == store.root / "incoming"
    assert not song.exists()
    assert (ref.path / "Shiva Tandava.mp3").read_bytes() == b"ID3 fake audio"
    manifest = store.load(ref)
    assert manifest.song.original_name == "Shiva Tandava.mp3"
    assert manifest.history[0].state is State.INCOMING
    assert "_shiva-tandava_" in ref.run_id


def test_run_id_keeps_non_latin_titles_readable() -> None:
    """Slugs keep Devanagari letters and marks, drop emoji and punctuation."""
    assert slugify("शिव तांडव 🔱") == "शिव-तांडव"
    assert slugify("🔱🔱") == "song"
    assert slugify('a<b>c:"d/e\\f|g?h*') == "a-b-c-d-e-f-g-h"


def test_move_is_one_rename_and_recorded(store: RunStore, inbox: Path) -> None:
    """Moving a run renames its folder and appends to the manifest's history."""
    ref = store.create(drop(inbox), "ab" * 32)
    moved = store.move(ref, Event.ANALYSIS_DONE)
    assert moved.path == store.root / "analyzed" / ref.run_id
    assert not ref.path.exists()
    manifest = store.load(moved)
    assert manifest.state is State.ANALYZED
    assert [h.state for h in manifest.history] == [State.INCOMING, State.ANALYZED]


def test_illegal_move_raises_and_leaves_run_in_place(store: RunStore, inbox: Path) -> None:
    """The state model guards the store: an illegal event moves nothing."""
    ref = store.create(drop(inbox), "ab" * 32)
    with pytest.raises(IllegalTransition):
        store.move(ref, Event.RENDER_DONE)
    assert ref.path.is_dir()


def test_fail_writes_error_json_and_retry_goes_back(store: RunStore, inbox: Path) -> None:
    """A failed run has error.json with reason and hint; retry returns it to where it failed."""
    ref = store.create(drop(inbox), "cd" * 32)
    failed = store.fail(ref, "analyze", BadInput("the file is empty", "drop it again"))
    assert failed.state is State.FAILED
    doc = json.loads((failed.path / "error.json").read_text(encoding="utf-8"))
    assert doc["reason"] == "the file is empty"
    assert doc["hint"] == "drop it again"
    assert doc["failed_in"] == "incoming"
    assert doc["retry"] == f"tandava retry {ref.run_id}"
    back = store.retry(failed)
    assert back.state is State.INCOMING
    assert not (back.path / "error.json").exists()
    manifest = store.load(back)
    assert manifest.errors[0].reason == "the file is empty"
    assert manifest.failed_from is None


def test_find_by_prefix_and_unknown(store: RunStore, inbox: Path) -> None:
    """Runs are found by a unique prefix of their id; unknown ids raise RunNotFound."""
    ref = store.create(drop(inbox), "ef" * 32)
    assert store.find(ref.run_id[:17]).run_id == ref.run_id
    with pytest.raises(RunNotFound):
        store.find("nope")


def test_find_by_hash_sees_every_state(store: RunStore, inbox: Path) -> None:
    """Duplicate detection finds a song's run whatever state it is in."""
    digest = "12" * 32
    ref = store.create(drop(inbox), digest)
    store.fail(ref, "analyze", BadInput("x"))
    found = store.find_by_hash(digest)
    assert found is not None and found.state is State.FAILED
    assert store.find_by_hash("34" * 32) is None


@pytest.mark.parametrize("failing", ["manifest", "song", "final rename"])
def test_full_disk_during_create_leaves_no_staging_folder(
    store: RunStore, inbox: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A write that fails with ENOSPC at any step of create leaves the song in the inbox and no .ingest- folder."""
    import errno

    song = drop(inbox, "full.mp3")
    full = OSError(errno.ENOSPC, "No space left on device")
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        if failing == "manifest":
            raise full
        real_fsync(fd)

    def link(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if failing == "song" and Path(str(src)) == song:
            raise full
        real_link(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    def replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        moving_song = Path(str(src)) == song
        if (failing == "final rename" and Path(str(src)).name.startswith(INGEST_PREFIX)) or (
            failing == "song" and moving_song
        ):
            raise full
        real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    for _ in range(3):  # the watcher retries; each retry would have left a folder
        with pytest.raises(StoreError, match="No space left on device.*stays in the inbox"):
            store.create(song, "ab" * 32)
    monkeypatch.undo()
    assert song.read_bytes() == b"ID3 fake audio"
    assert sorted(p.name for p in (store.root / "incoming").iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_symlinked_folder_in_a_state_directory_is_not_a_run(store: RunStore, inbox: Path, tmp_path: Path) -> None:
    """A symbolic link to a folder inside a state directory is never listed as a run."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.root / "failed" / "20260101-000000_x_12345678").symlink_to(elsewhere, target_is_directory=True)
    ref = store.create(drop(inbox), "cd" * 32)
    assert [r.run_id for r in store.iter_runs()] == [ref.run_id]


def test_reconcile_sweeps_temp_files_but_not_user_files(store: RunStore, inbox: Path) -> None:
    """Start-up removes our temp files and keeps everything else."""
    ref = store.create(drop(inbox), "56" * 32)
    ours = fsutil.temp_path_for(ref.path / "analysis.json")
    ours.write_text("{half", encoding="utf-8")
    theirs = ref.path / ".hidden-note.tmp"
    theirs.write_text("mine", encoding="utf-8")
    store.reconcile()
    assert not ours.exists()
    assert theirs.exists()


def test_reconcile_finishes_ingest_whose_song_already_moved(store: RunStore, inbox: Path) -> None:
    """An ingest interrupted after the song moved in is completed, never dropped."""
    song = drop(inbox, "late.mp3")
    ref = store.create(song, "78" * 32)
    staging = ref.path.with_name(INGEST_PREFIX + ref.run_id)
    os.replace(ref.path, staging)  # as if the crash came before the final rename
    actions = store.reconcile()
    assert any("finished ingest" in a for a in actions)
    assert (store.root / "incoming" / ref.run_id / "late.mp3").exists()


def test_reconcile_unwinds_ingest_when_song_still_in_inbox(store: RunStore, inbox: Path) -> None:
    """An ingest whose song is still in the inbox is discarded; the song stays put."""
    song = drop(inbox, "early.mp3")
    ref = store.create(song, "9a" * 32)
    staging = ref.path.with_name(INGEST_PREFIX + ref.run_id)
    os.replace(ref.path, staging)
    (staging / "early.mp3").replace(song)  # crash before the song moved in
    store.reconcile()
    assert song.exists()
    assert not staging.exists()
    assert list(store.iter_runs()) == []


def test_reconcile_trusts_directory_over_manifest(store: RunStore, inbox: Path) -> None:
    """A crash between folder rename and manifest write is repaired from the folder."""
    ref = store.create(drop(inbox), "bc" * 32)
    dest = store.root / "analyzed" / ref.run_id
    os.replace(ref.path, dest)
    store.reconcile()
    moved = store.find(ref.run_id)
    assert moved.state is State.ANALYZED
    assert store.load(moved).state is State.ANALYZED


def test_newer_schema_is_refused(store: RunStore, inbox: Path) -> None:
    """A manifest from a newer Tandava is refused with a clear StoreError."""
    ref = store.create(drop(inbox), "de" * 32)
    doc = json.loads(ref.manifest_path.read_text(encoding="utf-8"))
    doc["schema_version"] = 99
    ref.manifest_path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(StoreError, match="schema 99"):
        store.load(ref)


def test_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    """A state root has one owner; the refusal names its pid; after release it can be taken again."""
    store = RunStore(tmp_path / "state")
    release = store.lock()
    lock_file = tmp_path / "state" / ".tandava.lock"
    assert lock_file.read_text(encoding="utf-8") == str(os.getpid())
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        RunStore(tmp_path / "state").lock()
    release()
    release()  # twice is harmless
    assert not lock_file.exists()
    RunStore(tmp_path / "state").lock()()


def test_lock_file_left_by_a_dead_process_is_no_obstacle(tmp_path: Path) -> None:
    """A lock file naming a pid that is gone (or alive but not holding it) is simply locked again."""
    root = tmp_path / "state"
    root.mkdir()
    (root / ".tandava.lock").write_text(str(os.getpid()), encoding="utf-8")
    release = RunStore(root).lock()
    assert (root / ".tandava.lock").read_text(encoding="utf-8") == str(os.getpid())
    release()
