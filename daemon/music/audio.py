"""Decoding songs into mono samples, and refusing the ones we cannot use.

Two decoders sit behind this module: soundfile (libsndfile) reads WAV, FLAC,
OGG and MP3 itself; PyAV (FFmpeg) reads M4A/AAC and anything libsndfile
refuses. Every foreign error (OSError, soundfile's LibsndfileError, PyAV's
FFmpegError) is translated here into ``errors.BadInput`` with a ``reason`` and
a ``hint`` a person can act on, and a short machine-readable ``cause``:

    unreadable   the daemon may not read the file (permissions, locked)
    missing      the file went away between arrival and analysis
    empty        zero bytes
    not_audio    no decoder recognises it
    truncated    the header promises more audio than the file holds
    too_long     longer than the configured maximum (refused before decoding)
    too_short    too little audio to find a beat
    silent       only digital silence

The length checks use the header only (``probe_duration``), so a two-hour DJ
mix is refused in milliseconds instead of being decoded first.

A person reads ``reason``: never a raw decoder error such as ``[Errno
1094995529] Invalid data found…``; that text goes to the log only
(``audio.decode_error``). What the native decoders print to stderr is caught
around every decode and logged as ``audio.decoder_message``
(``native_stderr``), so it never breaks the JSON-lines console.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import structlog

from daemon import defaults
from daemon.errors import BadInput
from daemon.music.native_stderr import captured

log = structlog.get_logger("tandava.audio")

# libsndfile reads these itself; everything else goes straight to PyAV.
_SNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"})
# A decode that yields less than this share of the header's duration means the
# file was cut short (an interrupted copy); MP3 headers estimate length, hence
# the slack.
_TRUNCATED_RATIO = 0.9
# Below this peak amplitude (-80 dBFS) there is nothing to analyse.
_SILENCE_PEAK = 1e-4
_READ_BLOCK = 1 << 18

_REPLACE_HINT = (
    "re-export the song and drop it into the inbox again, "
    "or replace the file and run `tandava retry <run>`"
)


def _unreadable(path: Path, err: OSError) -> BadInput:
    if isinstance(err, FileNotFoundError):
        return BadInput(
            f"{path.name} disappeared before it could be analysed",
            "drop the song into the inbox again",
            cause="missing",
        )
    return BadInput(
        f"the daemon is not allowed to read {path.name} ({err.strerror or err})",
        "give the daemon's user read permission on the file (or close the program "
        "that locks it), then run `tandava retry <run>`",
        cause="unreadable",
    )


def _not_audio(path: Path, detail: str) -> BadInput:
    return BadInput(
        f"{path.name} is not an audio file ({detail}), or it is corrupt",
        f"check that it plays in a music player; {_REPLACE_HINT}",
        cause="not_audio",
    )


def _ffmpeg_detail(path: Path, err: Exception) -> str:
    """Words for a person about an FFmpeg error; its raw text (errno and all) goes to the log only."""
    import av

    log.info("audio.decode_error", file=path.name, decoder="ffmpeg", error=str(err))
    if isinstance(err, av.InvalidDataError):
        return "the decoder found no audio stream"
    strerror = getattr(err, "strerror", None)
    return f"the decoder failed: {strerror.lower()}" if isinstance(strerror, str) and strerror else "the decoder failed"


def _check_readable(path: Path) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            f.read(1)
    except OSError as err:
        raise _unreadable(path, err) from err
    if size == 0:
        raise BadInput(
            f"{path.name} is empty (0 bytes); the copy into the inbox probably failed",
            _REPLACE_HINT,
            cause="empty",
        )


def _probe_sndfile(path: Path) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.SoundFileError):
        return None
    return float(info.frames) / info.samplerate if info.samplerate else None


def _probe_pyav(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise _not_audio(path, "it has no audio stream")
            stream = container.streams.audio[0]
            if container.duration is not None:
                return container.duration / av.time_base
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
    except av.FFmpegError as err:
        raise _not_audio(path, _ffmpeg_detail(path, err)) from err
    raise _not_audio(path, "its header states no duration")


def probe_duration(path: Path) -> float:
    """Return the song's length in seconds from its header, without decoding it."""
    with captured(path.name):
        return _probe_duration(path)


