"""Quality checks on what a backend made, before a person sees it or the assembly uses it.

Why: a ComfyUI call that "succeeds" can still hand back a black image, a clip
that stands still, or a clip with a white frame in the middle. Every check
here turns a file into a few figures, and the figures into reasons a person
can read; ``check_image``/``check_clip`` raise ``QCFailed`` with both, which
the engine answers by making the output again with a new seed (bounded), then
failing the run with these figures.

How this works:

- An image is read with PIL as greyscale, shrunk to a thumbnail, and reduced
  to its mean and spread of luma and a 64-bit difference hash (dHash: a 9x8
  thumbnail, one bit per horizontal neighbour pair, "is the right one
  brighter"). Candidates of one segment whose hashes differ in few bits show
  the same picture: the seed did not reach the sampler.
- A clip is decoded with PyAV; every frame is shrunk by libswscale (area
  averaging) to a small greyscale grid, so an 81-frame 832x480 clip costs
  about 0.2 s, nearly all of it decoding. From the stack of small frames
  come the luma of each frame (black, flashes), the mean absolute difference
  of consecutive frames (motion) and the distance of the first frame to the
  image it started from.

Luma is 0..255 throughout (libswscale expands the video's limited range).
Pure functions (``image_problem``, ``clip_problems``) decide; only
``image_stats``/``clip_stats`` touch files.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.errors import RUN_PLACEHOLDER, PermanentError, QCFailed

# 256 px keeps a flat image's spread honest (JPEG noise is not averaged away)
# and costs ~10 ms for a 1 MP PNG.
THUMBNAIL = 256
# Motion is measured on frames 128 px wide. Measured on 832x480 H.264 test
# clips: a pan of 0.25 px/frame gives 0.98 here but 0.50 at 64 px, while
# faint noise (sigma 3) gives 0.24 and 0.18: the wider grid doubles the
# margin between "slow" and "still" for no time that shows (decoding is 90 %).
GRID_WIDTH = 128
# The first frame is compared with the start image at 64x36: fine enough to
# tell two pictures apart, coarse enough that Wan's re-encoding does not count.
FIRST_FRAME_SIZE = (64, 36)


@dataclass(frozen=True)
class ImageLimits:
    # A failed VAE decode (NaNs) comes back as luma 0; a moonlit scene is 20-30.
    # 8 is below any picture a person would want and above JPEG noise on black.
    black_luma: float = 8.0
    # A uniform grey or brown field (a sampler that produced nothing) spreads
    # < 2 levels (grey with sigma-1 noise: 0.4); our night test picture 10.8;
    # fog or a clear sky still spreads 10+ over a whole frame.
    flat_std: float = 6.0
    # Measured: a picture brightened and re-saved as JPEG differs in 0 of 64
    # bits; unrelated textures in 21-44 (median 33); storyboard candidates of
    # one segment (same gradient, other shapes) in 15+. 5 leaves room for
    # retouching without touching real alternatives.
    duplicate_distance: int = 5


@dataclass(frozen=True)
class ImageStats:
    """The figures QC takes from an image."""

    mean_luma: float
    std_luma: float
    dhash: int
    width: int
    height: int


def image_stats(path: Path) -> ImageStats:
    """Luma mean, spread and dHash of an image; raises PermanentError naming the file if unreadable."""
    grey, size = _open_grey(path, (THUMBNAIL, THUMBNAIL))
    pixels = np.asarray(grey, dtype=np.float32)
    return ImageStats(
        mean_luma=float(pixels.mean()),
        std_luma=float(pixels.std()),
        dhash=_dhash(grey),
        width=size[0],
        height=size[1],
    )


def hash_distance(a: int, b: int) -> int:
    """How many of the 64 dHash bits differ."""
    return (a ^ b).bit_count()


def image_problem(
    stats: ImageStats, others: Sequence[ImageStats] = (), *, limits: ImageLimits = ImageLimits()
) -> str | None:
    """None when the image is fine; else a short reason for a person."""
    if stats.mean_luma < limits.black_luma:
        return f"black (mean luma {stats.mean_luma:.1f} < {limits.black_luma:g})"
    if stats.std_luma < limits.flat_std:
        return f"flat (luma spread {stats.std_luma:.1f} < {limits.flat_std:g})"
    if others:
        distance = min(hash_distance(stats.dhash, other.dhash) for other in others)
        if distance <= limits.duplicate_distance:
            return f"near-duplicate of another candidate (hash distance {distance} <= {limits.duplicate_distance})"
    return None


def check_image(
    path: Path, others: Sequence[ImageStats] = (), *, limits: ImageLimits = ImageLimits()
) -> ImageStats:
    """The image's stats if it passes; raises QCFailed with the reason and figures if not.

    ``others`` are the stats of the segment's candidates already accepted.
    """
    stats = image_stats(path)
    problem = image_problem(stats, others, limits=limits)
    if problem is None:
        return stats
    figures = {"mean_luma": stats.mean_luma, "std_luma": stats.std_luma,
               "width": float(stats.width), "height": float(stats.height)}
    if others:
        figures["hash_distance"] = float(min(hash_distance(stats.dhash, o.dhash) for o in others))
    if problem.startswith("near-duplicate"):
        advice = "check that the workflow's seed input is mapped (every seed gives the same picture)"
    else:
        advice = ("check the image workflow's model, VAE and precision settings "
                  "(a black or flat image usually means the model produced NaNs)")
    raise QCFailed(f"{path.name} is {problem}", _hint(advice), figures=figures)


@dataclass(frozen=True)
class ClipLimits:
    # As for images: black is a failed decode, not a night scene (luma 20-30).
    black_luma: float = 8.0
    # A fade to or from black is a few frames; most of the clip dark is a failure.
    black_fraction: float = 0.5
    # Median difference of consecutive frames. Measured on 832x480 H.264 test
    # clips: a pan of 0.25 px/frame (slower than Wan's "gentle") 0.98, of 0.5
    # px/frame 1.88; a 5 % zoom over the clip 0.65; a night scene (luma 24,
    # spread 12) panning 0.5 px/frame 0.54. A repeated frame 0.00; still
    # frames under noise of sigma 1.5 / 2 / 3: 0.05 / 0.14 / 0.24. Ken Burns
    # "static" (2.4 % zoom) measures 0.37, too close: a caller that wants a
    # still passes min_motion=0.
    min_motion: float = 0.35
    # A pair below this is the same picture up to codec rounding: a repeated
    # frame gives 95 % such pairs (the encoder refines its first frames),
    # sigma-1 noise 99 %, the slowest pan 0-1 %. static_fraction tells a stuck
    # sampler (repeats) from a merely slow clip; with min_motion=0 it still
    # catches repeated frames.
    frozen_pair: float = 0.1
    max_static_fraction: float = 0.9
    # Two white frames in a mid-grey clip measure 131; a moving clip 0.1 and
    # a hard cut (luma 50 -> 190) 0, since a cut does not return. Light that
    # changes in a scene (a lamp, a turn to the sun) builds over several frames,
    # so the median of the neighbours follows it. Lightning in a storm scene
    # jumps too: a price we accept.
    flash_jump: float = 60.0
    max_flash_frames: int = 0
    # Distance 0..255 at 64x36. Measured: a clip of the start image 0.4 (2.6 at
    # 208 px); that image 20 levels brighter 20, recropped by 5 % 22-25, of
    # another aspect 19-22; unrelated pictures of the same brightness and
    # contrast 36-43, of other brightness 46+. 40 would pass some unrelated
    # pictures; 30 sits between the two groups.
    max_first_frame_distance: float = 30.0


@dataclass(frozen=True)
class ClipStats:
    """The figures QC takes from a clip.

    ``max_luma_jump`` is the largest flash-shaped jump: a frame's mean luma
    against the median of its two neighbours each side, counted only where
    the clip returns to the level it left (frames t-2 and t+2 agree). A scene
    cut changes level for good and is not a flash.
    """

    frames: int
    width: int
    height: int
    fps: float
    mean_luma: float
    black_fraction: float
    motion: float
    static_fraction: float
    max_luma_jump: float
    flash_frames: int
    first_frame_distance: float | None

    def figures(self) -> dict[str, float]:
        """Every figure as a float, for QCFailed and the log; a missing distance is left out."""
        return {f.name: float(v) for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}


def clip_stats(path: Path, *, start_image: Path | None = None, limits: ClipLimits = ClipLimits()) -> ClipStats:
    """Decode a clip and measure it; raises QCFailed(cause="BrokenClip") if it cannot be decoded.

    ``limits`` supplies the per-frame thresholds (black, repeated, flash).
    """
    small, first, (width, height, fps) = _decode(path)
    luma = small.mean(axis=(1, 2))
    pairs = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2)) if len(small) > 1 else np.zeros(1)
    max_jump, flashes = _flashes(luma, limits.flash_jump)
    distance = None
    if start_image is not None:
        image, _ = _open_grey(start_image, FIRST_FRAME_SIZE, crop_to=(width, height))
        distance = float(np.abs(np.asarray(image, dtype=np.float32) - first).mean())
    return ClipStats(
        frames=len(small), width=width, height=height, fps=fps,
        mean_luma=float(luma.mean()),
        black_fraction=float((luma < limits.black_luma).mean()),
        motion=float(np.median(pairs)),
        static_fraction=float((pairs < limits.frozen_pair).mean()),
        max_luma_jump=max_jump, flash_frames=flashes,
        first_frame_distance=distance,
    )


def clip_problems(stats: ClipStats, *, expected_frames: int | None, limits: ClipLimits = ClipLimits()) -> list[str]:
    """Reasons the clip is unusable, for a person; empty when it is fine."""
    problems = []
    if expected_frames is not None and stats.frames != expected_frames:
        # The timeline places clips by frame count; a short clip leaves a gap.
        problems.append(f"{stats.frames} frames, {expected_frames} expected")
    if stats.black_fraction > limits.black_fraction:
        # A black clip is also still and unlike its image: naming those too
        # would send a person after three problems where there is one.
        problems.append(f"black ({stats.black_fraction:.0%} of frames darker than luma {limits.black_luma:g})")
        return problems
    repeats = f"{stats.static_fraction:.0%} of frames repeat the one before"
    if stats.motion < limits.min_motion:
        extra = f"; {repeats}" if stats.static_fraction > limits.max_static_fraction else ""
        problems.append(f"frozen (motion {stats.motion:.2f} < {limits.min_motion:g}{extra})")
    elif stats.static_fraction > limits.max_static_fraction:
        problems.append(f"frozen ({repeats}, more than {limits.max_static_fraction:.0%})")
    if stats.flash_frames > limits.max_flash_frames:
        noun = "flash frame" if stats.flash_frames == 1 else "flash frames"
        problems.append(f"{stats.flash_frames} {noun} (luma jump {stats.max_luma_jump:.0f} > {limits.flash_jump:g})")
    distance = stats.first_frame_distance
    if distance is not None and distance > limits.max_first_frame_distance:
        problems.append(f"first frame differs from the approved image "
                        f"(distance {distance:.0f} > {limits.max_first_frame_distance:g})")
    return problems


# What to look at for each kind of problem, matched on the start of its reason.
_CLIP_ADVICE = (
    (re.compile(r"\d+ frames, "), "check the frame count the workflow's video nodes are given"),
    (re.compile("black"), "a black clip usually means the video model or its VAE produced NaNs: "
                          "check their files and precision"),
    (re.compile("frozen"), "check the motion prompt and the sampler settings (steps, shift, LoRA strength)"),
    (re.compile(r"\d+ flash frame"), "check the sampler settings and the VAE (a flash is a decode breaking down)"),
    (re.compile("first frame"), "check that the workflow feeds the approved image to its start-image input"),
)


def check_clip(
    path: Path, *, expected_frames: int | None, start_image: Path | None = None,
    limits: ClipLimits = ClipLimits(),
) -> ClipStats:
    """The clip's stats if it passes; raises QCFailed with every problem and the figures if not."""
    stats = clip_stats(path, start_image=start_image, limits=limits)
    problems = clip_problems(stats, expected_frames=expected_frames, limits=limits)
    if not problems:
        return stats
    figures = stats.figures()
    if expected_frames is not None:
        figures["expected_frames"] = float(expected_frames)
    advice = [text for pattern, text in _CLIP_ADVICE if any(pattern.match(p) for p in problems)]
    raise QCFailed(f"{path.name} failed quality checks: " + "; ".join(problems),
                   _hint("; ".join(advice)), figures=figures)


