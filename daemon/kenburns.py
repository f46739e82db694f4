"""The ``kenburns`` video backend: a slow camera move over a still image, made by ffmpeg.

How this works: the segment's motion prompt ("slow zoom out, pan right")
is read by ``parse_motion`` into a zoom range and a pan direction; ffmpeg's
``zoompan`` filter renders exactly ``job.frames`` frames at ``job.fps``.
zoompan positions its window on whole input pixels, which makes a slow move
judder; the still is first upscaled 3×, so a one-pixel step of the window is a
third of an output pixel and the motion reads as smooth. The clip is written
under a temp name and renamed only after it reads back with the frames asked
for.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from daemon import fsutil, media
from daemon.backends import Job, Progress
from daemon.errors import PermanentError, TransientError

# Upscale factor before zoompan: sub-pixel smoothness for slow moves.
_OVERSAMPLE = 3
# A gentle move: the frame grows or shrinks by a fifth over the clip.
_ZOOM = 1.2
# Panning needs room to move: zoom in this much when the prompt only pans.
_PAN_ZOOM = 1.15
# How strongly "fast"/"slow" scale a move.
_PACE = {"slow": 0.6, "gentle": 0.6, "subtle": 0.5, "fast": 1.6, "rapid": 1.6, "dramatic": 1.4}


@dataclass(frozen=True)
class Motion:
    """A camera move: zoom from ``zoom_from`` to ``zoom_to``; pan in [-1, 1] per axis (right, down)."""

    zoom_from: float = 1.0
    zoom_to: float = _ZOOM
    pan_x: float = 0.0
    pan_y: float = 0.0


def parse_motion(text: str) -> Motion:
    """Read a motion prompt into a camera move; anything unrecognised is a gentle zoom in."""
    words = text.lower()
    pace = 1.0
    for word, factor in _PACE.items():
        if re.search(rf"\b{word}\b", words):
            pace = factor
            break
    pan_x = pan_y = 0.0
    if re.search(r"pan(ning)?\s+(to\s+the\s+)?left|\bleftwards?\b", words):
        pan_x = -1.0
    elif re.search(r"pan(ning)?\s+(to\s+the\s+)?right|\brightwards?\b|\borbit", words):
        pan_x = 1.0
    if re.search(r"pan(ning)?\s+up|tilt(ing)?\s+up|\brise|\brising|\bascend|\bcrane up", words):
        pan_y = -1.0
    elif re.search(r"pan(ning)?\s+down|tilt(ing)?\s+down|\bdescend|\bfall|\bcrane down", words):
        pan_y = 1.0
    grow = (_ZOOM - 1.0) * pace
    if re.search(r"zoom(ing)?\s+out|pull(ing)?\s+(back|out)|dolly\s+out|\breveal", words):
        return Motion(1.0 + grow, 1.0, pan_x, pan_y)
    if re.search(r"zoom(ing)?\s+in|push(ing)?\s+in|dolly\s+in|\bcloser\b", words) or not (pan_x or pan_y):
        return Motion(1.0, 1.0 + grow, pan_x, pan_y)
    held = 1.0 + (_PAN_ZOOM - 1.0) * max(pace, 1.0)
    return Motion(held, held, pan_x * min(pace, 1.0), pan_y * min(pace, 1.0))


def zoompan_filter(motion: Motion, frames: int, fps: int, width: int, height: int) -> str:
    """The ffmpeg filter chain that renders ``motion`` over ``frames`` frames."""
    t = f"(on/{max(frames - 1, 1)})"
    zoom = f"{motion.zoom_from:.4f}+({motion.zoom_to - motion.zoom_from:.4f})*{t}"
    # The window's slack (iw - iw/zoom) is where it can move; a pan sweeps it end to end.
    x = f"(iw-iw/zoom)/2*(1+({motion.pan_x:.3f})*(2*{t}-1))"
    y = f"(ih-ih/zoom)/2*(1+({motion.pan_y:.3f})*(2*{t}-1))"
    return (
        f"scale={width * _OVERSAMPLE}:{height * _OVERSAMPLE}:flags=lanczos:force_original_aspect_ratio=increase,"
        f"crop={width * _OVERSAMPLE}:{height * _OVERSAMPLE},"
        f"zoompan=z='{zoom}':x='{x}':y='{y}':d={frames}:s={width}x{height}:fps={fps},"
        "format=yuv420p"
    )


class KenBurnsBackend:
    """VideoBackend: any clip length, made on the CPU; cannot re-attach (it is redone once)."""

    name = "kenburns"
    resource = "cpu"
    max_frames: int | None = None

    def __init__(self, ffmpeg: str, *, crf: int = 18, preset: str = "veryfast") -> None:
        self.ffmpeg = ffmpeg
        self.crf = crf
        self.preset = preset

    def submit(self, job: Job) -> None:
        """Nothing to queue: the work happens in ``collect``."""

    def can_resume(self, job: Job) -> bool:
        return False

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        source, output = Path(job.source), Path(job.output)
        if not source.is_file():
            raise PermanentError(
                f"the image for segment {job.segment}'s clip is missing: {source.name}",
                "Approve another candidate or run `tandava retry <run>`.",
                cause="MissingImage",
            )
        motion = parse_motion(job.prompt)
        tmp = fsutil.temp_path_for(output)
        try:
            media.run_ffmpeg(
                self.ffmpeg,
                [
                    "-i", str(source),
                    "-vf", zoompan_filter(motion, job.frames, job.fps, job.width, job.height),
                    "-frames:v", str(job.frames),
                    "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
                    "-pix_fmt", "yuv420p", "-an", "-f", "mp4", str(tmp),
                ],
                what=f"make the clip for segment {job.segment}",
            )
            info = media.probe(tmp)
            if info.frames != job.frames or (info.width, info.height) != (job.width, job.height):
                raise TransientError(
                    f"kenburns made {info.frames} frames at {info.width}x{info.height} for segment "
                    f"{job.segment}; {job.frames} at {job.width}x{job.height} were asked for",
                    cause="BrokenClip",
                )
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
        fsutil.fsync_dir(output.parent)
        progress(1.0)
        return output
