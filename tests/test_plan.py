"""Cutting songs into segments (daemon.music.plan)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.music.analysis import Analysis, Section, analyze_signal
from daemon.music.plan import CLIP_SECONDS, MOODS, Segment, mood_for, plan_segments
from daemon.music.synth import synth_song


def _analysis(
    duration: float,
    beats: list[float],
    section_starts: list[float] = (),  # type: ignore[assignment]
    beats_per_bar: int = 4,
    energy: list[float] | None = None,
) -> Analysis:
    """An Analysis built by hand: sections start at 0 and at ``section_starts``."""
    starts = [0.0, *section_starts]
    ends = [*section_starts, duration]
    hop = 0.5
    return Analysis(
        duration=duration,
        sample_rate=22050,
        tempo=120.0,
        beats=beats,
        downbeats=beats[::beats_per_bar],
        beats_per_bar=beats_per_bar,
        energy=energy if energy is not None else [0.5] * max(1, int(np.ceil(duration / hop))),
        energy_hop=hop,
        sections=[
            Section(start=a, end=b, label=i, energy=0.5)
            for i, (a, b) in enumerate(zip(starts, ends, strict=True))
        ],
    )


def _assert_tiles(segments: list[Segment], analysis: Analysis) -> None:
    assert segments[0].start == 0.0
    assert segments[-1].end == analysis.duration
    for before, after in zip(segments, segments[1:], strict=False):
        assert before.end == after.start
        assert before.start < before.end
    assert [s.index for s in segments] == list(range(len(segments)))


@st.composite
def analyses(draw: st.DrawFn) -> Analysis:
    """Random analyses: any duration, any beats (even none), sections on some beats."""
    duration = draw(st.floats(min_value=0.5, max_value=900.0, allow_nan=False))
    times = draw(
        st.lists(st.floats(min_value=0.0, max_value=duration, allow_nan=False), max_size=400)
    )
    beats = sorted({round(t, 4) for t in times if 0.0 < round(t, 4) < duration})
    section_starts = sorted(draw(st.sets(st.sampled_from(beats), max_size=12))) if beats else []
    energy = draw(
        st.lists(
            st.floats(0.0, 1.0),
            min_size=int(np.ceil(duration / 0.5)) + 1,
            max_size=int(np.ceil(duration / 0.5)) + 1,
        )
    )
    return _analysis(duration, beats, section_starts, draw(st.sampled_from([3, 4])), energy)


@settings(max_examples=150, deadline=None)
@given(
    analysis=analyses(),
    clip=st.floats(min_value=1.0, max_value=12.0),
    count=st.none() | st.integers(min_value=1, max_value=60),
)
def test_segments_always_tile_the_song_on_beats(
    analysis: Analysis, clip: float, count: int | None
) -> None:
    """For any analysis, segments tile [0, duration] with cuts on beats, sections kept, none too short."""
    segments = plan_segments(analysis, clip_seconds=clip, count=count)
    _assert_tiles(segments, analysis)
    beats = set(analysis.beats)
    cuts = {s.start for s in segments[1:]}
    assert cuts <= beats
    if count is None or count >= len(analysis.sections):
        assert {s.start for s in analysis.sections[1:]} <= cuts
    if count is None:
        spans = {(s.start, s.end) for s in analysis.sections}
        for segment in segments:
            assert segment.duration >= 0.5 * clip or (segment.start, segment.end) in spans
    else:
        assert len(segments) <= count
    assert all(s.mood in MOODS for s in segments)
    assert sum(s.beats for s in segments) == len(analysis.beats)


@pytest.fixture(scope="module")
def song_plan() -> tuple[Analysis, list[Segment]]:
    """A 60 s synthesized song with a change at 30 s, analysed and planned."""
    y, _ = synth_song(60.0, 123.0, section_change_at=30.0, seed=5)
    analysis = analyze_signal(y, 22050)
    return analysis, plan_segments(analysis)


def test_lengths_suit_the_clip(song_plan: tuple[Analysis, list[Segment]]) -> None:
    """Segments are at least half a clip and average within 25% of a clip."""
    _, segments = song_plan
    lengths = np.array([s.duration for s in segments])
    assert lengths.min() >= 0.5 * CLIP_SECONDS
    assert lengths.mean() == pytest.approx(CLIP_SECONDS, rel=0.25)


def test_section_boundaries_are_segment_boundaries(
    song_plan: tuple[Analysis, list[Segment]],
) -> None:
    """Every section start is a segment start, and segments carry their section's index."""
    analysis, segments = song_plan
    starts = {s.start: s for s in segments}
    for index, section in enumerate(analysis.sections):
        assert section.start in starts
        assert starts[section.start].section == index


