"""The Ken Burns clip backend: a slow camera move over a still, made by ffmpeg.

How this works: the motion prompt ("slow zoom out, pan right") is parsed into
a ``Motion`` (zoom at the first and last frame, and how far the view's centre
travels) by a pure function. ffmpeg then scales the still to cover the frame,
upscales it ``UPSCALE`` (3) times and runs ``zoompan`` over it. zoompan crops at
whole input pixels, which on a still of the output's own size makes edges
wobble by up to half a pixel from frame to frame; on the upscaled still that
error is a third of an output pixel, below what the eye picks up. The clip
is H.264 in yuv420p (what every player decodes), written to a temp name, read
back with ``media.probe`` and only then renamed to ``job.output``.

Zoom changes geometrically (the same ratio per frame), which reads as a
constant speed; a linear zoom visibly slows down as it goes. There is no
easing: a long segment plays a chain of clips, and easing would make the
camera stop at every link.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from daemon.backends.base import Job, Progress
from daemon.backends.framing import FAST, PAN_STEP, SLOW, STATIC, ZOOM_STEP
from daemon.errors import RUN_PLACEHOLDER, PermanentError, TransientError
from daemon.runs import fsutil
from daemon.video.media import probe, run_ffmpeg

# zoompan's crop granularity becomes 1/UPSCALE output pixel. CPU time for
# an 81-frame 832x480 clip, measured: 0.41 s at 1, 0.48 at 2, 0.61 at 3,
# 0.80 at 4; a third of a pixel no longer shows as wobble.
UPSCALE = 3
# H.264 settings for an intermediate clip: 18 is visually lossless, so the
# final assembly's re-encode (at assembly.crf) is the only visible loss.
CRF = 18
PRESET = "veryfast"
# The clip is decoded again by the assembly, which is where the time goes:
# fastdecode (CAVLC, no deblocking) measured 7.6 -> 3.3 CPU-s to decode a
# 4-minute song's 48 clips, for 12 % larger intermediates.
TUNE = "fastdecode"
# How far a move may zoom and pan (ZOOM_STEP, PAN_STEP and the SLOW, FAST and
# STATIC speeds) is set in ``framing``: the storyboard keeps its label where
# no move reaches, so both read the same numbers.


@dataclass(frozen=True)
class Motion:
    """A camera move over a still.

    ``zoom_from``/``zoom_to``: magnification at the first and last frame (1.0
    shows the whole image). ``pan_x``/``pan_y``: how far the view's centre
    travels over the clip, as a share of the image width/height (positive is
    right/down), centred on the image's middle.
    """

    zoom_from: float
    zoom_to: float
    pan_x: float = 0.0
    pan_y: float = 0.0


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(rf"\b(?:{p})\b" for p in patterns))


# Any ending: zooms, zooming, panning, pulled.
_VERB = r"\w*"
_ZOOM_IN = _words(
    rf"zoom{_VERB}\s+in(?:to|ward)?",
    rf"push{_VERB}(?:\s+in)?",
    rf"dolly{_VERB}\s+(?:in|forward)",
    r"mov(?:e|es|ing)\s+(?:in|closer|forward)",
    r"closer",
    r"close[- ]?up",
    rf"approach{_VERB}",
)
_ZOOM_OUT = _words(
    rf"zoom{_VERB}\s+out",
    rf"pull{_VERB}\s+(?:back|out|away)",
    rf"dolly{_VERB}\s+(?:out|back)",
    r"mov(?:e|es|ing)\s+back",
    rf"reveal{_VERB}",
    r"widen(?:s|ing)?",
    r"rece(?:de|des|ding)",
)
_SIDEWAYS = r"(?:pan|truck|track|mov(?:e|es|ing)|slid|drift|swing|orbit|rotat|circl|spin)"
_LEFT = _words(rf"{_SIDEWAYS}{_VERB}\s+(?:to\s+the\s+)?left(?:ward)?", r"counter-?clockwise")
_RIGHT = _words(rf"{_SIDEWAYS}{_VERB}\s+(?:to\s+the\s+)?right(?:ward)?", r"clockwise")
_VERTICAL = r"(?:tilt|pan|crane|pedestal|boom|mov(?:e|es|ing)|drift|ris|float)"
_UP = _words(rf"{_VERTICAL}{_VERB}\s+up(?:ward)?", r"ascend(?:s|ing)?", r"rising")
_DOWN = _words(rf"{_VERTICAL}{_VERB}\s+down(?:ward)?", r"descend(?:s|ing)?", r"sink(?:s|ing)?")
# Moves a still cannot make (around a subject) become a sideways glide with
# a slight push in, the closest a flat image gets to parallax.
_ORBIT = _words(r"orbit\w*", r"rotat\w*", r"swirl\w*", r"circl\w*", r"spin\w*", r"around", r"arc")
_TRACK = _words(r"track\w*", r"follow\w*", r"handheld", r"glide\w*")
_SLOW = _words(r"slow\w*", r"gentle", r"gently", r"subtle", r"soft\w*", r"calm\w*", r"lazy")
_FAST = _words(r"fast\w*", r"rapid\w*", r"quick\w*", r"dynamic", r"swift\w*", r"dramatic", r"whip\w*")
_STATIC = _words(r"static", r"still", r"locked", r"fixed", r"stationary")


def parse_motion(text: str) -> Motion:
    """The camera move a motion prompt asks for; a gentle zoom in when it names none.

    Of two opposite moves (zoom in and out, left and right) the one named
    first wins. Never raises: the prompt may come from a language model.
    """
    t = text.casefold()
    speed = STATIC if _STATIC.search(t) else FAST if _FAST.search(t) else SLOW if _SLOW.search(t) else 1.0

    zoom = _first(t, _ZOOM_IN, _ZOOM_OUT)
    pan_x = float(_first(t, _RIGHT, _LEFT))
    pan_y = float(_first(t, _DOWN, _UP))
    if pan_x == 0 and (_ORBIT.search(t) or _TRACK.search(t)):
        pan_x = 1.0
    if zoom == 0 and _ORBIT.search(t):
        zoom = 1
    if zoom == 0 and pan_x == 0 and pan_y == 0:
        zoom = 1
    pan_x, pan_y = pan_x * PAN_STEP * speed, pan_y * PAN_STEP * speed
    # Orbit's push and a zoom that accompanies a pan are half strength, so
    # the sideways move stays the main one.
    step = ZOOM_STEP * speed * (0.5 if (pan_x or pan_y) else 1.0)
    # A pan needs room: the view must stay inside the image at both ends.
    base = 1.0 / (1.0 - max(abs(pan_x), abs(pan_y)))
    if zoom == 0:
        return Motion(zoom_from=base, zoom_to=base, pan_x=pan_x, pan_y=pan_y)
    near, far = base, base * (1.0 + step)
    if zoom < 0:
        near, far = far, near
    return Motion(zoom_from=near, zoom_to=far, pan_x=pan_x, pan_y=pan_y)


def _first(text: str, positive: re.Pattern[str], negative: re.Pattern[str]) -> int:
    """+1 or -1 for whichever of two opposite moves is named first; 0 for neither."""
    pos, neg = positive.search(text), negative.search(text)
    if pos and (not neg or pos.start() <= neg.start()):
        return 1
    return -1 if neg else 0


def zoompan_filter(motion: Motion, *, frames: int, width: int, height: int, fps: int) -> str:
    """The ffmpeg filter graph that turns one still into the clip's frames."""
    last = max(frames - 1, 1)
    ratio = motion.zoom_to / motion.zoom_from
    # on: the output frame number. x and y are the crop's top left corner in
    # upscaled pixels, from the view's centre, kept inside the image.
    z = f"{motion.zoom_from:.6f}*pow({ratio:.6f},on/{last})"
    cx = f"(0.5+{motion.pan_x:.6f}*(on/{last}-0.5))"
    cy = f"(0.5+{motion.pan_y:.6f}*(on/{last}-0.5))"
    x = f"clip({cx}*iw-iw/zoom/2,0,iw-iw/zoom)"
    y = f"clip({cy}*ih-ih/zoom/2,0,ih-ih/zoom)"
    big_w, big_h = width * UPSCALE, height * UPSCALE
    return (
        f"scale={big_w}:{big_h}:force_original_aspect_ratio=increase:flags=bicubic,"
        f"crop={big_w}:{big_h},setsar=1,"
        f"zoompan=z='{z}':x='{x}':y='{y}':d={frames}:s={width}x{height}:fps={fps},"
        "format=yuv420p"
    )


