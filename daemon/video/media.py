"""ffmpeg and media probing: the one seam every video operation goes through.

ffmpeg comes from imageio-ffmpeg (a binary that installs with pip, Windows
included) unless a system one is configured. ``run_ffmpeg`` turns its failures
into our errors: a full disk is named as such (a person can fix that and
retry), anything else carries the tail of ffmpeg's own log. ``probe`` reads a
file with PyAV (libav, the same library ffprobe is built on), which installs
with Tandava where ffprobe does not.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import PermanentError, TransientError

_LOG_TAIL = 1200
# No ffmpeg call may hang a run forever; callers with long jobs pass their own bound.
FFMPEG_TIMEOUT_SECONDS = 600.0
_DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


def find_ffmpeg(configured: Path | None = None) -> str:
    """The ffmpeg executable to use; raises PermanentError when there is none."""
    if configured is not None:
        found = shutil.which(str(configured))
        if found is None:
            raise PermanentError(
                f"the configured ffmpeg {configured} was not found or is not executable",
                "Fix assembly.ffmpeg in tandava.toml, or remove it to use the bundled ffmpeg.",
                cause="FfmpegMissing",
            )
        return found
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found is None:
            raise PermanentError(
                "no ffmpeg was found",
                "Reinstall Tandava (it brings imageio-ffmpeg) or install ffmpeg and set assembly.ffmpeg.",
                cause="FfmpegMissing",
            ) from None
        return found


def run_ffmpeg(exe: str, args: list[str], *, what: str, timeout: float | None = FFMPEG_TIMEOUT_SECONDS) -> None:
    """Run ffmpeg quietly; translate a failure into a TransientError (disk full) or PermanentError."""
    cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"ffmpeg took longer than {timeout:.0f} s to {what}", cause="FfmpegTimeout") from exc
    except OSError as exc:
        raise PermanentError(f"ffmpeg could not be started to {what}: {exc}", cause="FfmpegMissing") from exc
    if result.returncode == 0:
        return
    log = result.stderr.strip()
    if any(marker in log for marker in _DISK_FULL_MARKERS):
        raise TransientError(
            f"the disk is full: ffmpeg could not {what} (No space left on device)",
            "Free some disk space on the state root's drive, then run `tandava retry <run>`.",
            cause="DiskFull",
        )
    raise PermanentError(
        f"ffmpeg failed to {what} (exit code {result.returncode}): {log[-_LOG_TAIL:] or 'no message'}",
        "Run `tandava doctor` to check ffmpeg; then `tandava retry <run>`.",
        cause="FfmpegFailed",
    )


@dataclass(frozen=True)
class MediaInfo:
    """What a video file holds, as read back after writing it."""

    duration: float
    width: int
    height: int
    fps: float
    frames: int
    has_audio: bool
    video_codec: str
    pix_fmt: str


def probe(path: Path, *, count_frames: bool = True) -> MediaInfo:
    """Read a video file's streams; raises PermanentError if it has no decodable video.

    ``frames`` counts the video packets (exact for our constant-frame-rate
    files, and cheap: nothing is decoded).
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise PermanentError(f"{path.name} has no video stream", cause="BrokenVideo")
            stream = container.streams.video[0]
            codec = stream.codec_context
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            has_audio = bool(container.streams.audio)
            duration = float(container.duration / 1_000_000) if container.duration else 0.0
            frames = stream.frames
            if count_frames or not frames:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            return MediaInfo(
                duration=duration,
                width=codec.width,
                height=codec.height,
                fps=fps,
                frames=frames,
                has_audio=has_audio,
                video_codec=codec.name,
                pix_fmt=codec.pix_fmt or "",
            )
    except PermanentError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise PermanentError(f"{path.name} is not a readable video: {exc}", cause="BrokenVideo") from exc


def extract_frame(exe: str, video: Path, frame: int, out: Path) -> Path:
    """Write frame number ``frame`` (0-based) of ``video`` as a PNG, atomically.

    A chained clip starts from the last frame shown of the clip before it.
    """
    from daemon.runs.fsutil import temp_path_for

    tmp = temp_path_for(out)
    try:
        run_ffmpeg(
            exe,
            ["-i", str(video), "-vf", f"select=eq(n\\,{frame})", "-frames:v", "1",
             "-f", "image2", "-c:v", "png", str(tmp)],
            what=f"take frame {frame} of {video.name}",
        )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
