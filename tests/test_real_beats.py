"""Beats of real recordings against their committed references (bench/beat_corpus.py).

The recordings come from Debian packages (Frets on Fire songs with their
charts, game music); CI installs them (``python bench/bench_beats.py
--install``). Where a package is missing its songs are skipped with the
package named. Each song must score at least its floor in
``tests/data/beats/floors.json`` (written by ``bench/bench_beats.py
--write-floors`` from a run of the bench, a little under what it measured),
so a change that makes any song worse fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import beat_corpus  # noqa: E402

FLOORS = beat_corpus.REFERENCES / "floors.json"


def _floors() -> dict[str, dict[str, float]]:
    if not FLOORS.is_file():
        return {}
    data: dict[str, dict[str, float]] = json.loads(FLOORS.read_text(encoding="utf-8"))
    return data


SONGS = [s for s in beat_corpus.SONGS if s.id in _floors()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("song", SONGS, ids=[s.id for s in SONGS])
def test_real_song_scores_at_least_its_floor(song: beat_corpus.Song) -> None:
    """Beat F (best of madmom and chart), downbeat F and cuts on beats stay at or above the song's floor."""
    if not song.present():
        pytest.skip(f"{song.id} needs the Debian package {song.package}: {beat_corpus.INSTALL_COMMAND}")
    from beat_scoring import score

    from daemon.music.analysis import analyze

    ref = beat_corpus.reference(song)
    assert ref is not None
    got = score(song.id, analyze(beat_corpus.mixdown(song)), ref)
    floor = _floors()[song.id]
    assert got.best_f >= floor["f"], got.line()
    assert got.downbeat_f >= floor["downbeat_f"], got.line()
    assert got.cuts >= floor["cuts"], got.line()
    if floor.get("right_level"):
        assert got.right_level, got.line()


# Songs flagged at the other level, and the tempo a listener gives them.
CORRECTED = {"fof-feelings": (95.0, 0.95), "hr3-rlyeh": (150.0, 0.9), "hr3-hell": (125.0, 0.7)}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("song_id", sorted(CORRECTED))
def test_a_flagged_song_retried_at_the_listeners_tempo_scores_well(song_id: str) -> None:
    """``retry --tempo`` on a song flagged at the other level gives beats the references agree with."""
    song = next(s for s in beat_corpus.SONGS if s.id == song_id)
    if not song.present():
        pytest.skip(f"{song.id} needs the Debian package {song.package}: {beat_corpus.INSTALL_COMMAND}")
    from beat_scoring import score

    from daemon.music.analysis import analyze

    tempo, floor = CORRECTED[song_id]
    ref = beat_corpus.reference(song)
    assert ref is not None
    got = score(song.id, analyze(beat_corpus.mixdown(song), tempo=tempo), ref)
    assert got.relation == "ok" and got.best_f >= floor, got.line()


def test_click_tracks_score_at_least_097() -> None:
    """Every click track of the bench (hats, a ramp, waltzes) scores beat F >= 0.97 at its written level."""
    from beat_scoring import click_tracks

    for row in click_tracks():
        assert row.best_f >= 0.97 and row.relation == "ok", row.line()


def test_downbeats_count_against_the_reference_that_agrees_more() -> None:
    """Where madmom and the chart start the bar on different beats, downbeat F follows the one we match."""
    from beat_scoring import score

    from daemon.music.analysis import Analysis

    beats = [i * 0.5 for i in range(80)]
    ours = Analysis(
        duration=40.0, sample_rate=22050, tempo=120.0, beats=beats, downbeats=beats[1::4],
        beats_per_bar=4, energy=[0.5] * 80, energy_hop=0.5, sections=[],
    )
    ref = {
        "madmom": {"beats": beats, "downbeats": beats[0::4], "beats_per_bar": 4},
        "chart": {"beats": beats, "downbeats": beats[1::4], "beats_per_bar": 4},
    }
    assert score("bars", ours, ref).downbeat_f == 1.0
    del ref["chart"]
    assert score("bars", ours, ref).downbeat_f == 0.0


def test_beats_only_score_takes_the_better_reference_and_either_level() -> None:
    """A beats-only tracker (the essentia yardstick) scores against the reference that agrees more."""
    from beat_scoring import best_beat_f

    madmom = [i * 1.0 for i in range(60)]
    chart = [i * 0.5 for i in range(120)]
    ref = {"madmom": {"beats": madmom}, "chart": {"beats": chart}}
    f, rel = best_beat_f(chart, ref)
    assert f == 1.0 and rel == "ok"
    off_beat = [t + 0.5 for t in madmom]
    f, rel = best_beat_f(off_beat, {"madmom": {"beats": madmom}})
    assert f == 0.0 and rel == "ok"
    f, rel = best_beat_f(madmom[::2], {"madmom": {"beats": madmom}})
    assert rel == "1:2" and 0.6 < f < 0.7
