"""From a song to a music video: every state visited, the result probed, cuts on the planned beats."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.app import run
from daemon.approval.store import ApprovalStore
from daemon.backends.base import Job, Progress
from daemon.config import Settings
from daemon.music.segments_file import read_segments
from daemon.music.synth import write_song
from daemon.runs.engine import Engine, Stage
from daemon.runs.states import Event, State
from daemon.runs.store import RunStore
from daemon.stages.render import Render
from daemon.video import media


def drop_song(settings: Settings, name: str = "tandav.wav", seconds: float = 20.0, bpm: float = 120.0) -> Path:
    settings.paths.inbox.mkdir(parents=True, exist_ok=True)
    song = settings.paths.inbox / name
    write_song(song, seconds, bpm, section_change_at=seconds / 2)
    old = time.time() - 60
    os.utime(song, (old, old))
    return song


def only_run(settings: Settings, state: State) -> Path:
    runs = list((settings.paths.state_root / state.value).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def auto(settings: Settings) -> Settings:
    """Auto approval, storyboard images, Ken Burns clips, hard cuts."""
    settings.approval.mode = "auto"
    settings.assembly.transition = "none"
    settings.images.candidates = 1
    return settings


def frame_differences(video: Path) -> np.ndarray:
    """Mean absolute difference between consecutive frames, on a small grey version."""
    import av

    previous, diffs = None, []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            grey = np.asarray(frame.to_image().convert("L").resize((104, 60)), dtype=np.float32)
            if previous is not None:
                diffs.append(float(np.abs(grey - previous).mean()))
            previous = grey
    return np.array(diffs)


def test_song_becomes_a_music_video_with_cuts_on_the_beats(auto: Settings) -> None:
    """A synthesized song goes through every state to rendered/, and the video's cuts land on planned beats."""
    drop_song(auto)
    assert run(auto, threading.Event(), once=True) == 0
    run_dir = only_run(auto, State.RENDERED)
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert [h["state"] for h in manifest["history"]] == [
        "incoming", "analyzed", "imaged", "pending_approval", "approved", "rendered"]

    analysis = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    fps = auto.video.fps
    info = media.probe(run_dir / "final.mp4")
    assert info.has_audio and info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert (info.width, info.height) == (auto.video.width, auto.video.height)
    assert info.frames == round(analysis["duration"] * fps)
    assert abs(info.duration - analysis["duration"]) <= 1 / fps + 0.05  # container rounding of audio
    for name in ("thumbnail.jpg", "contact_sheet.png"):
        assert (run_dir / name).stat().st_size > 1000

    segments = read_segments(run_dir)
    planned = [round(s.start * fps) for s in segments[1:]]
    beats = np.array(analysis["beats"])
    for s in segments[1:]:
        assert np.min(np.abs(beats - s.start)) < 0.02  # the plan cuts on beats
    diffs = frame_differences(run_dir / "final.mp4")
    threshold = max(8.0, float(np.median(diffs)) * 6)
    cuts = [i + 1 for i, d in enumerate(diffs) if d > threshold]
    for frame in planned:
        assert any(abs(c - frame) <= 1 for c in cuts), (frame, cuts)
    for c in cuts:
        assert any(abs(c - frame) <= 1 for frame in planned), (c, planned)


