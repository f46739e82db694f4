"""The Ken Burns backend: motion prompts to camera moves, exact clips from real ffmpeg."""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from daemon.backends.base import Job, VideoBackend, noop_progress
from daemon.backends.kenburns import KenBurnsBackend, parse_motion
from daemon.errors import RUN_PLACEHOLDER, PermanentError, TransientError
from daemon.video import media

W, H = 416, 240
SQUARE = 60  # side of the white square at the centre of the test still


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    """The ffmpeg Tandava would use."""
    return media.find_ffmpeg()


@pytest.fixture
def still(tmp_path: Path) -> Path:
    """A dark still with a white square at its centre, at the clip's size."""
    im = Image.new("RGB", (W, H), (10, 10, 40))
    im.paste((255, 255, 255), (W // 2 - SQUARE // 2, H // 2 - SQUARE // 2, W // 2 + SQUARE // 2, H // 2 + SQUARE // 2))
    path = tmp_path / "s001_c00.png"
    im.save(path)
    return path


def clip_job(source: Path, prompt: str, *, frames: int = 33, size: tuple[int, int] = (W, H)) -> Job:
    """A clip job as the render stage records it (paths already made absolute)."""
    slug = re.sub(r"[^a-z]+", "_", prompt.casefold()).strip("_") or "default"
    out = source.parent / "clips" / f"{slug}_{frames}.mp4"
    return Job(id="run-clip-s001-i00-7", kind="clip", backend="kenburns", segment=1, seed=7,
               prompt=prompt, width=size[0], height=size[1], frames=frames, fps=16,
               source=str(source), output=str(out))


def make(ffmpeg: str, job: Job) -> Path:
    """Run the job to completion."""
    return KenBurnsBackend(ffmpeg).collect(job, progress=noop_progress, stop=threading.Event())


def first_and_last(video: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first and last decoded frames, as greyscale arrays."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    return frames[0].astype(np.float32), frames[-1].astype(np.float32)


def square(frame: np.ndarray) -> tuple[float, float, float]:
    """The white square's width and centre (x, y) on screen, from its bright pixels."""
    ys, xs = np.nonzero(frame > 128)
    return float(xs.max() - xs.min() + 1), float(xs.mean()), float(ys.mean())


# --- parse_motion -------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "zoom", "pan"), [
    ("slow zoom in", "in", (0, 0)),
    ("slow zoom out, pan right", "out", (1, 0)),
    ("Panning left across the peaks", "hold", (-1, 0)),
    ("slow tilt up toward the peaks", "hold", (0, -1)),
    ("crane down into the valley", "hold", (0, 1)),
    ("zoom in, pan left, tilt down", "in", (-1, 1)),
    ("pull back to reveal Mount Kailash", "out", (0, 0)),
    ("rapid zoom out to reveal the cosmos", "out", (0, 0)),
    ("dolly forward", "in", (0, 0)),
    ("dynamic push in", "in", (0, 0)),
    ("fast orbit", "in", (1, 0)),
    ("slow counterclockwise orbit around the figure", "in", (-1, 0)),
    ("handheld tracking shot", "hold", (1, 0)),
    ("static shot with drifting mist", "in", (0, 0)),
    ("zoom out, then zoom in", "out", (0, 0)),
    ("", "in", (0, 0)),
    ("the parser has never seen this", "in", (0, 0)),
])
def test_parse_motion(prompt: str, zoom: str, pan: tuple[int, int]) -> None:
    """Motion prompts map to the expected zoom direction and pan direction."""
    motion = parse_motion(prompt)
    direction = ("in" if motion.zoom_to > motion.zoom_from
                 else "out" if motion.zoom_to < motion.zoom_from else "hold")
    assert direction == zoom
    assert (int(np.sign(motion.pan_x)), int(np.sign(motion.pan_y))) == pan


def test_speed_words_scale_the_move() -> None:
    """static < slow < plain < fast, for zoom and pan alike."""
    def amount(prompt: str) -> float:
        m = parse_motion(prompt)
        return abs(m.zoom_to / m.zoom_from - 1) + abs(m.pan_x) + abs(m.pan_y)

    for move in ("zoom in", "pan left"):
        speeds = [amount(f"{word} {move}") for word in ("static", "slow", "", "fast")]
        assert speeds == sorted(speeds) and len(set(speeds)) == 4, move


@given(st.text(max_size=300))
def test_parse_motion_never_fails_and_stays_inside_the_image(text: str) -> None:
    """Any text (LLM output included) gives a gentle move whose view never leaves the image."""
    m = parse_motion(text)
    assert 1.0 <= m.zoom_from <= 1.5 and 1.0 <= m.zoom_to <= 1.5
    room = 1.0 - 1.0 / min(m.zoom_from, m.zoom_to)
    assert abs(m.pan_x) <= room + 1e-9 and abs(m.pan_y) <= room + 1e-9


# --- clips --------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "size"), [(81, (832, 480)), (1, (W, H)), (20, (240, 416))])
def test_clip_has_exact_frames_size_and_format(ffmpeg: str, still: Path, frames: int,
                                               size: tuple[int, int]) -> None:
    """A clip is H.264 yuv420p, no audio, with exactly the frames, size and rate asked for."""
    out = make(ffmpeg, clip_job(still, "slow zoom out, pan right", frames=frames, size=size))
    info = media.probe(out)
    assert (info.frames, info.width, info.height) == (frames, *size)
    assert (info.video_codec, info.pix_fmt, info.fps, info.has_audio) == ("h264", "yuv420p", 16.0, False)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_zoom_in_grows_and_zoom_out_shrinks_the_picture(ffmpeg: str, still: Path) -> None:
    """Zooming in makes the centre square larger from first frame to last; zooming out smaller."""
    first, last = first_and_last(make(ffmpeg, clip_job(still, "rapid zoom in")))
    assert square(last)[0] > square(first)[0] * 1.12
    first, last = first_and_last(make(ffmpeg, clip_job(still, "rapid zoom out")))
    assert square(last)[0] < square(first)[0] / 1.12


def test_pan_right_moves_the_picture_left(ffmpeg: str, still: Path) -> None:
    """Panning right turns the view right, so what is in the picture slides left on screen."""
    first, last = first_and_last(make(ffmpeg, clip_job(still, "pan right")))
    assert square(last)[1] < square(first)[1] - 10
    first, last = first_and_last(make(ffmpeg, clip_job(still, "tilt up")))
    assert square(last)[2] > square(first)[2] + 5


def test_a_still_of_another_shape_is_cropped_to_cover(ffmpeg: str, tmp_path: Path) -> None:
    """A portrait photo fills a landscape clip: the edges show the photo, not bars."""
    source = tmp_path / "portrait.jpg"
    Image.new("RGB", (300, 900), (200, 40, 40)).save(source)
    first, _ = first_and_last(make(ffmpeg, clip_job(source, "static shot", frames=3)))
    assert first[:, :8].mean() > 40 and first[:, -8:].mean() > 40


def test_a_missing_image_is_a_permanent_error(ffmpeg: str, tmp_path: Path) -> None:
    """A clip whose image is gone fails naming the file and how to retry."""
    with pytest.raises(PermanentError, match="missing") as info:
        make(ffmpeg, clip_job(tmp_path / "gone.png", "zoom in"))
    assert "gone.png" in info.value.reason and RUN_PLACEHOLDER in info.value.hint


def test_an_unreadable_image_is_a_permanent_error(ffmpeg: str, tmp_path: Path) -> None:
    """A corrupt still fails with ffmpeg's reason and leaves no clip or temp file behind."""
    source = tmp_path / "broken.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    job = clip_job(source, "zoom in")
    with pytest.raises(PermanentError, match="broken.png"):
        make(ffmpeg, job)
    assert list(Path(job.output).parent.iterdir()) == []


def test_an_odd_size_is_refused_with_the_setting_to_change(ffmpeg: str, still: Path) -> None:
    """H.264 in yuv420p needs even sides; the error names video.width and video.height."""
    with pytest.raises(PermanentError, match="even") as info:
        make(ffmpeg, clip_job(still, "zoom in", size=(417, 240)))
    assert "video.width" in info.value.hint


@pytest.mark.skipif(os.name == "nt", reason="the stand-in ffmpeg is a POSIX shell script")
def test_a_clip_that_reads_back_wrong_is_a_transient_error(tmp_path: Path, still: Path) -> None:
    """When the file ffmpeg leaves is not a valid clip, the job is retried, and nothing is renamed."""
    fake = tmp_path / "ffmpeg"
    # Exits 0 after writing a few bytes to its last argument, the output.
    fake.write_text('#!/bin/sh\nfor last; do :; done\nprintf "not a video" > "$last"\n', encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    job = clip_job(still, "zoom in")
    with pytest.raises(TransientError, match="kenburns produced a broken clip"):
        make(str(fake), job)
    assert list(Path(job.output).parent.iterdir()) == []


def test_backend_shape(ffmpeg: str) -> None:
    """It is a VideoBackend on the CPU queue that makes clips of any length and never resumes."""
    backend = KenBurnsBackend(ffmpeg)
    assert isinstance(backend, VideoBackend)
    assert (backend.name, backend.resource, backend.max_frames) == ("kenburns", "cpu", None)
    assert not backend.can_resume(clip_job(Path(sys.prefix) / "x.png", ""))
