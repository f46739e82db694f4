"""Frame timeline math (daemon.video.timeline): exact coverage, chains, slow-downs, transitions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import PermanentError
from daemon.music.plan import Segment
from daemon.video.timeline import (
    InvalidPlan,
    Timeline,
    build_timeline,
    frame_of,
    timeline_for_segments,
)

FPS_CHOICES = (16, 24, 25, 30)


def _check_invariants(
    tl: Timeline,
    boundaries: list[float],
    *,
    fps: int,
    max_frames: int | None,
    max_slowdown: float,
    min_frames: int,
    section_cuts: list[bool],
) -> None:
    assert tl.total_frames == frame_of(boundaries[-1], fps)
    assert tl.cut_frames[0] == 0 and tl.cut_frames[-1] == tl.total_frames
    for cut, b in zip(tl.cut_frames, boundaries, strict=True):
        assert abs(cut / fps - b) <= 1 / fps
    # The pieces tile the song: contiguous, no gap, no overlap.
    assert tl.pieces[0].start == 0
    for before, after in zip(tl.pieces, tl.pieces[1:], strict=False):
        assert after.start == before.end
    assert tl.pieces[-1].end == tl.total_frames
    assert sum(p.frames for p in tl.pieces) == tl.total_frames
    assert len(tl.pieces) == len(tl.clips)
    for i, (clip, piece) in enumerate(zip(tl.clips, tl.pieces, strict=True)):
        assert piece.clip == i
        assert piece.frames >= min_frames
        assert 1.0 <= piece.speed <= max_slowdown + 1e-9
        assert piece.source_frames <= clip.frames
        if max_frames is None:
            assert clip.frames == piece.output_frames and piece.speed == 1.0
        else:
            assert clip.frames == max_frames
        if clip.part == 0:
            assert clip.chained_from is None and clip.chain_frame is None
        else:
            assert clip.chained_from == i - 1
            assert tl.clips[i - 1].segment == clip.segment
            assert clip.chain_frame == tl.pieces[i - 1].source_frames - 1
    # Each segment's pieces fill exactly its span between cut frames.
    for seg in range(len(boundaries) - 1):
        own = [tl.pieces[i] for i, c in enumerate(tl.clips) if c.segment == seg]
        assert own[0].start == tl.cut_frames[seg] and own[-1].end == tl.cut_frames[seg + 1]
    # Transitions only at section cuts, never over half a neighbour, never overlapping.
    for t in tl.transitions:
        assert section_cuts[t.cut - 1]
        assert t.frame == tl.cut_frames[t.cut] == tl.pieces[t.piece].end
        left = tl.cut_frames[t.cut] - tl.cut_frames[t.cut - 1]
        right = tl.cut_frames[t.cut + 1] - tl.cut_frames[t.cut]
        assert t.before <= left // 2 and t.after <= right // 2
        if t.kind == "crossfade":
            assert tl.pieces[t.piece].tail == t.after
            assert tl.pieces[t.piece + 1].head == t.before
    for piece in tl.pieces:
        if tl.transition_after(piece.clip) is None:
            assert piece.tail == 0


@st.composite
def plans(draw: st.DrawFn) -> dict[str, object]:
    """A valid plan: beat-aligned boundaries with every segment at least the minimum."""
    fps = draw(st.sampled_from(FPS_CHOICES))
    duration = draw(st.floats(5.0, 600.0))
    beat = 60.0 / draw(st.floats(60.0, 180.0))
    min_frames = math.ceil(0.5 * fps)
    margin = (min_frames + 1) / fps  # still >= min_frames after rounding both ends
    least = math.ceil(margin / beat)
    boundaries = [0.0]
    beat_index = 0
    while True:
        beat_index += draw(st.integers(least, least + 24))
        t = beat_index * beat
        if t > duration - margin:
            break
        boundaries.append(t)
    boundaries.append(duration)
    return {
        "boundaries": boundaries,
        "fps": fps,
        "max_frames": draw(st.sampled_from([None, 81, 49])),
        "max_slowdown": draw(st.sampled_from([1.0, 1.25, 1.5, 2.0])),
        "section_cuts": draw(
            st.lists(st.booleans(), min_size=len(boundaries) - 2, max_size=len(boundaries) - 2)
        ),
        "transition": draw(st.sampled_from(["none", "fade", "crossfade"])),
        "transition_frames": draw(st.integers(0, 3 * fps)),
        "min_frames": min_frames,
    }


@settings(max_examples=300, deadline=None)
@given(plans())
def test_any_valid_plan_covers_the_song_exactly(plan: dict) -> None:
    """Any valid plan: exact coverage, cuts within a frame, minimum pieces, bounded slow-down and clip length."""
    tl = build_timeline(
        plan["boundaries"],
        fps=plan["fps"],
        max_frames=plan["max_frames"],
        max_slowdown=plan["max_slowdown"],
        section_cuts=plan["section_cuts"],
        transition=plan["transition"],
        transition_frames=plan["transition_frames"],
    )
    assert sum(piece.frames for piece in tl.pieces) == tl.total_frames
    _check_invariants(
        tl,
        plan["boundaries"],
        fps=plan["fps"],
        max_frames=plan["max_frames"],
        max_slowdown=plan["max_slowdown"],
        min_frames=plan["min_frames"],
        section_cuts=plan["section_cuts"],
    )


def test_uncapped_backend_gets_exact_lengths() -> None:
    """With no frame cap each segment is one clip of exactly its frames, at normal speed."""
    tl = build_timeline([0.0, 5.0, 12.5, 20.0], fps=16, max_frames=None)
    assert [c.frames for c in tl.clips] == [80, 120, 120]
    assert [p.speed for p in tl.pieces] == [1.0, 1.0, 1.0]


def test_short_segment_trims_a_native_length_clip() -> None:
    """A segment shorter than the cap asks for the native 81 frames and uses the first ones."""
    tl = build_timeline([0.0, 4.0], fps=16, max_frames=81)
    assert tl.clips[0].frames == 81
    assert (tl.pieces[0].source_frames, tl.pieces[0].speed) == (64, 1.0)


def test_medium_segment_is_slowed_not_chained() -> None:
    """A segment up to cap * max_slowdown is one clip slowed by frames / cap."""
    tl = build_timeline([0.0, 100 / 16], fps=16, max_frames=81)
    assert len(tl.clips) == 1
    assert tl.pieces[0].source_frames == 81
    assert tl.pieces[0].speed == pytest.approx(100 / 81)


def test_long_segment_becomes_an_even_chain() -> None:
    """A long segment is a chain of near-equal parts, each continuing the previous one's last shown frame."""
    tl = build_timeline([0.0, 300 / 16], fps=16, max_frames=81, max_slowdown=1.5)
    assert [p.frames for p in tl.pieces] == [100, 100, 100]
    assert [c.part for c in tl.clips] == [0, 1, 2]
    assert [c.chained_from for c in tl.clips] == [None, 0, 1]
    assert [c.chain_frame for c in tl.clips] == [None, 80, 80]