def _hint(advice: str) -> str:
    return (f"It will be made again with a new seed. If it keeps happening, {advice}; "
            f"then run `tandava retry {RUN_PLACEHOLDER}`.")


def _open_grey(path: Path, size: tuple[int, int], *, crop_to: tuple[int, int] | None = None
               ) -> tuple[Image.Image, tuple[int, int]]:
    """The image as greyscale: thumbnailed into ``size``, or (with ``crop_to``) centre-cropped
    to that aspect ratio and resized to exactly ``size``; also its original size."""
    try:
        with Image.open(path) as im:
            original = im.size
            im.draft("L", size)  # JPEG decodes at a fraction of its size: much faster
            grey = im.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PermanentError(f"{path.name} is not a readable image: {exc}",
                             f"Check the file {path}; then run `tandava retry {RUN_PLACEHOLDER}`.",
                             cause="BrokenImage") from exc
    if crop_to is None:
        grey.thumbnail(size, Image.Resampling.BOX)
        return grey, original
    # Wan's loaders scale the start image to cover the clip and crop the
    # middle; doing the same keeps a different aspect from reading as "unlike".
    w, h = grey.size
    scale = min(w / crop_to[0], h / crop_to[1])
    cw, ch = crop_to[0] * scale, crop_to[1] * scale
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return grey.resize(size, Image.Resampling.BOX, box=box), original