def _probe_duration(path: Path) -> float:
    _check_readable(path)
    seconds = None
    if path.suffix.lower() in _SNDFILE_SUFFIXES:
        seconds = _probe_sndfile(path)
    if seconds is None:
        seconds = _probe_pyav(path)
    if not math.isfinite(seconds) or seconds <= 0:
        raise _not_audio(path, f"its header states a duration of {seconds}")
    return seconds


def check_duration(path: Path, seconds: float, *, max_seconds: float, min_seconds: float) -> None:
    """Raise BadInput when ``seconds`` is outside ``[min_seconds, max_seconds]``."""
    if seconds > max_seconds:
        raise BadInput(
            f"{path.name} is {_clock(seconds)} long; songs longer than "
            f"{_clock(max_seconds)} are refused so a long mix does not queue hundreds of clips",
            "cut the song to the part you want a video for and drop that, or raise "
            "max_song_seconds in the config and run `tandava retry <run>`",
            cause="too_long",
        )
    if seconds < min_seconds:
        raise BadInput(
            f"{path.name} holds only {seconds:.2f} s of audio, too short to find a beat "
            f"(at least {min_seconds:g} s are needed)",
            _REPLACE_HINT,
            cause="too_short",
        )


def load_mono(
    path: Path,
    sr: int = defaults.ANALYSIS_SAMPLE_RATE,
    *,
    max_seconds: float = defaults.MAX_SONG_SECONDS,
    min_seconds: float = defaults.MIN_SONG_SECONDS,
) -> np.ndarray:
    """Decode ``path`` to float32 mono samples at ``sr`` Hz, refusing unusable songs."""
    with captured(path.name):
        return _load_mono(path, sr, max_seconds=max_seconds, min_seconds=min_seconds)


def _load_mono(path: Path, sr: int, *, max_seconds: float, min_seconds: float) -> np.ndarray:
    promised = _probe_duration(path)
    check_duration(path, promised, max_seconds=max_seconds, min_seconds=min_seconds)
    decoded = None
    if path.suffix.lower() in _SNDFILE_SUFFIXES:
        decoded = _decode_sndfile(path)
    if decoded is None:
        decoded = _decode_pyav(path)
    y, native_sr = decoded
    got = len(y) / native_sr
    if got < _TRUNCATED_RATIO * promised:
        raise BadInput(
            f"{path.name} is truncated: its header promises {_clock(promised)} "
            f"but only {_clock(got)} of audio could be decoded",
            f"the copy was probably interrupted; {_REPLACE_HINT}",
            cause="truncated",
        )
    check_duration(path, got, max_seconds=max_seconds, min_seconds=min_seconds)
    if float(np.max(np.abs(y))) < _SILENCE_PEAK:
        raise BadInput(
            f"{path.name} is silent: every sample is below -80 dBFS",
            f"check the export settings; {_REPLACE_HINT}",
            cause="silent",
        )
    if native_sr != sr:
        import soxr

        y = soxr.resample(y, native_sr, sr)
    return np.ascontiguousarray(y, dtype=np.float32)


def _decode_sndfile(path: Path) -> tuple[np.ndarray, int] | None:
    """Decode with libsndfile; None when it does not recognise the file at all."""
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except (RuntimeError, sf.SoundFileError):
        return None
    blocks: list[np.ndarray] = []
    try:
        with f:
            # Downmix block by block: a 20-minute stereo file never sits in
            # memory as float32 stereo.
            while True:
                block = f.read(_READ_BLOCK, dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block.mean(axis=1))
            native_sr = f.samplerate
    except (RuntimeError, sf.SoundFileError):
        # A mid-file decode error: keep what was read, the length check below
        # reports a truncated file in words a person understands.
        native_sr = f.samplerate
    y = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return y, native_sr


def _decode_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise _not_audio(path, "it has no audio stream")
            stream = container.streams.audio[0]
            native_sr = int(stream.rate or stream.codec_context.sample_rate)
            # Only the sample format and layout change here; soxr does the
            # rate change for every decoder alike.
            resampler = av.AudioResampler(format="flt", layout="mono", rate=native_sr)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as err:
        if not chunks:
            raise _not_audio(path, _ffmpeg_detail(path, err)) from err
        log.info("audio.decode_error", file=path.name, decoder="ffmpeg", error=str(err), kept="the audio decoded before the error")
    except OSError as err:
        raise _unreadable(path, err) from err
    y = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return y, native_sr


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
