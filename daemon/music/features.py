"""The spectral front end of the music analysis (daemon.music.analysis).

How this works
--------------
One pass of a short-time Fourier transform (2048-sample Hann window, 512-sample
hop at 22,050 Hz, ~23 ms frames, both scaled for other rates) runs chunk by
chunk, 2048 frames at a time, so a 20-minute song's peak memory stays at a few
hundred MB. Each chunk's power spectrum is folded into:

* a log-mel spectrogram (64 equal-area triangular bands, 30 Hz to 8 kHz,
  floored 80 dB below its peak), whose positive spectral flux is the onset
  envelope and whose lowest bands carry the kick;
* a chromagram (12 pitch classes, Gaussian-weighted bins between 55 Hz and
  5 kHz, each frame scaled to a maximum of 1);
* the frame power, averaged into a 0..1 energy curve of one value per
  ``ENERGY_HOP`` seconds.
"""

from __future__ import annotations

import numpy as np

# At 22,050 Hz: a 93 ms window and a 23 ms hop, scaled for other rates.
N_FFT = 2048
HOP = 512
_N_MELS = 64
# Frames per FFT call: bounds the memory of one chunk's spectrum.
_CHUNK_FRAMES = 2048
# The kick lives below this; its onsets are the strongest downbeat cue.
_LOW_BAND_HZ = 160.0
# Magnitudes 40 dB below the song's loud level count a hundredth as much as in
# plain dB: a quiet hat between the beats stays quieter than the beat.
_COMPRESSION = 100.0
# Bands the beat tracker weighs per song: kick, low mids, mids, highs. More
# bands fit each song's accents more finely but made the choice less stable on
# the corpus (issue 12: 4, 6, 8, 12 and 16 were measured; 4 was best and steadiest).
BEAT_BANDS = 4
# Two energy values a second: smooth enough for a mood, fine enough for a 5 s clip.
ENERGY_HOP = 0.5
# Energy below the song's loud level by this many dB reads as 0.
_ENERGY_RANGE_DB = 30.0