class KenBurnsBackend:
    """Makes clips of any length from a still with a camera move; CPU only, no model."""

    name = "kenburns"
    resource = "cpu"
    max_frames: int | None = None

    def __init__(self, ffmpeg: str) -> None:
        self.ffmpeg = ffmpeg

    def submit(self, job: Job) -> None:
        """Nothing to queue: the clip is made in ``collect``."""

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        """Make the clip at ``job.output``; a stop lets this ~1 s job finish (a warm stop)."""
        _check_job(job)
        source, output = Path(job.source), Path(job.output)
        if not source.is_file():
            raise PermanentError(
                f"the image for segment {job.segment}'s clip is missing: {source}",
                f"Restore {source.name} in {source.parent}, or make and approve the images "
                f"for segment {job.segment} again; then run `tandava retry {RUN_PLACEHOLDER}`.",
                cause="MissingImage",
            )
        motion = parse_motion(job.prompt)
        graph = zoompan_filter(motion, frames=job.frames, width=job.width, height=job.height, fps=job.fps)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = fsutil.temp_path_for(output)
        args = [
            # image2 would read "%d" in a file name as a sequence pattern.
            "-f", "image2", "-pattern_type", "none", "-i", str(source.resolve()),
            "-vf", graph,
            "-frames:v", str(job.frames),
            "-an", "-c:v", "libx264", "-preset", PRESET, "-tune", TUNE, "-crf", str(CRF), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart",
            # The temp name's suffix is .tmp, so the container is named.
            "-f", "mp4", str(tmp),
        ]  # fmt: skip
        try:
            run_ffmpeg(
                self.ffmpeg,
                args,
                what=f"make the clip {output.name} from {source.name}",
                timeout=60.0 + job.frames * 0.5,
            )
            _verify(tmp, job)
            _fsync_file(tmp)
            os.replace(tmp, output)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsutil.fsync_dir(output.parent)
        progress(1.0)
        return output

    def can_resume(self, job: Job) -> bool:
        """ffmpeg runs in-process; a clip cut short is made again."""
        return False


