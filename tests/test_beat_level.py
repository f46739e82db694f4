"""The metrical level, tempo changes and meter against synthetic songs (daemon.music.beats)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from daemon.music.analysis import analyze_signal
from daemon.music.beats import prior, weigh_bands
from daemon.music.synth import synth_song

SR = 22050


@hypothesis_settings(max_examples=10, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])
@given(
    bpm=st.floats(min_value=60.0, max_value=200.0),
    meter=st.sampled_from([3, 4]),
    hats=st.sampled_from([1, 2]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_the_written_level_and_meter_are_chosen(bpm: float, meter: int, hats: int, seed: int) -> None:
    """Any tempo 60-200 BPM, 3 or 4 beats a bar, with or without off-beat hats: that tempo and meter are found."""
    y, truth = synth_song(16.0, bpm, beats_per_bar=meter, hats_per_beat=hats, seed=seed)
    analysis = analyze_signal(y, SR)
    assert analysis.tempo == pytest.approx(bpm, rel=0.03)
    assert analysis.beats_per_bar == meter


@pytest.mark.parametrize("bpm", [90.0, 120.0])
def test_eighth_note_hats_do_not_double_the_tempo(bpm: float) -> None:
    """Quarter-note beats with quieter eighth-note hats read at the quarter-note tempo, with confidence."""
    y, _ = synth_song(30.0, bpm, hats_per_beat=2, seed=1)
    analysis = analyze_signal(y, SR)
    assert analysis.tempo == pytest.approx(bpm, rel=0.02)
    assert analysis.low_confidence is None


def test_a_tempo_ramp_keeps_its_beats() -> None:
    """A 100 -> 130 BPM ramp over a minute: 95% of true beats found within 70 ms, and nothing extra."""
    y, truth = synth_song(60.0, 100.0, bpm_end=130.0, seed=2)
    analysis = analyze_signal(y, SR)
    found, wanted = np.asarray(analysis.beats), np.asarray(truth.beats)
    hits = [np.min(np.abs(found - t)) < 0.07 for t in wanted if t > 2.0]
    extra = [np.min(np.abs(wanted - t)) >= 0.07 for t in found]
    assert np.mean(hits) >= 0.95 and np.mean(extra) <= 0.05


def test_a_given_tempo_overrides_the_choice() -> None:
    """analyze_signal(tempo=60) on a 120 BPM song tracks every other beat and says the tempo was given."""
    y, truth = synth_song(20.0, 120.0, seed=3)
    analysis = analyze_signal(y, SR, tempo=60.0)
    assert analysis.tempo == pytest.approx(60.0, rel=0.02)
    assert analysis.tempo_given and analysis.low_confidence is None
    found = np.asarray(analysis.beats)
    assert all(np.min(np.abs(np.asarray(truth.beats) - t)) < 0.07 for t in found)


def test_noise_is_flagged_as_unsure() -> None:
    """Steady noise has no pulse: the analysis says so instead of claiming a tempo."""
    y = 0.1 * np.random.default_rng(0).standard_normal(SR * 12).astype(np.float32)
    analysis = analyze_signal(y, SR)
    assert analysis.low_confidence is not None and analysis.confidence < 0.5


def test_prior_peaks_at_120_bpm() -> None:
    """The tempo prior is 1 at 120 BPM and falls symmetrically per octave."""
    assert float(prior(120.0)) == pytest.approx(1.0)
    assert float(prior(60.0)) == pytest.approx(float(prior(240.0)))
    assert float(prior(90.0)) < 1.0


def test_a_level_outside_the_listeners_range_is_flagged() -> None:
    """A clear 70 BPM pulse keeps its tempo but is flagged, naming the double a listener may tap."""
    y, _ = synth_song(24.0, 70.0, seed=4)
    analysis = analyze_signal(y, SR)
    assert analysis.tempo == pytest.approx(70.0, rel=0.02)
    assert analysis.low_confidence is not None and "double" in analysis.low_confidence
    assert analysis.confidence < 0.5


def test_bands_that_sit_between_the_beats_get_no_weight() -> None:
    """weigh_bands keeps the band on the beats and drops one louder halfway between them."""
    n, period = 4000, 20
    beats = np.arange(10, n - 10, period)
    on_beat, off_beat = np.zeros(n), np.zeros(n)
    on_beat[beats] = 1.0
    off_beat[beats[:-1] + period // 2] = 3.0
    env = weigh_bands(np.vstack([on_beat, off_beat]), beats)
    assert env is not None
    assert env[beats].mean() > 1.0 and env[beats[:-1] + period // 2].max() == pytest.approx(0.0)
    assert weigh_bands(np.vstack([off_beat]), beats) is None