def frame_geometry(sr: int) -> tuple[int, int, float]:
    """(window length, hop, frames per second) for a signal at ``sr`` Hz."""
    hop = max(1, round(HOP * sr / 22050))
    return hop * (N_FFT // HOP), hop, sr / hop


def spectral_features(
    y: np.ndarray, sr: int, n_fft: int, hop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(log-mel, chroma, frame power, number of mel bands below the kick's ceiling)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_fb, mel_centres = _mel_filters(freqs, _N_MELS, 30.0, min(8000.0, sr / 2))
    chroma_fb = _chroma_filters(freqs)
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    padded = np.pad(y, n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    mel = np.empty((_N_MELS, len(frames)), dtype=np.float32)
    chroma = np.empty((12, len(frames)), dtype=np.float32)
    power = np.empty(len(frames), dtype=np.float32)
    for a in range(0, len(frames), _CHUNK_FRAMES):
        spec = np.abs(np.fft.rfft(frames[a : a + _CHUNK_FRAMES] * window, axis=1)) ** 2
        mel[:, a : a + len(spec)] = mel_fb @ spec.T
        chroma[:, a : a + len(spec)] = chroma_fb @ np.sqrt(spec.T)
        power[a : a + len(spec)] = spec.sum(axis=1) / (n_fft * window.sum())
    logmel = 10.0 * np.log10(np.maximum(mel, 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 80.0)
    chroma /= np.maximum(chroma.max(axis=0, keepdims=True), 1e-9)
    return logmel, chroma, power, int(np.sum(mel_centres < _LOW_BAND_HZ))


def _mel_filters(
    freqs: np.ndarray, n_mels: int, fmin: float, fmax: float
) -> tuple[np.ndarray, np.ndarray]:
    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges_mel = np.linspace(to_mel(np.array(fmin)), to_mel(np.array(fmax)), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(up, down))
    # Equal-area triangles so wide high bands do not dominate the flux.
    fb *= 2.0 / (upper - lower)
    return fb.astype(np.float32), edges[1:-1]


def _chroma_filters(freqs: np.ndarray) -> np.ndarray:
    fb = np.zeros((12, len(freqs)), dtype=np.float32)
    audible = (freqs >= 55.0) & (freqs <= 5000.0)
    midi = 69.0 + 12.0 * np.log2(freqs[audible] / 440.0)
    for pc in range(12):
        dist = np.abs(((midi - pc) + 6.0) % 12.0 - 6.0)
        fb[pc, audible] = np.exp(-0.5 * (dist / 0.5) ** 2)
    return fb


def onset_flux(logmel: np.ndarray) -> np.ndarray:
    """SuperFlux-style onset envelope of a log-mel spectrogram (dB), 0 for the first frame.

    The dB spectrum is turned back into magnitudes scaled to the song's loud
    level and compressed with ``log(1 + 100 m)``: loud hits keep their lead
    over quiet ones (in plain dB a soft hat rising from silence flows as much
    as a kick, and off-beat hats then read as beats). Each frame is compared
    with the previous one maximum-filtered across neighbouring bands, so a
    vibrato or a slide does not read as a new note.
    """
    magnitude = 10.0 ** (logmel / 20.0)
    loud = float(np.percentile(magnitude.max(axis=0), 99)) or 1.0
    spec = np.log1p(_COMPRESSION * magnitude / loud)
    reference = spec.copy()
    reference[1:] = np.maximum(reference[1:], spec[:-1])
    reference[:-1] = np.maximum(reference[:-1], spec[1:])
    diff = np.maximum(0.0, spec[:, 1:] - reference[:, :-1]).mean(axis=0)
    return np.concatenate([[0.0], diff]).astype(np.float64)


def band_fluxes(logmel: np.ndarray, n_bands: int = BEAT_BANDS) -> np.ndarray:
    """``onset_flux`` of ``n_bands`` equal slices of the mel bands (kick ... cymbals), one row each.

    The beat tracker weighs them per song (daemon.music.beats.weigh_bands):
    which band marks the beat differs from song to song (the kick in one, the
    snare or the hats in another), and a band that sits on the off-beats in
    one song would pull the beats there if it were simply summed in.
    """
    n_mels = logmel.shape[0]
    edges = np.linspace(0, n_mels, n_bands + 1).round().astype(int)
    return np.array([onset_flux(logmel[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)])


def flux(logmel: np.ndarray) -> np.ndarray:
    """Positive spectral flux per frame (the onset envelope), 0 for the first frame."""
    diff = np.maximum(0.0, np.diff(logmel, axis=1)).mean(axis=0)
    return np.concatenate([[0.0], diff]).astype(np.float64)


def energy_curve(power: np.ndarray, fps: float) -> np.ndarray:
    """Frame power as 0..1 loudness, one value per ``ENERGY_HOP`` seconds."""
    per_block = max(1, int(round(ENERGY_HOP * fps)))
    n_blocks = max(1, int(np.ceil(len(power) / per_block)))
    padded = np.pad(power, (0, n_blocks * per_block - len(power)), mode="edge")
    db = 10.0 * np.log10(np.maximum(padded.reshape(n_blocks, per_block).mean(axis=1), 1e-12))
    # A short smoothing: the curve follows the arrangement, not each drum hit.
    db = np.convolve(np.pad(db, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    loud = np.percentile(db, 95)
    return np.clip((db - (loud - _ENERGY_RANGE_DB)) / _ENERGY_RANGE_DB, 0.0, 1.0)


def energy_slice(energy: np.ndarray, hop: float, start: float, end: float) -> np.ndarray:
    """The energy values covering ``[start, end)`` (at least one while any remain)."""
    a = int(start / hop)
    b = max(a + 1, int(np.ceil(end / hop)))
    return np.asarray(energy[a:b], dtype=float)


def mean_energy(energy: np.ndarray, hop: float, start: float, end: float) -> float:
    """Mean of the energy values covering ``[start, end)``; 0 past the end."""
    values = energy_slice(energy, hop, start, end)
    return float(values.mean()) if len(values) else 0.0
