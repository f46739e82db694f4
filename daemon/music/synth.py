"""Synthesized songs whose beats, bars and sections are known exactly.

Tests measure the analysis against these, and ``tandava demo`` uses them so a
fresh install can show a whole run without a real song. The arrangement is a
small drum machine plus chords:

* a kick on every downbeat, a hi-hat on every beat and a snare on the
  backbeats, so every beat carries an onset and the bar carries an accent;
* a chord per bar from a progression, so harmony changes on downbeats;
* at ``section_change_at`` (snapped to the next downbeat) the progression,
  the chord timbre and the loudness change, the way a verse turns into a
  chorus.

Everything is seeded: the same arguments give the same samples.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

# A verse progression (C G Am F) and a chorus one (F C G Am, brighter timbre),
# as MIDI notes, so the section change is a change in chroma and in MFCCs.
_VERSE = ((60, 64, 67), (55, 59, 62), (57, 60, 64), (53, 57, 60))
_CHORUS = ((65, 69, 72), (60, 64, 67), (67, 71, 74), (69, 72, 76))
# PyAV encodes these suffixes; libsndfile writes the rest (its 1.1+ builds
# include an MP3 encoder, so .mp3 goes through soundfile too).
_PYAV_SUFFIXES = {".m4a": ("mp4", "aac"), ".aac": ("adts", "aac")}


class SongTruth(BaseModel):
    """What a synthesized song is made of, in seconds."""

    model_config = ConfigDict(frozen=True)

    duration: float
    sample_rate: int
    bpm: float
    beats_per_bar: int
    beats: list[float]
    downbeats: list[float]
    section_change_at: float | None


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.25 * sr)) / sr
    # A falling pitch is what makes a kick read as a kick: 110 Hz down to 45 Hz.
    freq = 45 + 65 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) * np.exp(-t * 14)


def _noise_hit(sr: int, rng: np.random.Generator, seconds: float, decay: float) -> np.ndarray:
    n = int(seconds * sr)
    noise = rng.standard_normal(n)
    # First difference tilts white noise towards the treble, like a hat or snare.
    bright = np.diff(noise, prepend=0.0)
    return bright * np.exp(-np.arange(n) / sr * decay)


def _chord(notes: tuple[int, ...], seconds: float, sr: int, brightness: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros_like(t)
    for note in notes:
        f0 = 440.0 * 2 ** ((note - 69) / 12)
        for h in range(1, brightness + 1):
            out += np.sin(2 * np.pi * f0 * h * t) / h
    attack = np.minimum(1.0, t / 0.02)
    release = np.minimum(1.0, (seconds - t) / 0.05)
    return out * attack * release / (len(notes) * 1.5)


def _add(y: np.ndarray, at: int, sound: np.ndarray) -> None:
    end = min(len(y), at + len(sound))
    if at < end:
        y[at:end] += sound[: end - at]


def synth_song(
    duration: float,
    bpm: float,
    *,
    sr: int = 22050,
    beats_per_bar: int = 4,
    section_change_at: float | None = None,
    hats_per_beat: int = 1,
    seed: int = 0,
    bpm_end: float | None = None,
) -> tuple[np.ndarray, SongTruth]:
    """Return ``(mono float32 samples, truth)`` for a drum-and-chords song.

    ``hats_per_beat`` > 1 adds softer off-beat hats (2 for eighths, 3 for
    triplets): the busier pulse that lures tempo estimators to a multiple.
    ``bpm_end`` makes the tempo ramp linearly from ``bpm`` to it over the song
    (``truth.bpm`` is then the starting tempo).
    """
    rng = np.random.default_rng(seed)
    n = int(round(duration * sr))
    y = np.zeros(n, dtype=np.float64)
    period = 60.0 / bpm
    # Start a little after zero so the first beat is not at the file's edge,
    # where any framing would smear it.
    first = 0.25 * period + 0.05
    beats = _beat_times(first, duration - 0.05, bpm, bpm if bpm_end is None else bpm_end)
    downbeats = beats[::beats_per_bar]

    change = None
    if section_change_at is not None:
        later = [d for d in downbeats if d >= section_change_at]
        change = later[0] if later else None

    kick = _kick(sr)
    for i, beat in enumerate(beats):
        period = beats[i + 1] - beat if i + 1 < len(beats) else period
        at = int(round(beat * sr))
        gain = 0.8 + 0.2 * rng.random()
        if i % beats_per_bar == 0:
            _add(y, at, 0.9 * gain * kick)
        elif i % 2 == 1:
            _add(y, at, 0.35 * gain * _noise_hit(sr, rng, 0.15, 25))
        _add(y, at, 0.12 * gain * _noise_hit(sr, rng, 0.05, 90))
        for sub in range(1, hats_per_beat):
            at_sub = int(round((beat + sub * period / hats_per_beat) * sr))
            _add(y, at_sub, 0.07 * gain * _noise_hit(sr, rng, 0.04, 110))

    bar_ends = [*downbeats[1:], downbeats[-1] + beats_per_bar * period] if downbeats else []
    for bar, (start, end) in enumerate(zip(downbeats, bar_ends, strict=True)):
        chorus = change is not None and start >= change
        progression = _CHORUS if chorus else _VERSE
        chord = _chord(progression[bar % 4], end - start, sr, brightness=6 if chorus else 2)
        _add(y, int(round(start * sr)), (0.35 if chorus else 0.15) * chord)

    # A faint noise floor: real recordings are never digitally silent, and
    # log-spectra of exact zeros are a test artefact, not a property of songs.
    y += 1e-4 * rng.standard_normal(n)
    y *= 0.9 / max(1e-9, float(np.max(np.abs(y))))
    truth = SongTruth(
        duration=n / sr,
        sample_rate=sr,
        bpm=bpm,
        beats_per_bar=beats_per_bar,
        beats=beats,
        downbeats=downbeats,
        section_change_at=change,
    )
    return y.astype(np.float32), truth


def _beat_times(first: float, last: float, bpm: float, bpm_end: float) -> list[float]:
    """Beat times from ``first`` to ``last`` with the tempo moving linearly in time."""
    if bpm_end == bpm:
        return [float(b) for b in np.arange(first, last, 60.0 / bpm)]
    beats, t = [], first
    while t < last:
        beats.append(float(t))
        t += 60.0 / (bpm + (bpm_end - bpm) * t / last)
    return beats


def write_audio(path: Path, y: np.ndarray, sr: int) -> Path:
    """Write mono float samples to ``path``; the suffix picks the format."""
    suffix = path.suffix.lower()
    if suffix in _PYAV_SUFFIXES:
        _write_pyav(path, y, sr, *_PYAV_SUFFIXES[suffix])
        return path
    import soundfile as sf

    sf.write(str(path), y, sr)
    return path


def write_song(
    path: Path,
    duration: float,
    bpm: float,
    *,
    sr: int = 22050,
    beats_per_bar: int = 4,
    section_change_at: float | None = None,
    hats_per_beat: int = 1,
    seed: int = 0,
) -> SongTruth:
    """Synthesize a song into ``path`` (wav, flac, ogg, mp3, m4a) and return its truth."""
    y, truth = synth_song(
        duration,
        bpm,
        sr=sr,
        beats_per_bar=beats_per_bar,
        section_change_at=section_change_at,
        hats_per_beat=hats_per_beat,
        seed=seed,
    )
    write_audio(path, y, sr)
    return truth


def _write_pyav(path: Path, y: np.ndarray, sr: int, container_format: str, codec: str) -> None:
    import av

    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sr, layout="mono")
        assert isinstance(stream, av.AudioStream)
        block = 1024
        for start in range(0, len(y), block):
            chunk = np.ascontiguousarray(y[start : start + block], dtype=np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = sr
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_long_silence(path: Path, seconds: float, sr: int = 8000) -> Path:
    """Write a valid 16-bit mono WAV of ``seconds`` of silence without generating it.

    Only the header is composed; the data is a hole the file system fills with
    zeros (a sparse file where supported), so a two-hour file takes
    milliseconds. Decoding it would still read every sample, which is what the
    "refuse before decoding" test wants to rule out.
    """
    frames = int(seconds * sr)
    data_bytes = frames * 2
    if data_bytes + 36 > 0xFFFFFFFF:
        raise ValueError(f"{seconds} s at {sr} Hz does not fit a RIFF WAV header")
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with path.open("wb") as f:
        f.write(header)
        if data_bytes:
            f.seek(len(header) + data_bytes - 1)
            f.write(b"\0")
    return path
