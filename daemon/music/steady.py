"""A song at one steady tempo gets one steady grid (for daemon.music.analysis).

How this works
--------------
Most produced music (anything made to a click or in a sequencer: game music,
electronic, most modern rock) holds one tempo from its first beat to its
last. The beat tracker (daemon.music.beats) follows the *local* evidence,
which is what a drifting live recording needs; but where a snare or crash on
the "and" is louder than the beat for 25-75 s, the local evidence points at
the off-beat and the tracker follows it there (corpus: two songs at F 0.47
and 0.71). Summed over the whole song, though, the beats are stronger than
the off-beats on every song of the corpus. So:

1. **Fit one grid to the whole song.** Period and phase are searched to
   maximise the onset envelope's mean on the grid points: coarse (61
   periods within +-1.5 % of the tracked beats' slope, half-frame phases),
   then fine around the best (41 periods, 1/8-frame phases). The envelope
   is smoothed over +-1 frame first, so a hit rounded to the neighbouring
   frame still counts.
2. **Keep it only for a steady song.** The grid is fitted to, and tested
   on, the onsets tracked at one period throughout as well as at the local
   period: a local period can lock onto a cross-rhythm for half a minute
   (fof-feelings at 95 BPM: 79 BPM for 30 s, F 0.57), which breaks the
   local track but not the song's steadiness (with the grid: F 0.997).
   Either track must sit within
   ``_TOLERANCE_S`` of the grid *or of its half-way points* (a stretch on
   the off-beat is still steady) for at least ``_STEADY_SHARE`` of the song.
   A tempo that drifts or ramps pulls the tracked beats off any one grid
   (a 100 to 130 BPM ramp: 41-44 %; 100 to 103 BPM over a minute: 63 %;
   120 to 121.2: 89 %), so those songs keep the tracked beats. Corpus
   songs: 94-100 %, but for one whose tracker wavers (86 %).
3. The grid spans the tracked beats (the quiet lead-in and fade-out stay
   out) and keeps its fractional frames: beat times finer than a frame.
4. **Where the song leaves the grid at its ends, the tracker stands.** A
   steady song may still open in free time or end on a ritardando. The grid
   runs from the first to the last stretch of ``_LEAVE_BEATS`` tracked beats
   in a row on it (or on its halfway points); the tracked beats before and
   after stand. Inside that span the grid holds: with the steady tempo on
   both sides, a tracked beat off the grid there is the tracker's error
   (an off-beat passage, a wobble of a frame or two), not the song's.

What it costs: ~15 ms for a 4-minute song (the comb is vectorised over phases).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The grid's period is searched within this fraction of the tracked tempo.
_SPAN = 0.015
_COARSE_PERIODS, _FINE_PERIODS = 61, 41
# Tracked beats this close to the grid (or its halfway points) agree with it.
_TOLERANCE_S = 0.046
# A song is steady when this share of its tracked beats agrees with the grid.
_STEADY_SHARE = 0.9
# This many tracked beats in a row off the grid are a passage that is not steady.
_LEAVE_BEATS = 4


@dataclass(frozen=True)
class Grid:
    """A steady grid: the period and first point in (fractional) frames; its mean envelope."""

    period: float
    phase: float
    strength: float

    def points(self, start: float, end: float) -> np.ndarray:
        """The grid's points (fractional frames) from ``start`` to ``end`` (frames)."""
        first = self.phase + np.ceil((start - self.phase) / self.period) * self.period
        return np.arange(first, end + 1e-9, self.period)


def fit_grid(onset: np.ndarray, period: float) -> Grid:
    """The steady grid near ``period`` (frames) on which ``onset`` is strongest (step 1)."""
    env = _widen(onset)
    best = Grid(period, 0.0, -np.inf)
    for p in np.linspace(period * (1 - _SPAN), period * (1 + _SPAN), _COARSE_PERIODS):
        best = max(best, _best_phase(env, p, np.arange(0.0, p, 0.5)), key=lambda g: g.strength)
    step = 2 * _SPAN * period / (_COARSE_PERIODS - 1)
    coarse = best
    for p in np.linspace(coarse.period - step, coarse.period + step, _FINE_PERIODS):
        phases = np.arange(coarse.phase - 1.0, coarse.phase + 1.0, 0.125) % p
        best = max(best, _best_phase(env, p, phases), key=lambda g: g.strength)
    return best