def test_manual_approval_from_the_cli_then_render(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A manual run waits in pending_approval, saying so in status, until the CLI approves; then renders."""
    from daemon.cli import main

    settings.assembly.transition = "crossfade"
    drop_song(settings, seconds=12.0)
    run(settings, threading.Event(), once=True)
    pending = only_run(settings, State.PENDING_APPROVAL)
    assert main(["--config", str(settings.config_file), "status"]) == 0
    assert "waiting for a person to approve" in capsys.readouterr().out
    assert main(["--config", str(settings.config_file), "approve", pending.name, "--all"]) == 0
    run(settings, threading.Event(), once=True)
    run_dir = only_run(settings, State.RENDERED)
    decisions = ApprovalStore(RunStore(settings.paths.state_root)).load(
        RunStore(settings.paths.state_root).find(run_dir.name)).decisions
    assert decisions and {d.channel for d in decisions} == {"cli"}
    info = media.probe(run_dir / "final.mp4")
    analysis = json.loads((run_dir / "analysis.json").read_text(encoding="utf-8"))
    assert info.frames == round(analysis["duration"] * settings.video.fps)


class Garbage:
    """A video backend that writes a file that is not a video."""

    name = "garbage"
    resource = "cpu"
    max_frames = None

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, job: Job) -> None:
        pass

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        self.calls += 1
        Path(job.output).write_bytes(b"\x00not a video" * 100)
        return Path(job.output)

    def can_resume(self, job: Job) -> bool:
        return False


def test_broken_clips_are_remade_then_the_run_fails_clearly(auto: Settings) -> None:
    """A backend that keeps making broken clips is retried, then the run fails naming the backend."""
    auto.engine.attempts = 3
    drop_song(auto, seconds=8.0)
    garbage = Garbage()
    stages = [s for s in __import__("daemon.stages.pipeline", fromlist=["build_stages"]).build_stages(auto)
              if s.name != "render"]
    stages.append(Stage("render", State.APPROVED, Event.RENDER_DONE, Render(auto, lambda s: garbage)))
    store = RunStore(auto.paths.state_root)
    store.ensure_layout()
    from daemon.intake.intake import Intake

    for path in auto.paths.inbox.iterdir():
        Intake(store, auto.paths.inbox).accept(path)
    Engine(store, stages, tick_seconds=0.01, backoff_initial=0.01, backoff_max=0.02, attempts=3).run(
        threading.Event(), once=True)
    failed = only_run(auto, State.FAILED)
    error = json.loads((failed / "error.json").read_text(encoding="utf-8"))
    assert error["cause"] == "BrokenClip" and "garbage" in error["reason"]
    assert error["retry"] == f"tandava retry {failed.name}"
    assert garbage.calls == 3
    assert not (failed / "final.mp4").exists()
    assert list((auto.paths.state_root / "rendered").iterdir()) == []


@contextlib.contextmanager
def tiny_filesystem(path: Path, megabytes: int) -> Iterator[Path]:
    """A size-limited tmpfs mounted at ``path`` (root on Linux), or skip."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root on Linux")
    path.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_while_rendering_fails_cleanly(tmp_path: Path, auto: Settings) -> None:
    """With the state root's disk full at render time, the run fails saying so and nothing half-written remains."""
    with tiny_filesystem(tmp_path / "small", 24) as small:
        auto.paths.state_root = small / "state"
        auto.approval.mode = "manual"
        auto.engine.attempts = 2
        drop_song(auto, seconds=8.0)
        run(auto, threading.Event(), once=True)
        pending = only_run(auto, State.PENDING_APPROVAL)
        store = RunStore(auto.paths.state_root)
        ApprovalStore(store).decide(pending.name, 0, 0, "approve", by="t", channel="cli")
        for segment in read_segments(pending)[1:]:
            ApprovalStore(store).decide(pending.name, segment.index, 0, "approve", by="t", channel="cli")
        free = shutil.disk_usage(small).free
        filler = small / "filler"
        with filler.open("wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * (free - 48 * 1024))
        run(auto, threading.Event(), once=True)
        failed = only_run(auto, State.FAILED)
        error = json.loads((failed / "error.json").read_text(encoding="utf-8"))
        assert error["cause"] == "DiskFull" and "disk is full" in error["reason"]
        assert not (failed / "final.mp4").exists()
        assert [p for p in failed.rglob("*") if ".tandava-" in p.name] == []
        assert list((auto.paths.state_root / "rendered").iterdir()) == []


def test_a_folder_of_photos_beside_the_song_becomes_a_slideshow(auto: Settings) -> None:
    """With the folder backend, photos in a folder named like the song are the video's images, in order."""
    from PIL import Image

    auto.images.backend = "folder"
    song = drop_song(auto, name="Kailash.wav", seconds=12.0)
    photos = song.with_suffix("")  # inbox/Kailash/
    photos.mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for i, colour in enumerate(colours):
        Image.new("RGB", (1600, 900), colour).save(photos / f"photo{i + 1}.jpg", quality=95)
    assert run(auto, threading.Event(), once=True) == 0
    run_dir = only_run(auto, State.RENDERED)
    segments = read_segments(run_dir)
    import av

    with av.open(str(run_dir / "final.mp4")) as container:
        frames = [np.asarray(f.to_image()) for f in container.decode(video=0)]
    for segment in segments:
        middle = frames[round((segment.start + segment.end) / 2 * auto.video.fps)]
        expected = np.array(colours[segment.index % len(colours)], dtype=np.float32)
        assert np.abs(middle.reshape(-1, 3).mean(axis=0) - expected).max() < 25, segment.index
    assert sorted(p.name for p in photos.iterdir()) == [f"photo{i}.jpg" for i in range(1, 5)]  # untouched
