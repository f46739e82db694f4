"""Timeline math: which clips to ask a video backend for, and where each lands.

How this works. Everything is counted in output frames, never seconds, so the
final video can be exact: boundary ``b`` lands on frame ``round(b * fps)``
(half up) and the song is ``total_frames = round(duration * fps)`` frames.
Each segment owns the frames between its two cut frames, and those spans
tile ``[0, total_frames)`` with no gap.

A segment is filled by one clip, or by a *chain* of clips when one clip
cannot reach:

* ``max_frames=None`` (a backend that makes any length exactly): one clip of
  exactly the frames the segment shows.
* ``max_frames=m`` (Wan 2.1: 81): a segment needing ``L <= m`` frames gets a
  clip of ``m`` frames (the model's native length) of which the first ``L``
  are used; ``L <= m * max_slowdown`` gets one clip of ``m`` frames slowed by
  ``L / m``; longer needs ``k = ceil(L / (m * max_slowdown))`` clips with
  near-equal shares (so no tiny last piece), each trimmed or slowed as its
  share needs. Part ``p > 0`` of a chain starts from the last frame of part
  ``p - 1`` that is shown (``chained_from``, ``chain_frame``).

Transitions sit only at section boundaries; other cuts are hard cuts. A
transition of ``d`` frames is centred on its cut:

* ``crossfade``: the incoming clip starts ``d - d//2`` frames before the cut
  (its *head*) and the outgoing clip runs ``d//2`` frames past it (its
  *tail*). Those extra frames are part of what the backend is asked for (or,
  for a capped backend, part of the length that is slowed or chained), so a
  crossfade never freezes a frame or eats into a neighbour's own frames.
* ``fade``: to black over the last ``d//2`` frames before the cut and from
  black over the first ``d - d//2`` after it; no length changes.

A transition never takes more than half of either neighbouring segment, and
for a capped backend no more per side than a chained clip can give on top of
a minimum piece; a longer configured length is shortened at that cut (a
1-frame cut stays a cut). So transitions never overlap and every piece keeps
at least ``min_piece_frames`` frames of its own.

Errors: a plan that cannot be laid out (boundaries not increasing, not
starting at 0, a segment shorter than the minimum) raises ``InvalidPlan``, a
``PermanentError`` because re-running the same plan cannot succeed; bad
arguments from our own code (fps < 1, unknown transition) raise
``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from daemon import defaults
from daemon.config import Settings
from daemon.errors import PermanentError
from daemon.music.plan import Segment

TransitionKind = Literal["none", "fade", "crossfade"]
_KINDS = ("none", "fade", "crossfade")


class InvalidPlan(PermanentError):
    """The plan's boundaries cannot be laid out on a frame timeline."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the segment plan cannot be laid out as a video: {reason}",
            "Re-plan the run (`tandava retry <run>` from analyzed) or report it as a bug.",
            cause="InvalidPlan",
        )


@dataclass(frozen=True)
class ClipRequest:
    """What one video backend job must make."""

    segment: int
    part: int
    frames: int  # frames to ask the backend for
    # Index in ``Timeline.clips`` of the clip this one continues, and the
    # frame of it to start from (the last one shown); None for part 0.
    chained_from: int | None = None
    chain_frame: int | None = None


@dataclass(frozen=True)
class Piece:
    """How one clip is placed: the frames it owns, plus crossfade overlap either side."""

    clip: int  # index in Timeline.clips
    start: int  # first timeline frame this piece owns
    frames: int  # timeline frames it owns; pieces tile the song
    head: int  # extra frames shown before ``start`` (incoming side of a crossfade)
    tail: int  # extra frames shown after ``end`` (outgoing side of a crossfade)
    source_frames: int  # the clip's first N frames are used

    @property
    def end(self) -> int:
        return self.start + self.frames

    @property
    def output_frames(self) -> int:
        """Frames this piece puts out, overlap included."""
        return self.head + self.frames + self.tail

    @property
    def speed(self) -> float:
        """Output frames per source frame: above 1 is slowed down."""
        return self.output_frames / self.source_frames


@dataclass(frozen=True)
class Transition:
    """A transition at a section cut: ``before`` frames before it, ``after`` after it."""

    kind: Literal["fade", "crossfade"]
    cut: int  # index into Timeline.cut_frames (an interior one)
    frame: int
    before: int
    after: int
    piece: int  # index of the outgoing piece (the incoming one is piece + 1)

    @property
    def frames(self) -> int:
        return self.before + self.after


