"""Cutting a song into segments, one video clip's worth each.

Rules, in order of precedence:

1. The segments cover ``[0, duration]`` with no gap and no overlap: the first
   starts at 0.0, the last ends at the song's duration, and each segment ends
   exactly where the next starts (the same float, not a near one).
2. A section boundary is always a segment boundary, so a new visual idea
   starts where the music changes. Section boundaries lie on downbeats.
3. Every other boundary lies on a beat, preferring downbeats.
4. Lengths stay close to a clip (81 frames at 16 fps, 5.06 s) and never under
   half a clip unless the song or section itself is shorter.

Within each section an exact dynamic programme picks the cut beats that keep
the pieces closest to equal lengths near the target, with a small penalty for
cutting on a beat that is not a downbeat.

A remote writer's ideas (``fit_ideas``) are fitted to the same rules: its
times are clamped to the song and snapped to the nearest beat, boundaries that
collapse or leave a piece under half a clip are dropped, and what no idea
covers keeps the local cuts and the theme's prompts.

Moods come from the segment's energy, its trend and its section:

    calm       quiet (energy below 0.35)
    fading     energy falling fast, e.g. an outro or a breakdown
    building   energy rising fast, e.g. a pre-chorus or a riser
    euphoric   loud, in the loudest section of the song (the drop, the chorus)
    intense    loud elsewhere
    steady     everything in between
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from daemon import defaults
from daemon.music.analysis import Analysis

if TYPE_CHECKING:
    from daemon.music.ideas import PlanIdeas, SegmentIdea

_T = TypeVar("_T")

MOODS = ("calm", "steady", "building", "intense", "euphoric", "fading")
CLIP_SECONDS = defaults.CLIP_FRAMES / defaults.CLIP_FPS
_MIN_CLIP_SHARE = 0.5
# Cutting off a downbeat costs as much as being 22% off the target length.
_OFFBEAT_PENALTY = 0.05
_CALM, _LOUD, _EUPHORIC = 0.35, 0.65, 0.8
# Energy units per second: 0.3 -> 0.6 over a 5 s clip is "building".
_TREND = 0.05


class Segment(BaseModel):
    """A span of the song, start and end on beats, with what its clip should show."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    start: float
    end: float
    beats: int = Field(ge=0, description="beats inside [start, end)")
    energy: float = Field(ge=0.0, le=1.0)
    mood: str
    section: int = Field(ge=0)
    visual_prompt: str = ""
    motion_prompt: str = ""
    negative_prompt: str = ""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.end - self.start


def plan_segments(
    analysis: Analysis,
    *,
    clip_seconds: float = CLIP_SECONDS,
    count: int | None = None,
) -> list[Segment]:
    """Cut the song into segments; ``count`` None picks the number from length and sections.

    With ``count`` given, that many segments are made when the beats allow
    (each cut needs its own beat); fewer sections than ``count`` are merged
    away first, shortest first, when ``count`` is below the section count.
    """
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    beats = np.asarray(analysis.beats, dtype=float)
    downbeats = set(analysis.downbeats)
    spans = _section_spans(analysis)
    if count is not None:
        spans = _merge_spans(spans, count)
        pieces = _apportion([b - a for a, b, _ in spans], count)
    else:
        pieces = [max(1, round((b - a) / clip_seconds)) for a, b, _ in spans]

    bounds: list[tuple[float, float, int]] = []
    for (a, b, section), m in zip(spans, pieces, strict=True):
        inside = beats[(beats > a) & (beats < b)]
        # A chosen count may need pieces shorter than half a clip; the
        # dynamic count never does.
        floor = _MIN_CLIP_SHARE * clip_seconds
        if count is not None:
            floor = min(floor, _MIN_CLIP_SHARE * (b - a) / m)
        cuts = _cut_span(a, b, inside, downbeats, m, floor)
        points = [a, *cuts, b]
        bounds.extend((s, e, section) for s, e in zip(points[:-1], points[1:], strict=True))

    return _describe(analysis, bounds)


def _describe(analysis: Analysis, bounds: list[tuple[float, float, int]]) -> list[Segment]:
    """Segments for ``(start, end, section)`` spans: beats, energy and mood measured on the song."""
    beats = np.asarray(analysis.beats, dtype=float)
    loudest = max((s.energy for s in analysis.sections), default=1.0)
    section_energy = {i: s.energy for i, s in enumerate(analysis.sections)}
    segments = []
    for index, (start, end, section) in enumerate(bounds):
        energy = min(1.0, max(0.0, analysis.energy_between(start, end)))
        trend = analysis.energy_trend(start, end)
        peak = section_energy.get(section, loudest) >= loudest - 0.05
        segments.append(
            Segment(
                index=index,
                start=start,
                end=end,
                beats=int(np.sum((beats >= start) & (beats < end))),
                energy=round(energy, 4),
                mood=mood_for(energy, trend, in_loudest_section=peak),
                section=section,
            )
        )
    return segments


