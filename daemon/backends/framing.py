"""How far a clip's camera may move over a still, and the part of the still every frame shows.

How this works: the Ken Burns backend zooms into a still and pans across it;
the assembly may then crop the video to 9:16 for phones. Text burned into a
still (the storyboard's label) is readable in the video only where no frame
of any move, under any export crop, cuts it off. That region is the *safe
area*. It follows from three numbers: the largest zoom a move reaches, the
farthest its view's centre travels, and the narrowest export crop. The
motion limits live here, not in ``kenburns``, so the storyboard and the Ken
Burns backend agree on them without importing each other.

The bound: a view at zoom ``z`` is ``1/z`` of the image wide, and its centre
stays within ``pan/2`` of the image's middle, so the strip ``1/(2z) - pan/2``
either side of the middle is in every frame (ffmpeg's clamping only pushes
a view inwards, which keeps that strip in it). An export that keeps the
centre ``f`` of each frame's width keeps ``f/(2z) - pan/2`` either side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from daemon.video.assembly import VERTICAL_ASPECT

# Magnification added over a clip at normal speed (1.0 -> 1.12 in 5 s), and
# how far a pan moves the view, as a share of the image width or height.
ZOOM_STEP = 0.12
PAN_STEP = 0.08
# "slow", "fast" and "static" scale both; static keeps a breath of motion so
# a still does not look frozen.
SLOW, FAST, STATIC = 0.6, 1.6, 0.2
# Width over height of every crop an export may take from the video's frames.
EXPORT_ASPECTS: tuple[float, ...] = (VERTICAL_ASPECT[0] / VERTICAL_ASPECT[1],)


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: left and top inclusive, right and bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def contains(self, other: Box) -> bool:
        return (self.left <= other.left and self.top <= other.top
                and other.right <= self.right and other.bottom <= self.bottom)


def widest_move() -> tuple[float, float]:
    """The largest zoom any camera move reaches and the farthest its centre travels (share of the image).

    A move is at most ``FAST``; a pan makes room first (its base zoom is
    ``1/(1 - pan)``) and then zooms half a step, a zoom alone takes a full step.
    """
    pan = PAN_STEP * FAST
    with_pan = 1.0 / (1.0 - pan) * (1.0 + ZOOM_STEP * FAST * 0.5)
    without_pan = 1.0 + ZOOM_STEP * FAST
    return max(with_pan, without_pan), pan


def safe_area(width: int, height: int, *, margin: float = 0.01) -> Box:
    """The part of a ``width``×``height`` still that every frame of every move shows, in every export.

    ``margin`` (a share of the size) keeps text off the very edge of what shows.
    """
    zoom, pan = widest_move()
    # The narrowest export keeps this share of a frame's width (1: the whole frame).
    keep = min([1.0, *(aspect * height / width for aspect in EXPORT_ASPECTS)])
    half_w = keep / (2.0 * zoom) - pan / 2.0 - margin
    half_h = 1.0 / (2.0 * zoom) - pan / 2.0 - margin
    left, right = _span(width, half_w)
    top, bottom = _span(height, half_h)
    return Box(left, top, right, bottom)


def _span(size: int, half: float) -> tuple[int, int]:
    """Whole pixels inside ``size * (0.5 ± half)``, rounded inwards."""
    low = math.ceil(size * (0.5 - max(0.0, half)))
    high = math.floor(size * (0.5 + max(0.0, half)))
    return low, max(low, high)
