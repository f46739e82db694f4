"""The Ken Burns video backend: motion prompts to camera moves, exact clips from ffmpeg."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from daemon import media
from daemon.backends import Job, noop_progress
from daemon.errors import PermanentError
from daemon.kenburns import KenBurnsBackend, Motion, parse_motion


@pytest.mark.parametrize(("prompt", "zoom", "pan"), [
    ("slow zoom in", "in", (0, 0)),
    ("slow zoom out, pan right", "out", (1, 0)),
    ("pan left across the peaks", "hold", (-1, 0)),
    ("tilt up to the sky", "hold", (0, -1)),
    ("pull back to reveal Mount Kailash", "out", (0, 0)),
    ("fast orbit, the trishula blazing", "hold", (1, 0)),
    ("something the parser has never seen", "in", (0, 0)),
])
def test_parse_motion(prompt: str, zoom: str, pan: tuple[int, int]) -> None:
    """Motion prompts map to the expected zoom direction and pan."""
    motion = parse_motion(prompt)
    direction = "in" if motion.zoom_to > motion.zoom_from else "out" if motion.zoom_to < motion.zoom_from else "hold"
    assert direction == zoom
    assert (np.sign(motion.pan_x), np.sign(motion.pan_y)) == pan
    assert min(motion.zoom_from, motion.zoom_to) >= 1.0  # never shows outside the image


@given(st.text())
def test_parse_motion_never_fails(text: str) -> None:
    """Any text (LLM output included) gives a valid, bounded camera move."""
    motion = parse_motion(text)
    assert isinstance(motion, Motion)
    assert 1.0 <= motion.zoom_from <= 2.0 and 1.0 <= motion.zoom_to <= 2.0
    assert -1.0 <= motion.pan_x <= 1.0 and -1.0 <= motion.pan_y <= 1.0


def clip_job(tmp_path: Path, prompt: str, frames: int = 33) -> Job:
    source = tmp_path / "still.png"
    if not source.exists():
        im = Image.new("RGB", (416, 240), (10, 10, 40))
        draw = ImageDraw.Draw(im)
        for x in range(0, 416, 26):
            draw.line([(x, 0), (x, 240)], fill=(250, 250, 250), width=2)
        im.save(source)
    return Job(id="c", kind="clip", backend="kenburns", segment=0, seed=1, prompt=prompt, width=416, height=240,
               frames=frames, fps=16, source=str(source), output=str(tmp_path / f"{prompt[:8]}.mp4"))


def stripes_count(video: Path, which: int) -> int:
    """Bright vertical stripes across the middle row of frame ``which``: fewer means zoomed in."""
    import av

    with av.open(str(video)) as container:
        frames = list(container.decode(video=0))
    row = np.asarray(frames[which].to_image().convert("L"))[120] > 128
    return int(np.count_nonzero(row[1:] & ~row[:-1]))


def test_clip_has_exact_frames_size_and_format(tmp_path: Path) -> None:
    """A clip is H.264 yuv420p with exactly the frames and size asked for."""
    backend = KenBurnsBackend(media.find_ffmpeg())
    out = backend.collect(clip_job(tmp_path, "slow zoom in"), progress=noop_progress, stop=threading.Event())
    info = media.probe(out)
    assert (info.frames, info.width, info.height) == (33, 416, 240)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert [p.name for p in tmp_path.iterdir() if ".tandava-" in p.name] == []


def test_zoom_in_and_zoom_out_move_the_right_way(tmp_path: Path) -> None:
    """Zooming in shows fewer stripes at the end than at the start; zooming out the opposite."""
    backend = KenBurnsBackend(media.find_ffmpeg())
    zin = backend.collect(clip_job(tmp_path, "zoom in"), progress=noop_progress, stop=threading.Event())
    zout = backend.collect(clip_job(tmp_path, "zoom out"), progress=noop_progress, stop=threading.Event())
    assert stripes_count(zin, -1) < stripes_count(zin, 0)
    assert stripes_count(zout, -1) > stripes_count(zout, 0)


def test_missing_image_is_a_permanent_error(tmp_path: Path) -> None:
    """A clip whose approved image is gone fails with a reason, not a crash."""
    job = clip_job(tmp_path, "zoom in").model_copy(update={"source": str(tmp_path / "gone.png")})
    with pytest.raises(PermanentError, match="missing"):
        KenBurnsBackend(media.find_ffmpeg()).collect(job, progress=noop_progress, stop=threading.Event())