@dataclass(frozen=True)
class Timeline:
    """The exact frame layout of a run's video."""

    fps: int
    duration: float
    total_frames: int
    cut_frames: tuple[int, ...]
    clips: tuple[ClipRequest, ...]
    pieces: tuple[Piece, ...]  # one per clip, same order
    transitions: tuple[Transition, ...]

    def requests_for(self, segment: int) -> tuple[ClipRequest, ...]:
        """The clip requests of one segment, in chain order."""
        return tuple(c for c in self.clips if c.segment == segment)

    def transition_after(self, piece: int) -> Transition | None:
        """The transition between ``piece`` and the next one; None for a hard cut."""
        return next((t for t in self.transitions if t.piece == piece), None)


def frame_of(seconds: float, fps: int) -> int:
    """The frame a time lands on: rounded half up, so the same time always lands alike."""
    return math.floor(seconds * fps + 0.5)


def build_timeline(
    boundaries: Sequence[float],
    *,
    fps: int,
    max_frames: int | None,
    max_slowdown: float = defaults.MAX_SLOWDOWN,
    min_piece_frames: int | None = None,
    section_cuts: Sequence[bool] = (),
    transition: TransitionKind = "none",
    transition_frames: int = 0,
) -> Timeline:
    """Lay segments ``[b0, b1), [b1, b2)…`` out as clips on a frame timeline.

    ``section_cuts[i]`` says whether interior boundary ``boundaries[i + 1]`` is
    a section change (missing entries count as False).
    """
    _check_arguments(fps, max_frames, max_slowdown, transition, transition_frames)
    if min_piece_frames is None:
        min_piece_frames = math.ceil(defaults.MIN_PIECE_SECONDS * fps)
    cuts = _cut_frames(boundaries, fps, max(1, min_piece_frames))
    lengths = [b - a for a, b in zip(cuts, cuts[1:], strict=False)]
    cap = None if max_frames is None else math.floor(max_frames * max_slowdown)

    flags = list(section_cuts)[: len(cuts) - 2]
    flags += [False] * (len(cuts) - 2 - len(flags))
    sides: list[tuple[int, int]] = []  # (before, after) per interior cut
    for i, is_section in enumerate(flags):
        if not is_section or transition == "none":
            sides.append((0, 0))
            continue
        room_before = lengths[i] // 2
        room_after = lengths[i + 1] // 2
        if cap is not None and transition == "crossfade":
            # A chained first/last part must still own a minimum piece.
            side_cap = max(0, cap // 2 - min_piece_frames - 1)
            room_before, room_after = min(room_before, side_cap), min(room_after, side_cap)
        sides.append(_fit_transition(transition, transition_frames, room_before, room_after))

    clips: list[ClipRequest] = []
    pieces: list[Piece] = []
    transitions: list[Transition] = []
    for seg, n in enumerate(lengths):
        crossfade = transition == "crossfade"
        head = sides[seg - 1][0] if crossfade and seg > 0 else 0
        tail = sides[seg][1] if crossfade and seg < len(sides) else 0
        start = cuts[seg]
        for part, (owned, h, t) in enumerate(_split(n, head, tail, cap)):
            output = h + owned + t
            if max_frames is None:
                frames = source = output
            else:
                frames, source = max_frames, min(output, max_frames)
            chained_from = len(clips) - 1 if part else None
            chain_frame = pieces[-1].source_frames - 1 if part else None
            clips.append(ClipRequest(seg, part, frames, chained_from, chain_frame))
            pieces.append(Piece(len(pieces), start, owned, h, t, source))
            start += owned
            if owned < min_piece_frames:
                raise InvalidPlan(
                    f"segment {seg} would need a piece of {owned} frames "
                    f"(minimum {min_piece_frames}); the backend's clips are too short"
                )
        if seg < len(sides) and sides[seg] != (0, 0):
            kind: Literal["fade", "crossfade"] = "crossfade" if crossfade else "fade"
            before, after = sides[seg]
            transitions.append(
                Transition(kind, seg + 1, cuts[seg + 1], before, after, len(pieces) - 1)
            )

    return Timeline(
        fps=fps,
        duration=float(boundaries[-1]),
        total_frames=cuts[-1],
        cut_frames=tuple(cuts),
        clips=tuple(clips),
        pieces=tuple(pieces),
        transitions=tuple(transitions),
    )


def timeline_for_segments(
    segments: Sequence[Segment],
    *,
    fps: int,
    max_frames: int | None,
    max_slowdown: float = defaults.MAX_SLOWDOWN,
    transition: TransitionKind = "none",
    transition_seconds: float = defaults.TRANSITION_SECONDS,
) -> Timeline:
    """``build_timeline`` for a plan's ``Segment``s: a section change is a new ``section`` number."""
    if not segments:
        raise InvalidPlan("the plan has no segments")
    sections = [s.section for s in segments]
    return build_timeline(
        [*(s.start for s in segments), segments[-1].end],
        fps=fps,
        max_frames=max_frames,
        max_slowdown=max_slowdown,
        section_cuts=[a != b for a, b in zip(sections, sections[1:], strict=False)],
        transition=transition,
        transition_frames=frame_of(transition_seconds, fps),
    )


def _check_arguments(
    fps: int, max_frames: int | None, max_slowdown: float, transition: str, transition_frames: int
) -> None:
    if fps < 1:
        raise ValueError(f"fps must be at least 1, not {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1 or None, not {max_frames}")
    if not max_slowdown >= 1.0:
        raise ValueError(f"max_slowdown must be at least 1.0, not {max_slowdown}")
    if transition not in _KINDS:
        raise ValueError(f"transition must be one of {_KINDS}, not {transition!r}")
    if transition_frames < 0:
        raise ValueError(f"transition_frames must not be negative, not {transition_frames}")


def _cut_frames(boundaries: Sequence[float], fps: int, min_frames: int) -> list[int]:
    if len(boundaries) < 2:
        raise InvalidPlan("a plan needs at least one segment (two boundaries)")
    if not all(math.isfinite(b) for b in boundaries):
        raise InvalidPlan("a boundary is not a finite number")
    if abs(boundaries[0]) > 1e-9:
        raise InvalidPlan(f"the first segment starts at {boundaries[0]:.3f} s, not at 0")
    for i, (a, b) in enumerate(zip(boundaries, boundaries[1:], strict=False)):
        if not b > a:
            raise InvalidPlan(f"segment {i} ends ({b:.3f} s) before it starts ({a:.3f} s)")
    cuts = [frame_of(b, fps) for b in boundaries]
    cuts[0] = 0
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        if b - a < min_frames:
            raise InvalidPlan(
                f"segment {i} ({boundaries[i]:.3f}-{boundaries[i + 1]:.3f} s) is {b - a} frames "
                f"at {fps} fps, shorter than the minimum of {min_frames}"
            )
    return cuts


def _fit_transition(kind: str, frames: int, room_before: int, room_after: int) -> tuple[int, int]:
    """(before, after) for the longest transition up to ``frames`` that fits the room."""
    for d in range(frames, 1, -1):
        # A crossfade's head (before) is the larger half; a fade's fade-in (after) is.
        before, after = (d - d // 2, d // 2) if kind == "crossfade" else (d // 2, d - d // 2)
        if before <= room_before and after <= room_after:
            return before, after
    return 0, 0


def _split(n: int, head: int, tail: int, cap: int | None) -> list[tuple[int, int, int]]:
    """Split a segment's ``n`` owned frames into chain parts: (owned, head, tail) each.

    Output lengths (overlap included) are as equal as possible and each at
    most ``cap``; the crossfade head goes to the first part, the tail to the last.
    """
    total = head + n + tail
    if cap is None or total <= cap:
        return [(n, head, tail)]
    k = math.ceil(total / cap)
    base, extra = divmod(total, k)
    outputs = [base + (1 if p < extra else 0) for p in range(k)]
    parts = []
    for p, output in enumerate(outputs):
        h = head if p == 0 else 0
        t = tail if p == k - 1 else 0
        parts.append((output - h - t, h, t))
    return parts


def plan_timeline(settings: Settings, segments: list[Segment], max_frames: int | None,
                  scene_cuts: dict[int, str] | None = None, *, shortest: bool = False) -> Timeline:
    """The timeline for a run's segments under these settings.

    ``scene_cuts`` (segment index → transition) are cuts a caller's scenes asked for:
    a transition there (the run's kind, or the scene's when the run has none), none for "none".
    ``shortest``: ask for only the frames each clip shows (a backend that bills
    by the second and picks its own shortest length, Veo), not the model's
    native length.
    """
    cfg = settings.assembly
    fps = settings.video.fps
    cuts = [b.section != a.section for a, b in zip(segments, segments[1:], strict=False)]
    kind = cfg.transition
    for index, asked in (scene_cuts or {}).items():
        if 0 < index <= len(cuts):
            cuts[index - 1] = asked != "none"
            if kind == "none" and asked != "none":
                kind = asked  # type: ignore[assignment]
    timeline = build_timeline(
        [s.start for s in segments] + [segments[-1].end],
        fps=fps,
        max_frames=max_frames,
        max_slowdown=settings.clips.max_slowdown,
        section_cuts=cuts,
        transition=kind,
        transition_frames=round(cfg.transition_seconds * fps) if kind != "none" else 0,
    )
    if not shortest:
        return timeline
    clips = tuple(replace(c, frames=p.source_frames) for c, p in zip(timeline.clips, timeline.pieces, strict=True))
    return replace(timeline, clips=clips)
