"""ffmpeg and media probing: the one seam every video operation goes through.

ffmpeg comes from imageio-ffmpeg (a binary that installs with pip, Windows
included) unless a system one is configured. ``run_ffmpeg`` turns its failures
into our errors: a full disk is named as such (a person can fix that and
retry), anything else carries the tail of ffmpeg's own log. ``probe`` reads a
file with PyAV (libav, the same library ffprobe is built on), which installs
with Tandava where ffprobe does not.

A long encode can report how far it got: with a ``progress`` callback,
ffmpeg runs with ``-progress pipe:1`` and every ``out_time`` it writes
(``parse_progress_line``, pure) reaches the callback as seconds of output
made, never going back. stderr is drained on a thread of its own so neither
pipe can fill and stall ffmpeg; a timer kills it at the timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
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


Progress = Callable[[float], None]


def run_ffmpeg(exe: str, args: list[str], *, what: str, timeout: float | None = FFMPEG_TIMEOUT_SECONDS,
               progress: Progress | None = None) -> None:
    """Run ffmpeg quietly; translate a failure into a TransientError (disk full) or PermanentError.

    ``progress`` gets the seconds of output written so far, as ffmpeg reports them.
    """
    cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    try:
        if progress is None:
            result = subprocess.run(
                cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout
            )
            returncode, stderr = result.returncode, result.stderr
        else:
            returncode, stderr = _run_reporting(cmd, timeout, progress)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"ffmpeg took longer than {timeout:.0f} s to {what}", cause="FfmpegTimeout") from exc
    except OSError as exc:
        raise PermanentError(f"ffmpeg could not be started to {what}: {exc}", cause="FfmpegMissing") from exc
    if returncode == 0:
        return
    log = stderr.strip()
    if any(marker in log for marker in _DISK_FULL_MARKERS):
        raise TransientError(
            f"the disk is full: ffmpeg could not {what} (No space left on device)",
            "Free some disk space on the state root's drive, then run `tandava retry <run>`.",
            cause="DiskFull",
        )
    raise PermanentError(
        f"ffmpeg failed to {what} (exit code {returncode}): {log[-_LOG_TAIL:] or 'no message'}",
        "Run `tandava doctor` to check ffmpeg; then `tandava retry <run>`.",
        cause="FfmpegFailed",
    )


def parse_progress_line(line: str) -> float | None:
    """Seconds of output from one line of ``-progress`` output (``out_time_us=`` or ``out_time=``), else None.

    Before the first frame ffmpeg writes ``N/A`` or a large negative time; both are None.
    """
    key, _, value = line.strip().partition("=")
    try:
        if key == "out_time_us":
            seconds = int(value) / 1_000_000
        elif key == "out_time":
            hours, minutes, secs = value.split(":")
            seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
        else:
            return None
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _run_reporting(cmd: list[str], timeout: float | None, progress: Progress) -> tuple[int, str]:
    """Run ``cmd`` with ``-progress pipe:1``, calling ``progress`` as the output time grows."""
    full = [*cmd[:1], "-progress", "pipe:1", "-nostats", *cmd[1:]]
    with subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, encoding="utf-8", errors="replace") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        errors: list[str] = []
        stderr = proc.stderr
        drain = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        drain.start()
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            best = 0.0
            for line in proc.stdout:
                seconds = parse_progress_line(line)
                if seconds is not None and seconds > best:
                    best = seconds
                    progress(seconds)
            returncode = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            drain.join()
        if killed.is_set():
            raise subprocess.TimeoutExpired(full, timeout or 0)
    return returncode, "".join(errors)


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