def fit_ideas(
    analysis: Analysis,
    local: list[Segment],
    ideas: PlanIdeas,
    *,
    theme_fill: list[Segment],
    enhancements: Sequence[str] = (),
    clip_seconds: float = CLIP_SECONDS,
    fixed_count: bool = False,
) -> list[Segment]:
    """The plan a remote writer's ``ideas`` make, fitted to the song's beats and filled from the theme.

    ``local`` is the local plan and ``theme_fill`` the ThemeWriter's prompts
    for it (same spans). An idea with usable times (finite, and a span left
    after clamping to the song) proposes cuts at both ends; one without sits
    on the local segment of its index. Where no idea lies, the local cuts
    stay. Every cut is snapped to the nearest beat, and one that would leave a
    piece under half a clip is dropped (the idea's before a local one's). Each
    final segment takes its prompts and mood from the idea overlapping it most
    (a mood outside ``MOODS`` is ignored); a prompt that is empty or missing
    comes from the theme fill overlapping it most, and the negative prompt
    always does. The theme's ``enhancements`` are appended to a visual prompt
    that lacks them. With ``fixed_count`` the local cuts are kept and ideas
    are matched by index.
    """
    spans = _idea_spans(ideas, local, analysis.duration)
    final: list[Segment]
    chosen: list[SegmentIdea | None]
    if fixed_count:
        final = list(local)
        by_index: dict[int, SegmentIdea] = {}
        for idea in ideas.segments:
            by_index.setdefault(idea.index, idea)
        chosen = [by_index.get(s.index) for s in final]
    else:
        cuts = _fitted_cuts(analysis, local, [(a, b) for a, b, _ in spans], clip_seconds)
        points = [0.0, *cuts, analysis.duration]
        sections = _section_spans(analysis)
        bounds = [(a, b, _most_overlap(sections, a, b) or 0)
                  for a, b in zip(points[:-1], points[1:], strict=True)]
        final = _describe(analysis, bounds)
        chosen = [_most_overlap(spans, s.start, s.end) for s in final]
    fill = [(t.start, t.end, t) for t in theme_fill]
    fitted = []
    for segment, best in zip(final, chosen, strict=True):
        theme = _most_overlap(fill, segment.start, segment.end)
        visual = _text(best.visual_prompt if best else None) or (theme.visual_prompt if theme else "")
        motion = _text(best.motion_prompt if best else None) or (theme.motion_prompt if theme else "")
        mood = _text(best.mood if best else None).lower()
        fitted.append(segment.model_copy(update={
            "visual_prompt": _enhanced(visual, enhancements),
            "motion_prompt": motion,
            "negative_prompt": theme.negative_prompt if theme else "",
            "mood": mood if mood in MOODS else segment.mood,
        }))
    return fitted


def _idea_spans(
    ideas: PlanIdeas, local: list[Segment], duration: float
) -> list[tuple[float, float, SegmentIdea]]:
    """Where each idea lies: its own times clamped to the song, else its local segment's."""
    home = {s.index: s for s in local}
    spans = []
    for idea in ideas.segments:
        start, end = idea.start, idea.end
        if start is not None and end is not None and math.isfinite(start) and math.isfinite(end):
            lo, hi = sorted((min(max(start, 0.0), duration), min(max(end, 0.0), duration)))
            if hi > lo:
                spans.append((lo, hi, idea))
                continue
        segment = home.get(idea.index)
        if segment is not None:
            spans.append((segment.start, segment.end, idea))
    return spans


def _fitted_cuts(
    analysis: Analysis, local: list[Segment], spans: list[tuple[float, float]], clip_seconds: float
) -> list[float]:
    """Inner boundaries on beats: the ideas' edges first, then local cuts no idea spans across."""
    beats = np.asarray(analysis.beats, dtype=float)
    floor = _MIN_CLIP_SHARE * clip_seconds
    proposed = sorted({t for span in spans for t in span})
    uncovered = [s.start for s in local[1:] if not any(a < s.start < b for a, b in spans)]
    kept: list[float] = []
    for group in (proposed, uncovered):
        for t in group:
            beat = _nearest_beat(beats, t)
            if beat is not None:
                _insert_if_room(kept, beat, analysis.duration, floor)
    return kept


def _nearest_beat(beats: np.ndarray, t: float) -> float | None:
    if len(beats) == 0:
        return None
    i = int(np.searchsorted(beats, t))
    near = [beats[j] for j in (i - 1, i) if 0 <= j < len(beats)]
    return float(min(near, key=lambda b: abs(b - t)))


