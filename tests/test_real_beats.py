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
