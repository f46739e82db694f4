"""The steady grid (daemon.music.steady): one grid for a song at one tempo, none for one that drifts."""

from __future__ import annotations

import mir_eval
import numpy as np
import pytest

from daemon.music import analysis
from daemon.music.beats import choose_level, local_periods, track, weigh_bands
from daemon.music.features import band_fluxes, frame_geometry, onset_flux, spectral_features
from daemon.music.meter import JUMP_COST, STEADY_JUMP_COST, downbeat_mask
from daemon.music.steady import Grid, fit_grid, steady_beats, steady_share
from daemon.music.synth import _noise_hit, synth_song

FPS = 22050 / 512


def _impulses(period: float, phase: float, n: int) -> np.ndarray:
    """An onset envelope with a unit hit at each (fractional) grid point, split between frames."""
    env = np.zeros(n)
    for x in np.arange(phase, n - 1, period):
        i = int(x)
        env[i] += 1 - (x - i)
        env[i + 1] += x - i
    return env


def _f(est: list[float], truth: list[float]) -> float:
    return float(
        mir_eval.beat.f_measure(
            mir_eval.beat.trim_beats(np.asarray(truth)), mir_eval.beat.trim_beats(np.asarray(est))
        )
    )


def _with_loud_offbeats(bpm: float, start: float, end: float) -> tuple[np.ndarray, list[float], int]:
    """A synthesized song with a hit three times its loudest on every "and" from ``start`` to ``end`` s."""
    y, truth = synth_song(90.0, bpm, seed=7)
    sr = truth.sample_rate
    t = np.arange(int(0.12 * sr)) / sr
    # A noise crash with a low thump: every onset band hears the off-beat.
    sound = _noise_hit(sr, np.random.default_rng(1), 0.12, 30.0) + np.sin(2 * np.pi * 70 * t) * np.exp(-t * 25)
    sound *= 3.0 * np.abs(y).max() / np.abs(sound).max()
    for a, b in zip(truth.beats[:-1], truth.beats[1:], strict=True):
        mid = (a + b) / 2
        if start <= mid < end:
            at = int(mid * sr)
            piece = sound[: len(y) - at]
            y[at : at + len(piece)] += piece
    return y.astype(np.float32), truth.beats, sr


def test_fit_grid_finds_the_period_and_a_phase_between_frames() -> None:
    """An impulse train at 31.37 frames from frame 7.6 is found to a hundredth of a frame."""
    env = _impulses(31.37, 7.6, 6000)
    grid = fit_grid(env, 31.0)
    assert grid.period == pytest.approx(31.37, abs=0.01)
    assert grid.phase == pytest.approx(7.6, abs=0.2)


def test_beats_on_the_halfway_points_still_agree_with_the_grid() -> None:
    """A tracked stretch on the off-beat counts as steady; beats a third of a beat off do not."""
    grid = Grid(period=20.0, phase=0.0, strength=1.0)
    on = np.arange(0.0, 400.0, 20.0)
    assert steady_share(on, grid, FPS) == 1.0
    assert steady_share(on + 10.0, grid, FPS) == 1.0
    assert steady_share(on + 20.0 / 3, grid, FPS) == 0.0


def test_a_tempo_ramp_keeps_its_tracked_beats() -> None:
    """A 100 to 130 BPM ramp fits no single grid, so steady_beats leaves its beats alone."""
    y, truth = synth_song(60.0, 100.0, bpm_end=130.0, seed=3)
    n_fft, hop, fps = frame_geometry(truth.sample_rate)
    logmel, _, _, _ = spectral_features(y, truth.sample_rate, n_fft, hop)
    onset = onset_flux(logmel)
    beats = np.round((np.asarray(truth.beats) - 0.005) * fps).astype(int)
    assert steady_beats(onset, beats, fps) is None


def test_a_steady_song_gets_grid_points_spanning_its_tracked_beats() -> None:
    """The grid's points run from the first tracked beat to the last (no lead-in or fade-out added)."""
    env = _impulses(25.0, 3.0, 5000)
    tracked = np.arange(503.0, 4000.0, 25.0).round().astype(int)
    points = steady_beats(env, tracked, FPS)
    assert points is not None
    assert points[0] == pytest.approx(503.0, abs=0.5)
    assert points[-1] == pytest.approx(tracked[-1], abs=0.5)
    assert np.allclose(np.diff(points), 25.0, atol=0.01)


def test_a_passage_of_loud_offbeats_does_not_pull_the_beats_of_a_steady_song() -> None:
    """30 s of crashes on every "and", louder than the beat in every band: the beats stay on the beat."""
    y, beats, sr = _with_loud_offbeats(136.0, 30.0, 60.0)
    assert _f(analysis.analyze_signal(y, sr).beats, beats) >= 0.97


def test_without_the_grid_the_tracker_follows_those_offbeats() -> None:
    """The same song tracked as before the grid (both passes of daemon.music.beats) slips onto the off-beats."""
    y, beats, sr = _with_loud_offbeats(136.0, 30.0, 60.0)
    n_fft, hop, fps = frame_geometry(sr)
    logmel, _, _, _ = spectral_features(y, sr, n_fft, hop)
    onset = onset_flux(logmel)
    norm = onset / onset.std()
    period = choose_level(norm, fps).period
    weighted = weigh_bands(band_fluxes(logmel), track(norm, local_periods(norm, period, fps)))
    assert weighted is not None
    tracked = track(weighted, local_periods(weighted, period, fps))
    assert _f(list(tracked / fps + 0.005), beats) < 0.8


def test_on_a_steady_grid_a_passage_of_offbeat_accents_does_not_move_the_bar() -> None:
    """Twelve bars accented on beat 3: the tracked beats' bar follows them, a steady grid's bar holds."""
    bars = 60
    accent = np.zeros(bars * 4)
    accent[0::4] = 1.0
    passage = slice(24 * 4, 36 * 4)
    accent[passage][0::4] = 0.0
    accent[passage][2::4] = 2.5
    moved = downbeat_mask(accent, 4, JUMP_COST)
    held = downbeat_mask(accent, 4, STEADY_JUMP_COST)
    assert moved[passage][2::4].all() and not moved[passage][0::4].any()
    assert held[0::4].all() and held.sum() == bars


def test_a_ritardando_ending_keeps_its_tracked_beats() -> None:
    """60 s at 120 BPM then 10 s slowing to 100: the grid stops where the song leaves it."""
    steady, first = synth_song(60.0, 120.0, seed=1)
    slowing, last = synth_song(10.0, 120.0, bpm_end=100.0, seed=2)
    y = np.concatenate([steady, slowing])
    truth = first.beats + [60.0 + b for b in last.beats]
    found = np.asarray(analysis.analyze_signal(y, first.sample_rate).beats)
    ending = [b for b in truth if b > 60.0]
    assert _f(list(found[found > 60.0] - 55.0), [b - 55.0 for b in ending]) >= 0.97


def test_a_local_track_that_locks_onto_a_cross_rhythm_still_gets_the_grid() -> None:
    """A third of the local track at 5/6 the tempo does not hide a steady song from the one-tempo track."""
    env = _impulses(25.0, 3.0, 6000)
    steady = np.arange(3.0, 5990.0, 25.0).round().astype(int)
    local = np.concatenate([steady[:80], np.arange(steady[80], steady[160], 30.0), steady[160:]]).astype(int)
    assert steady_beats(env, local, FPS) is None
    points = steady_beats(env, local, FPS, one_tempo=steady)
    assert points is not None
    assert np.allclose(np.diff(points), 25.0, atol=0.01)