def _insert_if_room(kept: list[float], t: float, duration: float, floor: float) -> None:
    """Add cut ``t`` unless it leaves a piece under ``floor`` (or empty) on either side."""
    i = bisect.bisect_left(kept, t)
    left = kept[i - 1] if i > 0 else 0.0
    right = kept[i] if i < len(kept) else duration
    if left < t < right and t - left >= floor and right - t >= floor:
        kept.insert(i, t)


def _most_overlap(spans: Sequence[tuple[float, float, _T]], start: float, end: float) -> _T | None:
    """The payload of the span overlapping ``[start, end)`` most (the first of equals), if any."""
    best: _T | None = None
    most = 0.0
    for a, b, payload in spans:
        overlap = min(b, end) - max(a, start)
        if overlap > most:
            best, most = payload, overlap
    return best


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _enhanced(visual: str, enhancements: Sequence[str]) -> str:
    lowered = visual.lower()
    for phrase in enhancements:
        if phrase.strip() and phrase.lower() not in lowered:
            visual = f"{visual}, {phrase}" if visual else phrase
            lowered = visual.lower()
    return visual


def mood_for(energy: float, trend: float, *, in_loudest_section: bool) -> str:
    """The mood label for a stretch with this energy (0..1) and trend (per second)."""
    if trend <= -_TREND and energy < _EUPHORIC:
        return "fading"
    if trend >= _TREND and energy < _EUPHORIC:
        return "building"
    if energy < _CALM:
        return "calm"
    if energy >= _EUPHORIC and in_loudest_section:
        return "euphoric"
    if energy >= _LOUD:
        return "intense"
    return "steady"


def _section_spans(analysis: Analysis) -> list[tuple[float, float, int]]:
    """(start, end, section index) per section, made to tile [0, duration] exactly."""
    starts, owners = [0.0], [0]
    for i, s in enumerate(analysis.sections[1:], start=1):
        if starts[-1] < s.start < analysis.duration:
            starts.append(s.start)
            owners.append(i)
    ends = [*starts[1:], analysis.duration]
    return list(zip(starts, ends, owners, strict=True))


def _merge_spans(
    spans: list[tuple[float, float, int]], count: int
) -> list[tuple[float, float, int]]:
    """Merge the shortest span into its shorter neighbour until at most ``count`` remain."""
    spans = list(spans)
    while len(spans) > count:
        i = min(range(len(spans)), key=lambda k: spans[k][1] - spans[k][0])
        if i == 0:
            j = 1
        elif i == len(spans) - 1:
            j = i - 1
        else:
            before, after = spans[i - 1], spans[i + 1]
            j = i - 1 if before[1] - before[0] <= after[1] - after[0] else i + 1
        lo, hi = min(i, j), max(i, j)
        spans[lo : hi + 1] = [(spans[lo][0], spans[hi][1], spans[lo][2])]
    return spans


def _apportion(lengths: list[float], total: int) -> list[int]:
    """Share ``total`` pieces across spans by length, at least one each (largest remainder)."""
    weights = np.asarray(lengths, dtype=float)
    spare = total - len(weights)
    exact = weights / weights.sum() * spare if weights.sum() > 0 else np.zeros_like(weights)
    shares = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - shares))[: spare - shares.sum()]:
        shares[k] += 1
    return [int(s) + 1 for s in shares]


def _cut_span(
    a: float,
    b: float,
    inside: np.ndarray,
    downbeats: set[float],
    pieces: int,
    floor: float,
) -> list[float]:
    """Pick ``pieces - 1`` beats in (a, b) to cut at, no piece under ``floor`` seconds.

    Fewer cuts are made when the beats do not allow that many.
    """
    pieces = min(pieces, len(inside) + 1)
    if pieces <= 1:
        return []
    target = (b - a) / pieces
    points = np.concatenate([[a], inside, [b]])
    n = len(points)
    # cost[p, q]: a piece from points[p] to points[q].
    span = points[None, :] - points[:, None]
    cost = ((span - target) / target) ** 2
    offbeat = np.array(
        [0.0] + [0.0 if t in downbeats else _OFFBEAT_PENALTY for t in inside] + [0.0]
    )
    cost = cost + offbeat[None, :]
    cost[span < floor] = np.inf
    cost[span <= 0] = np.inf
    best = cost[0].copy()
    back = []
    for _ in range(pieces - 1):
        total = best[:, None] + cost
        back.append(np.argmin(total, axis=0))
        best = total[back[-1], np.arange(n)]
    if not np.isfinite(best[n - 1]):
        # The floor cannot be met with this many pieces; one fewer can.
        return _cut_span(a, b, inside, downbeats, pieces - 1, floor)
    chosen = [n - 1]
    for links in reversed(back):
        chosen.append(int(links[chosen[-1]]))
    return [float(points[i]) for i in reversed(chosen[1:])]
