"""Storyboard frames: composed from the segment's mood and energy, with a label no camera move or export cuts."""

from __future__ import annotations

import itertools
import random
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.backends.base import Job
from daemon.backends.framing import EXPORT_ASPECTS, Box, safe_area, widest_move
from daemon.backends.kenburns import Motion, parse_motion
from daemon.backends.storyboard import MOOD_HUES, draw_storyboard, render_storyboard, ridge_line
from daemon.defaults import CLIP_FRAMES

THEMES = Path(__file__).resolve().parent.parent / "daemon" / "writers" / "themes"
SPEEDS = ["", "slow ", "fast ", "static ", "gentle ", "rapid "]
MOVES = ["zoom in", "zoom out", "pan left", "pan right", "tilt up", "tilt down", "orbit", "track",
         "pan left, tilt up", "zoom in, pan right, tilt down", "pull back and pan left", "crane up"]


def motion_prompts() -> list[str]:
    """Every speed with every move, and every motion prompt the shipped themes can write."""
    prompts = [speed + move for speed, move in itertools.product(SPEEDS, MOVES)]
    for theme in THEMES.glob("*.toml"):
        data = tomllib.loads(theme.read_text(encoding="utf-8"))
        prompts += [text for texts in data.get("motion", {}).values() if isinstance(texts, list)
                    for text in texts]
    return prompts + ["", "an unrelated sentence"]


def job(segment: int = 2, index: int = 1, *, size: tuple[int, int] = (832, 480), **detail: Any) -> Job:
    """A storyboard job with the details the images stage records."""
    fields: dict[str, Any] = {"start": segment * 5.0625, "end": (segment + 1) * 5.0625,
                              "mood": "building", "energy": 0.6}
    fields.update(detail)
    return Job(id=f"j{segment}{index}", kind="image", backend="storyboard", segment=segment,
               seed=1_900_000_000 + segment, index=index, width=size[0], height=size[1], output="x.png",
               prompt="Nataraja dancing in a ring of fire on Mount Kailash, cosmic dust, volumetric light",
               detail=fields)


def shown(motion: Motion, frame: int, frames: int, keep: float) -> tuple[float, float, float, float]:
    """The part of the still (shares of its size) that one output frame shows, as ffmpeg's zoompan
    computes it (kenburns.zoompan_filter), after an export keeps the centre ``keep`` of its width."""
    last = max(frames - 1, 1)
    zoom = motion.zoom_from * (motion.zoom_to / motion.zoom_from) ** (frame / last)
    cx = 0.5 + motion.pan_x * (frame / last - 0.5)
    cy = 0.5 + motion.pan_y * (frame / last - 0.5)
    x = min(max(cx - 1 / zoom / 2, 0.0), 1 - 1 / zoom)
    y = min(max(cy - 1 / zoom / 2, 0.0), 1 - 1 / zoom)
    return x + (1 - keep) / 2 / zoom, y, x + (1 + keep) / 2 / zoom, y + 1 / zoom


@pytest.mark.parametrize("size", [(832, 480), (480, 832), (1920, 1080), (416, 240)])
def test_the_label_stays_in_every_frame_of_every_move_and_export(size: tuple[int, int]) -> None:
    """The label's box lies inside what every Ken Burns frame shows, in the video and in each export crop."""
    width, height = size
    _, box = draw_storyboard(job(size=size))
    assert box is not None
    assert safe_area(width, height).contains(box)
    keeps = [1.0, *(min(1.0, aspect * height / width) for aspect in EXPORT_ASPECTS)]
    for prompt in motion_prompts():
        motion = parse_motion(prompt)
        for frame in range(CLIP_FRAMES):
            for keep in keeps:
                left, top, right, bottom = shown(motion, frame, CLIP_FRAMES, keep)
                assert left * width <= box.left and box.right <= right * width, (prompt, frame, keep)
                assert top * height <= box.top and box.bottom <= bottom * height, (prompt, frame, keep)


def test_no_move_goes_beyond_the_limits_the_safe_area_assumes() -> None:
    """Every move the motion parser makes stays within framing's widest zoom and pan."""
    zoom, pan = widest_move()
    for prompt in motion_prompts():
        motion = parse_motion(prompt)
        assert max(motion.zoom_from, motion.zoom_to) <= zoom + 1e-9, prompt
        assert max(abs(motion.pan_x), abs(motion.pan_y)) <= pan + 1e-9, prompt


@pytest.mark.parametrize("size", [(832, 480), (480, 832), (1920, 1080)])
def test_the_label_is_small_and_readable(size: tuple[int, int]) -> None:
    """The label takes under 8 % of the frame, landscape or portrait, and still holds four headings."""
    image, box = draw_storyboard(job(size=size))
    assert box is not None and box.width * box.height < 0.08 * image.width * image.height
    assert box.height >= 7 * 4


def test_a_frame_too_small_for_a_label_gets_none() -> None:
    """A thumbnail-sized frame is drawn without a label rather than with a cut one."""
    image, box = draw_storyboard(job(size=(64, 64)))
    assert box is None and image.size == (64, 64)


@pytest.mark.parametrize("segment", [1, 2])
def test_moods_give_measurably_different_pictures(segment: int) -> None:
    """The same segment and candidate in any two moods differ by ≥ 6/255 on average, lit or dim."""
    frames = {mood: np.asarray(render_storyboard(job(segment, mood=mood, energy=0.5)), dtype=np.float32)
              for mood in MOOD_HUES}
    for a, b in itertools.combinations(frames, 2):
        assert np.abs(frames[a] - frames[b]).mean() >= 6, (a, b)


def test_energy_sharpens_the_ridges() -> None:
    """Loud music draws jagged ridges, quiet music rolling ones: the ridge line's bends grow with the energy."""
    xs = np.linspace(0.0, 1.0, 832, dtype=np.float32)

    def bends(energy: float) -> float:
        line = ridge_line(xs, energy, random.Random(7), height=0.1)
        return float(np.abs(np.diff(line, 2)).mean())

    assert bends(1.0) > 3 * bends(0.0)
    assert bends(0.5) > bends(0.0)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_light_sits_on_a_power_point(index: int) -> None:
    """The sun or moon's disc is centred on a rule-of-thirds intersection."""
    image, box = draw_storyboard(job(segment=2, index=index, energy=0.3))
    assert box is not None
    lightness = np.asarray(image, dtype=np.float32).min(axis=2)
    lightness[box.top:box.bottom, box.left:box.right] = 0  # the label's white text
    ys, xs = np.nonzero(lightness > 0.93 * lightness.max())
    cx, cy = xs.mean() / image.width, ys.mean() / image.height
    assert min(abs(cx - 1 / 3), abs(cx - 2 / 3)) < 0.02 and abs(cy - 1 / 3) < 0.02


def test_safe_area_is_centred_and_inside_the_frame() -> None:
    """The safe area is a centred box inside the frame, narrower than the 9:16 crop of a landscape frame."""
    area = safe_area(832, 480)
    assert isinstance(area, Box) and 0 < area.left < area.right < 832 and 0 < area.top < area.bottom < 480
    assert abs((area.left + area.right) / 2 - 416) <= 1 and abs((area.top + area.bottom) / 2 - 240) <= 1
    assert area.width < 480 * 9 / 16