def _dhash(grey: Image.Image) -> int:
    cells = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (cells[:, 1:] > cells[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int, float]]:
    """Every frame on the small grid, the first at FIRST_FRAME_SIZE, and (width, height, fps)."""
    import av
    from av.video.reformatter import Interpolation

    small: list[np.ndarray] = []
    first = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _broken(path, "it has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            grid = (GRID_WIDTH, max(8, round(GRID_WIDTH * height / max(width, 1))))
            for frame in container.decode(stream):
                if first is None:
                    first = frame.reformat(*FIRST_FRAME_SIZE, format="gray", interpolation=Interpolation.AREA)
                small.append(frame.reformat(*grid, format="gray", interpolation=Interpolation.AREA).to_ndarray())
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _broken(path, str(exc)) from exc
    if first is None:
        raise _broken(path, "it holds no frames")
    return np.stack(small).astype(np.float32), first.to_ndarray().astype(np.float32), (width, height, fps)


def _broken(path: Path, why: str) -> QCFailed:
    return QCFailed(f"{path.name} cannot be decoded: {why}",
                    _hint("check the ComfyUI server's disk and the workflow's video output format"),
                    cause="BrokenClip")


def _flashes(luma: np.ndarray, flash_jump: float) -> tuple[float, int]:
    """The largest flash-shaped luma jump and how many frames jump more than ``flash_jump``."""
    n = len(luma)
    largest, count = 0.0, 0
    for t in range(n):
        neighbours = [luma[i] for i in range(t - 2, t + 3) if i != t and 0 <= i < n]
        if not neighbours:
            continue
        jump = float(abs(luma[t] - np.median(neighbours)))
        # A cut leaves the level for good: t-2 and t+2 disagree by about the
        # jump's size. A flash (one or two frames) comes back: they agree.
        # At the clip's ends there is no way to tell, and a one- or two-frame
        # shot there is a glitch either way.
        if 2 <= t < n - 2 and abs(luma[t - 2] - luma[t + 2]) >= jump / 2:
            continue
        largest = max(largest, jump)
        count += jump > flash_jump
    return largest, count