def _check_job(job: Job) -> None:
    if job.frames < 1 or job.fps < 1:
        # The stage computes these; a zero is our bug, not a person's.
        raise ValueError(f"job {job.id} asks for {job.frames} frames at {job.fps} fps")
    if job.width % 2 or job.height % 2:
        raise PermanentError(
            f"H.264 video needs an even width and height, not {job.width}x{job.height}",
            "Set video.width and video.height in tandava.toml to even numbers, "
            f"then run `tandava retry {RUN_PLACEHOLDER}`.",
            cause="OddVideoSize",
        )


def _verify(clip: Path, job: Job) -> None:
    """Read the clip back; a wrong frame count or size is worth one more try."""
    try:
        info = probe(clip)
    except PermanentError as exc:
        raise TransientError(f"kenburns produced a broken clip for segment {job.segment}: {exc.reason}") from exc
    if info.frames != job.frames or (info.width, info.height) != (job.width, job.height):
        raise TransientError(
            f"kenburns produced a broken clip for segment {job.segment}: "
            f"{info.frames} frames at {info.width}x{info.height}, "
            f"expected {job.frames} at {job.width}x{job.height}",
            cause="BrokenClip",
        )


def _fsync_file(path: Path) -> None:
    # ffmpeg closes without fsync; sync before the rename so a power cut
    # never leaves an empty file under the final name.
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