def test_cuts_prefer_downbeats(song_plan: tuple[Analysis, list[Segment]]) -> None:
    """Most cuts fall on downbeats when the downbeats allow good lengths."""
    analysis, segments = song_plan
    cuts = [s.start for s in segments[1:]]
    assert np.mean([c in analysis.downbeats for c in cuts]) >= 0.5


def test_count_is_honoured() -> None:
    """count=N gives N segments when there are enough beats."""
    beats = [round(0.5 * i, 4) for i in range(1, 120)]
    analysis = _analysis(60.0, beats, [30.0])
    assert len(plan_segments(analysis, count=7)) == 7


def test_count_below_section_count_merges_sections() -> None:
    """Asking for fewer segments than sections merges the shortest sections."""
    beats = [round(0.5 * i, 4) for i in range(1, 120)]
    analysis = _analysis(60.0, beats, [10.0, 12.0, 40.0])
    segments = plan_segments(analysis, count=2)
    assert len(segments) == 2
    _assert_tiles(segments, analysis)


def test_song_shorter_than_a_clip_is_one_segment() -> None:
    """A 3 s song is one segment from 0 to its end."""
    analysis = _analysis(3.0, [0.5, 1.0, 1.5, 2.0, 2.5])
    segments = plan_segments(analysis)
    assert [(s.start, s.end) for s in segments] == [(0.0, 3.0)]
    assert segments[0].beats == 5


def test_song_without_beats_is_still_covered() -> None:
    """With no beats to cut on, each section is one segment and the song is covered."""
    analysis = _analysis(40.0, [])
    _assert_tiles(plan_segments(analysis), analysis)


def test_bad_arguments_are_rejected() -> None:
    """A non-positive clip length or count is a programming error (ValueError)."""
    analysis = _analysis(10.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="clip_seconds"):
        plan_segments(analysis, clip_seconds=0)
    with pytest.raises(ValueError, match="count"):
        plan_segments(analysis, count=0)


@pytest.mark.parametrize(
    ("energy", "trend", "loudest", "mood"),
    [
        (0.2, 0.0, False, "calm"),
        (0.5, 0.0, False, "steady"),
        (0.5, 0.1, False, "building"),
        (0.5, -0.1, False, "fading"),
        (0.7, 0.0, False, "intense"),
        (0.9, 0.0, False, "intense"),
        (0.9, 0.0, True, "euphoric"),
        (0.9, 0.2, True, "euphoric"),
    ],
)
def test_mood_for(energy: float, trend: float, loudest: bool, mood: str) -> None:
    """Energy, trend and being in the loudest section pick the documented mood."""
    assert mood_for(energy, trend, in_loudest_section=loudest) == mood


def test_rising_energy_reads_as_building() -> None:
    """A segment whose energy ramps up is labelled 'building'."""
    beats = [round(0.5 * i, 4) for i in range(1, 20)]
    ramp = list(np.linspace(0.1, 0.75, 20))
    segments = plan_segments(_analysis(10.0, beats, energy=ramp), count=1)
    assert segments[0].mood == "building"