def test_chain_of_trimmed_parts_chains_from_the_last_shown_frame() -> None:
    """Between cap*slowdown and two clips, both parts are trimmed and the chain starts at the last frame used."""
    tl = build_timeline([0.0, 140 / 16], fps=16, max_frames=81, max_slowdown=1.5)
    assert [p.frames for p in tl.pieces] == [70, 70]
    assert tl.clips[1].chain_frame == 69


def test_crossfade_asks_for_the_overlap_frames() -> None:
    """A crossfade of d frames: the outgoing clip runs d//2 past the cut, the incoming starts d - d//2 before."""
    tl = build_timeline(
        [0.0, 5.0, 10.0],
        fps=16,
        max_frames=None,
        section_cuts=[True],
        transition="crossfade",
        transition_frames=9,
    )
    (t,) = tl.transitions
    assert (t.before, t.after, t.frame) == (5, 4, 80)
    assert [c.frames for c in tl.clips] == [80 + 4, 5 + 80]
    assert (tl.pieces[0].tail, tl.pieces[1].head) == (4, 5)
    assert sum(p.frames for p in tl.pieces) == tl.total_frames == 160


def test_crossfade_on_a_capped_backend_is_slowed_in() -> None:
    """On a capped backend the overlap frames are part of what is slowed, never beyond max_slowdown."""
    tl = build_timeline(
        [0.0, 5.0, 10.0],
        fps=16,
        max_frames=81,
        section_cuts=[True],
        transition="crossfade",
        transition_frames=8,
    )
    assert [c.frames for c in tl.clips] == [81, 81]
    assert [p.output_frames for p in tl.pieces] == [84, 84]
    assert all(p.speed == pytest.approx(84 / 81) for p in tl.pieces)