def _agrees(beats: np.ndarray, grid: Grid, fps: float) -> np.ndarray:
    """Per tracked beat (frames): within the tolerance of the grid or of its halfway points."""
    half = grid.period / 2
    k = (np.asarray(beats, dtype=float) - grid.phase) / half
    return np.asarray(np.abs(k - np.round(k)) * half <= _TOLERANCE_S * fps)


def steady_share(beats: np.ndarray, grid: Grid, fps: float) -> float:
    """Share of tracked ``beats`` (frames) within the tolerance of the grid or its halfway points."""
    return _share(_agrees(beats, grid, fps))


def _share(agrees: np.ndarray) -> float:
    """The share of True in ``agrees`` (0 when empty)."""
    return float(agrees.mean()) if len(agrees) else 0.0


def steady_beats(
    onset: np.ndarray, beats: np.ndarray, fps: float, one_tempo: np.ndarray | None = None
) -> np.ndarray | None:
    """The beats (fractional frames) with the steady grid where the song is steady, or None (step 2).

    ``beats`` are tracked at the local period; ``one_tempo`` (optional) the
    same onsets tracked at one period throughout. The grid is fitted to and
    tested on the latter when it has enough beats: a local period can lock
    onto a cross-rhythm for half a minute (fof-feelings at 95 BPM: 79 BPM for
    30 s), which breaks the local track but not the song's steadiness. None
    for a song that drifts; otherwise the grid's points over the tracked
    beats, but for the ends where they leave the grid (step 4).
    """
    probe = one_tempo if one_tempo is not None and len(one_tempo) >= 16 else beats
    if len(probe) < 16:
        return None
    slope = float(np.polyfit(np.arange(len(probe)), probe, 1)[0])
    grid = fit_grid(onset, slope)
    on_beats, on_probe = _agrees(beats, grid, fps), _agrees(probe, grid, fps)
    if max(_share(on_beats), _share(on_probe)) < _STEADY_SHARE:
        return None
    half = grid.period / 2
    # The grid runs from the first to the last stretch of _LEAVE_BEATS tracked
    # beats in a row on it; beyond, the tracked beats stand (step 4).
    steady = _runs(on_beats, _LEAVE_BEATS)
    ends = beats
    if not steady:
        ends, steady = probe, _runs(on_probe, _LEAVE_BEATS)
    if not steady:
        return None
    first, last = steady[0][0], steady[-1][1]
    points = grid.points(ends[first] - half, min(ends[last] + half, len(onset) - 1))
    if len(points) < 2:
        return None
    before, after = ends[:first], ends[last + 1 :]
    # Half a period at least between a tracked beat and the grid it meets.
    before, after = before[before <= points[0] - half], after[after >= points[-1] + half]
    return np.concatenate([before, points, after]).astype(float)


def _runs(mask: np.ndarray, shortest: int) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in ``mask`` at least ``shortest`` long."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b) - 1) for a, b in zip(starts, ends, strict=True) if b - a >= shortest]


def _best_phase(env: np.ndarray, period: float, phases: np.ndarray) -> Grid:
    """The phase among ``phases`` whose grid at ``period`` has the highest mean envelope."""
    n = len(env)
    count = int((n - 2 - phases.max()) // period) + 1
    if count < 2:
        return Grid(period, 0.0, -np.inf)
    x = phases[:, None] + np.arange(count)[None, :] * period
    i = np.floor(x).astype(int)
    frac = x - i
    means = (env[i] * (1 - frac) + env[i + 1] * frac).mean(axis=1)
    j = int(np.argmax(means))
    return Grid(float(period), float(phases[j]), float(means[j]))


def _widen(onset: np.ndarray) -> np.ndarray:
    """``onset`` smoothed over +-1 frame (1-2-1): a hit rounded to the next frame still counts,
    and the peak stays where the hit is (a max filter would flatten it into a plateau
    whose first frame, a frame early, wins)."""
    env = np.asarray(onset, dtype=float)
    padded = np.pad(env, 1, mode="edge")
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
