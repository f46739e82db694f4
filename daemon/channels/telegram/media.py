"""Files made to fit Telegram's limits: photos, video thumbnails and a preview of a large video.

How this works: a candidate image goes out as it is when Telegram accepts it
as a photo (at most 10 MB, width + height at most 10000, sides at most 20:1);
otherwise Pillow recompresses it to a JPEG that fits. A video thumbnail must
be a JPEG of at most 320 px and 200 kB. A bot may upload at most 50 MB, so a
larger final video is sent as a 480p preview whose bitrate is chosen from its
duration to land near 90 % of the limit.

The preview is encoded with an asyncio subprocess instead of
``media.run_ffmpeg``: a daemon that is told to stop must be able to kill an
encode that would otherwise hold its shutdown for a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from daemon.errors import PermanentError
from daemon.runs.fsutil import temp_path_for

PHOTO_MAX_BYTES = 10 * 1000 * 1000
PHOTO_MAX_SIDES = 10000
PHOTO_MAX_RATIO = 20
# Telegram shows photos at up to 2560 px: a recompressed one needs no more.
PHOTO_LONG_SIDE = 2560
UPLOAD_LIMIT_BYTES = 50 * 1000 * 1000
# The preview aims below the limit: x264's average bitrate overshoots by a few percent.
PREVIEW_FILL = 0.9
PREVIEW_ATTEMPTS = 3
PREVIEW_HEIGHT = 480
PREVIEW_AUDIO_KBPS = 96
PREVIEW_MIN_VIDEO_KBPS = 64
PREVIEW_NAME = "telegram-preview.mp4"
_THUMB_SIDE = 320
_LOG_TAIL = 800


@dataclass(frozen=True)
class Photo:
    data: bytes
    filename: str
    recompressed: bool


def photo_payload(path: Path, *, max_bytes: int = PHOTO_MAX_BYTES) -> Photo:
    """The image as Telegram accepts it for sendPhoto/sendMediaGroup."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        fits = (len(data) <= max_bytes and width + height <= PHOTO_MAX_SIDES
                and max(width, height) <= PHOTO_MAX_RATIO * min(width, height))
        if fits:
            return Photo(data, path.name, recompressed=False)
        img.load()
        rgb = img.convert("RGB")
    scale = min(1.0, PHOTO_LONG_SIDE / max(width, height), (PHOTO_MAX_SIDES - 1) / (width + height))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    if max(rgb.size) > PHOTO_MAX_RATIO * min(rgb.size):  # a sliver: pad to the widest ratio Telegram takes
        long_side = max(rgb.size)
        canvas = Image.new("RGB", (long_side, max(1, long_side // PHOTO_MAX_RATIO)) if rgb.width > rgb.height
                           else (max(1, long_side // PHOTO_MAX_RATIO), long_side))
        canvas.paste(rgb, (0, 0))
        rgb = canvas
    for quality in (90, 80, 70, 55, 40):
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=quality, optimize=True)
        if out.tell() <= max_bytes:
            break
    return Photo(out.getvalue(), path.with_suffix(".jpg").name, recompressed=True)


def thumbnail_jpeg(path: Path) -> bytes:
    """A thumbnail Telegram accepts for a video: JPEG, at most 320 px, well under 200 kB."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((_THUMB_SIDE, _THUMB_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def preview_bitrates(duration: float, limit: int, fill: float = PREVIEW_FILL) -> tuple[int, int]:
    """Video and audio kbit/s so that ``duration`` seconds fill ``fill`` of ``limit`` bytes."""
    total_kbps = limit * 8 * fill / max(duration, 1.0) / 1000
    audio = min(PREVIEW_AUDIO_KBPS, max(32, int(total_kbps * 0.15)))
    return max(PREVIEW_MIN_VIDEO_KBPS, int(total_kbps - audio)), audio


async def make_preview(ffmpeg: str, source: Path, out: Path, *, duration: float, limit: int) -> Path:
    """A preview of ``source`` of at most ``limit`` bytes at ``out``; encoded again, smaller, if it overshot.

    x264's rate control may overshoot on short or noisy videos (the first
    second fills the VBV buffer); a second pass scaled by the overshoot fits.
    """
    fill = PREVIEW_FILL
    for _ in range(PREVIEW_ATTEMPTS):
        await encode_preview(ffmpeg, source, out, duration=duration, limit=limit, fill=fill)
        size = out.stat().st_size
        if size <= limit:
            return out
        fill *= limit / size * PREVIEW_FILL
    raise PermanentError(f"a preview of {source.name} is still {size / 1e6:.1f} MB, above the "
                         f"{limit / 1e6:.1f} MB Telegram takes", cause="PreviewTooLarge")


async def encode_preview(ffmpeg: str, source: Path, out: Path, *, duration: float, limit: int,
                         fill: float = PREVIEW_FILL) -> Path:
    """A 480p H.264 preview of ``source`` aimed at ``fill`` of ``limit``, written atomically to ``out``."""
    video_kbps, audio_kbps = preview_bitrates(duration, limit, fill)
    tmp = temp_path_for(out)
    args = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
            "-vf", f"scale=-2:'min({PREVIEW_HEIGHT},ih)'", "-c:v", "libx264", "-preset", "veryfast",
            "-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k", "-bufsize", f"{2 * video_kbps}k",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", f"{audio_kbps}k", "-movflags", "+faststart",
            "-f", "mp4", str(tmp)]
    proc = await asyncio.create_subprocess_exec(*args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        _, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        log = err.decode("utf-8", "replace").strip()
        raise PermanentError(f"ffmpeg failed to make a Telegram preview of {source.name} "
                             f"(exit code {proc.returncode}): {log[-_LOG_TAIL:] or 'no message'}",
                             cause="FfmpegFailed")
    os.replace(tmp, out)
    return out