def test_fade_changes_no_length() -> None:
    """A fade darkens d//2 frames before the cut and lightens d - d//2 after it; clips keep their lengths."""
    tl = build_timeline(
        [0.0, 5.0, 10.0],
        fps=16,
        max_frames=None,
        section_cuts=[True],
        transition="fade",
        transition_frames=9,
    )
    (t,) = tl.transitions
    assert (t.kind, t.before, t.after) == ("fade", 4, 5)
    assert [c.frames for c in tl.clips] == [80, 80]


def test_hard_cuts_where_the_section_does_not_change() -> None:
    """Transitions are placed only at section boundaries."""
    tl = build_timeline(
        [0.0, 5.0, 10.0, 15.0],
        fps=16,
        max_frames=None,
        section_cuts=[False, True],
        transition="crossfade",
        transition_frames=8,
    )
    assert [t.cut for t in tl.transitions] == [2]
    assert tl.transition_after(0) is None


def test_transition_is_shortened_to_half_a_short_neighbour() -> None:
    """A transition longer than half a neighbouring segment is shortened to fit."""
    tl = build_timeline(
        [0.0, 1.0, 10.0],
        fps=16,
        max_frames=None,
        section_cuts=[True],
        transition="crossfade",
        transition_frames=48,
    )
    (t,) = tl.transitions
    assert t.before == 8  # half of the 16-frame first segment
    assert t.after <= t.before


@pytest.mark.parametrize(
    "boundaries",
    [
        [0.0, 5.0, 5.0, 10.0],  # zero-length segment
        [0.0, 6.0, 5.0, 10.0],  # decreasing
        [0.0, 5.0, 5.2, 10.0],  # shorter than the minimum
        [1.0, 5.0],  # does not start at 0
        [0.0],  # no segment
        [0.0, float("nan")],
    ],
)
def test_invalid_plans_raise_a_permanent_error(boundaries: list[float]) -> None:
    """A plan that cannot be laid out raises InvalidPlan, a PermanentError."""
    with pytest.raises(InvalidPlan) as info:
        build_timeline(boundaries, fps=16, max_frames=81)
    assert isinstance(info.value, PermanentError)
    assert info.value.cause == "InvalidPlan"


@pytest.mark.parametrize(
    "kwargs",
    [{"fps": 0}, {"max_frames": 0}, {"max_slowdown": 0.5}, {"transition": "wipe"}],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    """Programming errors (bad fps, cap, slow-down, transition name) raise ValueError."""
    args = {"fps": 16, "max_frames": 81, **kwargs}
    with pytest.raises(ValueError):
        build_timeline([0.0, 5.0], **args)


def test_timeline_from_plan_segments() -> None:
    """Segments from the planner: a change of section number is a section cut."""
    spans = [(0.0, 5.0, 0), (5.0, 10.0, 0), (10.0, 15.5, 1)]
    segments = [
        Segment(index=i, start=a, end=b, beats=8, energy=0.5, mood="steady", section=s)
        for i, (a, b, s) in enumerate(spans)
    ]
    tl = timeline_for_segments(segments, fps=16, max_frames=81, transition="crossfade")
    assert tl.total_frames == 248
    assert [t.cut for t in tl.transitions] == [2]
    assert tl.transitions[0].frames == 8
