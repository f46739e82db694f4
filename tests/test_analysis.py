"""Music analysis against synthesized songs whose truth is known (daemon.music.analysis)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import BadInput
from daemon.music.analysis import Analysis, analyze, analyze_signal
from daemon.music.synth import SongTruth, synth_song, write_long_silence, write_song

SR = 22050
# (bpm, beats per bar, planted section change in seconds, hats per beat)
SONGS = {
    "90": (90.0, 4, None, 1),
    "120-change": (120.0, 4, 15.0, 1),
    "128": (128.0, 4, None, 1),
    "140-eighths": (140.0, 4, None, 2),
    "174-change": (174.0, 4, 14.0, 1),
    "100-waltz": (100.0, 3, None, 1),
    "110-triplets": (110.0, 4, None, 3),
}
BEAT_TOLERANCE = 0.07
HIT_RATE = 0.95


@pytest.fixture(scope="module")
def analysed() -> dict[str, tuple[Analysis, SongTruth]]:
    """Each song in SONGS (30 s) synthesized and analysed once for the module."""
    out = {}
    for seed, (name, (bpm, bpb, change, hats)) in enumerate(SONGS.items()):
        y, truth = synth_song(
            30.0, bpm, beats_per_bar=bpb, section_change_at=change, hats_per_beat=hats, seed=seed
        )
        out[name] = (analyze_signal(y, SR), truth)
    return out


def _hit_rate(found: list[float], wanted: list[float]) -> float:
    """Share of ``wanted`` times that have a ``found`` time within the tolerance."""
    if not wanted:
        return 1.0
    found_arr = np.asarray(found)
    return float(np.mean([np.min(np.abs(found_arr - t)) < BEAT_TOLERANCE for t in wanted]))


@pytest.mark.parametrize("name", SONGS)
def test_tempo_within_two_percent(
    analysed: dict[str, tuple[Analysis, SongTruth]], name: str
) -> None:
    """The estimated tempo is within 2% of the synthesized one, not a 4:3, 3:2 or 2:1 relative."""
    analysis, truth = analysed[name]
    assert analysis.tempo == pytest.approx(truth.bpm, rel=0.02)


@pytest.mark.parametrize("name", SONGS)
def test_beats_land_on_true_beats(
    analysed: dict[str, tuple[Analysis, SongTruth]], name: str
) -> None:
    """At least 95% of true beats are found within 70 ms, and 95% of found beats are true."""
    analysis, truth = analysed[name]
    assert _hit_rate(analysis.beats, truth.beats) >= HIT_RATE
    assert _hit_rate(truth.beats, analysis.beats) >= HIT_RATE


@pytest.mark.parametrize("name", SONGS)
def test_meter_and_downbeats(analysed: dict[str, tuple[Analysis, SongTruth]], name: str) -> None:
    """Beats per bar is the synthesized meter and 95% of true downbeats are found."""
    analysis, truth = analysed[name]
    assert analysis.beats_per_bar == truth.beats_per_bar
    assert _hit_rate(analysis.downbeats, truth.downbeats) >= HIT_RATE


@pytest.mark.parametrize("name", ["120-change", "174-change"])
def test_section_boundary_found_at_planted_change(
    analysed: dict[str, tuple[Analysis, SongTruth]], name: str
) -> None:
    """A section starts within 70 ms of the planted change, and the louder part has more energy."""
    analysis, truth = analysed[name]
    assert truth.section_change_at is not None
    starts = np.array([s.start for s in analysis.sections])
    nearest = int(np.argmin(np.abs(starts - truth.section_change_at)))
    assert abs(starts[nearest] - truth.section_change_at) < BEAT_TOLERANCE
    assert analysis.sections[nearest].energy > analysis.sections[nearest - 1].energy
    assert analysis.sections[nearest].label != analysis.sections[nearest - 1].label


@pytest.mark.parametrize("name", SONGS)
def test_sections_tile_the_song_on_downbeats(
    analysed: dict[str, tuple[Analysis, SongTruth]], name: str
) -> None:
    """Sections run from 0 to the end with no gap, each interior boundary on a downbeat."""
    analysis, _ = analysed[name]
    sections = analysis.sections
    assert sections[0].start == 0.0 and sections[-1].end == analysis.duration
    for before, after in zip(sections, sections[1:], strict=False):
        assert before.end == after.start
        assert after.start in analysis.downbeats


def test_energy_curve_is_normalised(analysed: dict[str, tuple[Analysis, SongTruth]]) -> None:
    """Energy values lie in 0..1, reach 1, and cover the song at energy_hop spacing."""
    analysis, _ = analysed["120-change"]
    energy = np.array(analysis.energy)
    assert energy.min() >= 0.0 and energy.max() == pytest.approx(1.0)
    assert len(energy) * analysis.energy_hop == pytest.approx(
        analysis.duration, abs=analysis.energy_hop
    )


def test_section_count_grows_with_length() -> None:
    """A 2-minute song gets about one section per 24 s, each of at least 4 bars."""
    y, _ = synth_song(120.0, 124.0, section_change_at=60.0, seed=9)
    analysis = analyze_signal(y, SR)
    assert len(analysis.sections) == 5
    bar = 4 * 60.0 / 124.0
    assert min(s.end - s.start for s in analysis.sections) >= 4 * bar - 0.1


def test_noise_without_a_pulse_still_gets_a_beat_grid() -> None:
    """Steady noise yields a plausible tempo and beats, so planning can still cut on them."""
    y = 0.1 * np.random.default_rng(0).standard_normal(SR * 10).astype(np.float32)
    analysis = analyze_signal(y, SR)
    assert 40.0 <= analysis.tempo <= 240.0
    assert len(analysis.beats) >= 2


def test_analysis_survives_a_json_round_trip(
    analysed: dict[str, tuple[Analysis, SongTruth]],
) -> None:
    """An Analysis written as JSON reads back equal (it is stored as analysis.json)."""
    analysis, _ = analysed["128"]
    assert Analysis.model_validate_json(analysis.model_dump_json()) == analysis


def test_analyze_reads_a_file(tmp_path: Path) -> None:
    """analyze() decodes a FLAC at 44.1 kHz and finds its tempo."""
    path = tmp_path / "song.flac"
    truth = write_song(path, 20.0, 128.0, sr=44100, seed=4)
    analysis = analyze(path)
    assert analysis.sample_rate == 22050
    assert analysis.duration == pytest.approx(truth.duration, abs=0.01)
    assert analysis.tempo == pytest.approx(128.0, rel=0.02)


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda p: p.touch(), "empty"),
        (lambda p: p.write_text("not a song\n" * 50, encoding="utf-8"), "not_audio"),
        (lambda p: write_song(p, 0.3, 120.0), "too_short"),
    ],
    ids=["zero-byte", "text-named-mp3", "0.3-seconds"],
)
def test_analyze_refuses_bad_input(tmp_path: Path, make, cause: str) -> None:  # type: ignore[no-untyped-def]
    """analyze() raises BadInput with the decoder's cause for unusable files."""
    path = tmp_path / "song.mp3"
    make(path)
    with pytest.raises(BadInput) as info:
        analyze(path)
    assert info.value.cause == cause and info.value.reason and info.value.hint


def test_analyze_refuses_a_two_hour_file_fast(tmp_path: Path) -> None:
    """analyze() refuses a 2-hour file by its header in under 2 s."""
    path = write_long_silence(tmp_path / "mix.wav", 2 * 3600)
    started = time.perf_counter()
    with pytest.raises(BadInput) as info:
        analyze(path, max_seconds=20 * 60)
    assert time.perf_counter() - started < 2.0 and info.value.cause == "too_long"


def test_analysis_needs_no_jit_compiler() -> None:
    """A fresh process analyses a song without importing librosa or numba (no JIT cost)."""
    code = (
        "import sys\n"
        "from daemon.music.analysis import analyze_signal\n"
        "from daemon.music.synth import synth_song\n"
        "y, _ = synth_song(6.0, 120.0)\n"
        "assert analyze_signal(y, 22050).beats\n"
        "print(sorted(m for m in ('librosa', 'numba') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"
