"""What a song is made of: tempo, beats, downbeats, energy and sections.

How this works
--------------
1. One pass of a short-time Fourier transform (2048-sample Hann window,
   512-sample hop, ~23 ms frames) yields, chunk by chunk, a log-mel
   spectrogram, a chromagram and the frame power (daemon.music.features).
2. The onset envelope is a SuperFlux-style flux of the log-mel spectrum,
   compressed so loud hits outweigh quiet ones (features.onset_flux).
3. Tempo, metrical level and beats (daemon.music.beats): autocorrelation
   with a 120 BPM prior, the grid among its cross-rhythm relatives whose
   multiples all correlate, the level (double, half) chosen by onset
   strength on the beats against between them, and Ellis' dynamic programme
   following the local beat period so a tempo that drifts keeps its beats,
   then once more on the onset bands weighed by how they mark those beats.
   How clear the level was becomes ``confidence``, and a doubt is named in
   ``low_confidence`` so a person can correct it (``retry --tempo``).
   A song whose tracked beats fit one steady grid gets that grid, fitted to
   the whole song, instead (daemon.music.steady): loud off-beats in one
   passage cannot pull it aside.
4. A tempo a person gives replaces step 3's choice of level; the tracking is
   the same.
5. Meter and downbeats (daemon.music.meter): each beat's accent (low-band
   onset plus chord change) folded by 3 and by 4 picks the meter; a Viterbi
   path through bar positions places the downbeats, keeping the bar's phase
   unless the accents say for several bars that it moved.
6. Sections: timbre (MFCCs) and harmony (chroma) averaged per bar, then
   adjacent bars merged by Ward's criterion down to a count that suits the
   song's length, so boundaries fall on downbeats by construction.

Why numpy rather than librosa: librosa's helpers are numba-compiled with
eager signatures, so merely importing ``librosa.util`` compiles them. Measured
on the 2-core box: a fresh cache costs 10 s for ``librosa.util.utils``, 19.6 s
for ``librosa.beat``; even a warm cache costs 0.7 s and 2.5 s per process.
This module imports neither librosa nor numba, so the first song after an
install is as fast as the hundredth, and a daemon needs no JIT cache or
warm-up at start-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from daemon import defaults
from daemon.music.audio import load_mono
from daemon.music.beats import TEMPO_RANGE, choose_level, local_periods, track, weigh_bands
from daemon.music.features import (
    ENERGY_HOP,
    band_fluxes,
    energy_curve,
    energy_slice,
    frame_geometry,
    mean_energy,
    onset_flux,
    spectral_features,
)
from daemon.music.meter import (
    JUMP_COST,
    STEADY_JUMP_COST,
    beat_accents,
    downbeat_mask,
    meter_of,
)
from daemon.music.steady import steady_beats

# The compressed, max-filtered flux reads onsets a little early: against
# madmom and the charts on real music by ~15 ms, on synthetic drums by ~12 ms
# (issue 12's corpus); a cut a frame (42 ms) from the beat is seen.
_ONSET_LAG_SECONDS = 0.005
# Typical pop sections run 15-30 s; one per ~24 s gives 10 for a 4-min song.
_SECONDS_PER_SECTION = 24.0
_MAX_SECTIONS = 12
# A section shorter than this many bars is a fill or a pickup, not a section.
_MIN_SECTION_BARS = 4


class Section(BaseModel):
    """A stretch of the song with one character (verse, chorus...), bounded by downbeats."""

    model_config = ConfigDict(frozen=True)

    start: float
    end: float
    label: int = Field(description="sections that sound alike share a label")
    energy: float = Field(ge=0.0, le=1.0)


class Analysis(BaseModel):
    """The music analysis of one song; times are seconds from the start."""

    model_config = ConfigDict(frozen=True)

    duration: float
    sample_rate: int
    tempo: float = Field(description="beats per minute")
    beats: list[float]
    downbeats: list[float]
    beats_per_bar: int
    energy: list[float] = Field(description="loudness normalised to 0..1, one per energy_hop")
    energy_hop: float
    sections: list[Section]
    confidence: float = Field(
        default=1.0, ge=0.0, le=1.0, description="how clearly the beat level stood out (0..1)"
    )
    low_confidence: str | None = Field(
        default=None, description="why the tempo may be wrong; None when the analysis is sure"
    )
    tempo_given: bool = Field(default=False, description="the tempo was set by a person")

    def energy_between(self, start: float, end: float) -> float:
        """Mean normalised energy over ``[start, end)``."""
        return mean_energy(np.asarray(self.energy), self.energy_hop, start, end)

    def energy_trend(self, start: float, end: float) -> float:
        """Energy change per second over ``[start, end)`` (positive while building)."""
        values = energy_slice(np.asarray(self.energy), self.energy_hop, start, end)
        if len(values) < 3:
            return 0.0
        t = np.arange(len(values)) * self.energy_hop
        return float(np.polyfit(t, values, 1)[0])


def analyze(
    path: Path,
    *,
    max_seconds: float = defaults.MAX_SONG_SECONDS,
    min_seconds: float = defaults.MIN_SONG_SECONDS,
    sr: int = defaults.ANALYSIS_SAMPLE_RATE,
    tempo: float | None = None,
) -> Analysis:
    """Decode and analyse a song file; raises BadInput for files that cannot be used.

    ``tempo`` (BPM) overrides the tempo the analysis would choose: a person's
    correction (``tandava retry RUN --tempo 90``).
    """
    y = load_mono(path, sr, max_seconds=max_seconds, min_seconds=min_seconds)
    return analyze_signal(y, sr, tempo=tempo)


def analyze_signal(y: np.ndarray, sr: int, *, tempo: float | None = None) -> Analysis:
    """Analyse mono samples ``y`` at ``sr`` Hz (``tempo`` in BPM overrides the choice)."""
    y = np.asarray(y, dtype=np.float32)
    duration = len(y) / sr
    n_fft, hop, fps = frame_geometry(sr)
    logmel, chroma, power, low_bands = spectral_features(y, sr, n_fft, hop)
    onset = onset_flux(logmel)
    low_onset = onset_flux(logmel[:low_bands]) if low_bands else onset
    norm = onset / (onset.std() + 1e-9)

    if tempo is not None:
        if not TEMPO_RANGE[0] <= tempo <= TEMPO_RANGE[1]:
            raise ValueError(f"tempo must be {TEMPO_RANGE[0]:g}-{TEMPO_RANGE[1]:g} BPM, got {tempo:g}")
        period, confidence, doubt, half_doubt = 60.0 * fps / tempo, 1.0, None, False
    else:
        level = choose_level(norm, fps)
        period, confidence, doubt = level.period, level.confidence, level.doubt
        half_doubt = level.doubt_kind == "half"
    beat_frames = track(norm, local_periods(norm, period, fps))
    weighted = weigh_bands(band_fluxes(logmel), beat_frames)
    if weighted is not None:
        # Second pass: the bands that mark this song's beats (beats.py, step 5).
        beat_frames = track(weighted, local_periods(weighted, period, fps))
    if len(beat_frames) < 2:
        # No pulse to follow (a drone, a spoken word): a steady grid at the
        # estimated tempo still gives the planner beats to cut on.
        beat_frames = np.arange(0, len(norm), period).round().astype(int)
    # A song at one tempo throughout: one grid fitted to the whole song, which
    # a passage of loud off-beats cannot pull aside (daemon.music.steady).
    envelope = weighted if weighted is not None else norm
    grid = steady_beats(envelope, beat_frames, fps, one_tempo=track(envelope, period))
    points = grid if grid is not None else beat_frames.astype(float)
    beat_frames = np.round(points).astype(int)
    beats = points / fps + _ONSET_LAG_SECONDS
    keep = (beats >= 0) & (beats < duration)
    beat_frames, beats = beat_frames[keep], beats[keep]
    found_tempo = _tempo_from_beats(beats, 60.0 * fps / period)

    accent = beat_accents(beat_frames, low_onset, chroma)
    bpb = meter_of(accent)
    if half_doubt and bpb == 3:
        # A bar of three does not fall into pairs: "every other beat" is the
        # bar's own pattern, not a sign of half time.
        doubt, confidence = None, max(confidence, 0.5)
    jump_cost = STEADY_JUMP_COST if grid is not None else JUMP_COST
    downbeats = beats[downbeat_mask(accent, bpb, jump_cost)]
    energy = energy_curve(power, fps)
    sections = _sections(logmel, chroma, downbeats, fps, duration, energy)
    return Analysis(
        duration=duration,
        sample_rate=sr,
        tempo=round(float(found_tempo), 3),
        beats=[round(float(b), 4) for b in beats],
        downbeats=[round(float(b), 4) for b in downbeats],
        beats_per_bar=bpb,
        energy=[round(float(e), 4) for e in energy],
        energy_hop=ENERGY_HOP,
        sections=sections,
        confidence=confidence,
        low_confidence=doubt,
        tempo_given=tempo is not None,
    )


def _tempo_from_beats(beats: np.ndarray, fallback: float) -> float:
    if len(beats) < 4:
        return fallback
    # The slope of beat time against beat number: immune to frame rounding.
    slope = np.polyfit(np.arange(len(beats)), beats, 1)[0]
    return 60.0 / slope if slope > 0 else fallback


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def _sections(
    logmel: np.ndarray,
    chroma: np.ndarray,
    downbeats: np.ndarray,
    fps: float,
    duration: float,
    energy: np.ndarray,
) -> list[Section]:
    n = logmel.shape[1]
    bar_edges = np.unique(np.clip((downbeats[1:] * fps).round().astype(int), 1, n - 1))
    edges = np.concatenate([[0], bar_edges, [n]])
    want = int(round(duration / _SECONDS_PER_SECTION))
    want = min(_MAX_SECTIONS, max(2 if duration >= 16.0 else 1, want), len(edges) - 1)
    import scipy.fft

    mfcc = scipy.fft.dct(logmel, type=2, norm="ortho", axis=0)[:13]
    feats = np.vstack([_zscore_rows(mfcc), _zscore_rows(chroma)]).T
    bars = np.array([feats[edges[i] : edges[i + 1]].mean(axis=0) for i in range(len(edges) - 1)])
    groups = _segment_bars(bars, want)
    starts = [edges[g[0]] for g in groups]
    times = [0.0] + [float(downbeats[np.argmin(np.abs(downbeats * fps - s))]) for s in starts[1:]]
    ends = times[1:] + [duration]
    means = np.array([bars[g[0] : g[-1] + 1].mean(axis=0) for g in groups])
    labels = _labels(means)
    return [
        Section(
            start=round(s, 4),
            end=round(e, 4),
            label=lab,
            energy=round(mean_energy(energy, ENERGY_HOP, s, e), 4),
        )
        for s, e, lab in zip(times, ends, labels, strict=True)
    ]


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-9)


def _segment_bars(bars: np.ndarray, k: int) -> list[range]:
    """Split bars into ``k`` contiguous groups with the least within-group variance.

    An exact dynamic programme over prefix sums (Ward's criterion, optimal
    rather than greedy), O(k * bars^2) in numpy: 600 bars (20 minutes) and 12
    sections take milliseconds. Groups shorter than ``min_bars`` are not
    allowed, so one odd bar (a pickup, a fill) does not become a section.
    """
    n = len(bars)
    min_bars = max(1, min(_MIN_SECTION_BARS, n // k))
    s1 = np.concatenate([np.zeros((1, bars.shape[1])), np.cumsum(bars, axis=0)])
    s2 = np.concatenate([[0.0], np.cumsum(np.sum(bars**2, axis=1))])
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    size = np.maximum(j - i, 1)
    cost = s2[None, :] - s2[:, None] - np.sum((s1[None, :] - s1[:, None]) ** 2, axis=2) / size
    cost[(j - i) < min_bars] = np.inf
    best = cost[0].copy()
    splits = []
    for _ in range(k - 1):
        total = best[:, None] + cost
        splits.append(np.argmin(total, axis=0))
        best = total[splits[-1], np.arange(n + 1)]
    bounds = [n]
    for split in reversed(splits):
        bounds.append(int(split[bounds[-1]]))
    bounds.append(0)
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _labels(means: np.ndarray) -> list[int]:
    """Give sections that sound alike the same label (greedy, in order of appearance)."""
    if len(means) < 2:
        return [0] * len(means)
    dist = np.linalg.norm(means[:, None] - means[None, :], axis=2)
    threshold = 0.35 * dist.max()
    labels: list[int] = []
    for i in range(len(means)):
        match = next((labels[j] for j in range(i) if dist[i, j] < threshold), None)
        labels.append(match if match is not None else max(labels, default=-1) + 1)
    return labels
