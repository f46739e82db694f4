"""Per-run options: what one run does differently from the installation's settings.

How this works: a run that came through the HTTP API may carry
``options.json`` (a ``RunOptions``) and a ``photos/`` folder in its run
folder; both are put there by the intake before the run becomes visible, so
no stage ever sees the run without them. ``PerRun`` wraps a stage's work
function: for a run with options it builds the stage again over
``effective_settings`` (a copy of the settings with the run's choices laid
over them) and calls that, so theme, writer, backends, approval mode,
candidates, transition, fps, size and exports change for that run only and
every stage reads them the usual way, from its settings.

Photos imply the ``folder`` image backend (unless the options name another),
read from the run's own ``photos/`` in the order they were given (their
names carry a zero-padded position).

Scene overrides (``scenes``) are fitted to the song the way a prompt writer's
answer is: ``fit_scenes`` turns them into ``PlanIdeas`` and hands them to
``plan.fit_ideas`` over the written plan, so their times snap to beats and
what no scene covers keeps the writer's cuts and prompts. A scene's
``transition`` marks the cut at its start; ``scene_cuts`` tells the render
stage which cuts those are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.config import Settings, WriterName
from daemon.errors import BadInput
from daemon.music.analysis import Analysis
from daemon.music.ideas import PlanIdeas, SegmentIdea
from daemon.music.plan import Segment, fit_ideas
from daemon.runs import fsutil
from daemon.runs.stage import Outcome, StageRun

OPTIONS_FILE = "options.json"
PHOTOS_DIR = "photos"
TransitionName = Literal["none", "fade", "crossfade"]
# More scenes than this is not a plan a person wrote by hand.
MAX_SCENES = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SceneOverride(_Strict):
    """One scene a caller fixes: by time (``start``, ``duration``) or by segment index (``segment``)."""

    segment: int | None = Field(None, ge=0, le=10_000, description="the planned segment this replaces, 0-based")
    start: float | None = Field(None, ge=0, le=86_400, description="seconds from the song's start; snapped to a beat")
    duration: float | None = Field(None, gt=0, le=86_400, description="seconds; default: one clip")
    prompt: str | None = Field(None, max_length=2000, description="what the scene shows")
    motion: str | None = Field(None, max_length=1000, description="the clip action, e.g. 'slow zoom out, pan right'")
    transition: TransitionName | None = Field(None, description="the cut into this scene")

    @model_validator(mode="after")
    def _placed(self) -> SceneOverride:
        if (self.segment is None) == (self.start is None):
            raise ValueError("give either segment (an index) or start (seconds), not both or neither")
        if self.duration is not None and self.start is None:
            raise ValueError("duration needs start (a scene by segment index keeps that segment's length)")
        return self


class ImagesOptions(_Strict):
    backend: Literal["storyboard", "folder", "comfyui"] | None = None


class ClipsOptions(_Strict):
    backend: Literal["kenburns", "comfyui"] | None = None


class ApprovalOptions(_Strict):
    mode: Literal["auto", "manual"] | None = None


class RunOptions(_Strict):
    """What one run does differently from the installation's settings (every field optional)."""

    theme: str | None = Field(None, min_length=1, max_length=100, description="a theme name (see `tandava themes`)")
    writer: WriterName | None = Field(None, description="who writes the prompts")
    images: ImagesOptions | None = None
    clips: ClipsOptions | None = None
    approval: ApprovalOptions | None = None
    candidates: int | None = Field(None, ge=1, le=16, description="candidate images per segment")
    transition: TransitionName | None = None
    fps: int | None = Field(None, ge=1, le=120)
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    exports: list[Literal["mov", "vertical"]] | None = None
    scenes: list[SceneOverride] = Field(default_factory=list, max_length=MAX_SCENES)


def read_options(run_dir: Path) -> RunOptions | None:
    """The run's options, or None for a run without (every run the inbox made)."""
    path = run_dir / OPTIONS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return RunOptions.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        raise BadInput(f"the run's {OPTIONS_FILE} is damaged: {exc}",
                       f"Fix or remove {path}, then run `tandava retry {run_dir.name}`.",
                       cause="BadOptions") from exc


def write_options(run_dir: Path, options: RunOptions) -> None:
    """Write ``options.json`` atomically (only the fields the caller set)."""
    fsutil.atomic_write_text(run_dir / OPTIONS_FILE, options.model_dump_json(exclude_unset=True, indent=2) + "\n")


def effective_settings(settings: Settings, options: RunOptions | None, run_dir: Path) -> Settings:
    """A copy of ``settings`` with this run's options and photos laid over it."""
    has_photos = (run_dir / PHOTOS_DIR).is_dir()
    if options is None and not has_photos:
        return settings
    options = options or RunOptions()
    s = settings.model_copy(deep=True)
    if options.theme is not None:
        s.analysis.theme = options.theme
    if options.writer is not None:
        s.analysis.writer = options.writer
    if options.images is not None and options.images.backend is not None:
        s.images.backend = options.images.backend
    elif has_photos:
        s.images.backend = "folder"
    if s.images.backend == "folder" and has_photos:
        s.images.folder = run_dir / PHOTOS_DIR
    if options.clips is not None and options.clips.backend is not None:
        s.clips.backend = options.clips.backend
    if options.approval is not None and options.approval.mode is not None:
        s.approval.mode = options.approval.mode
    if options.candidates is not None:
        s.images.candidates = options.candidates
    if options.transition is not None:
        s.assembly.transition = options.transition
    if options.fps is not None:
        s.video.fps = options.fps
    if options.width is not None:
        s.video.width = options.width
    if options.height is not None:
        s.video.height = options.height
    if options.exports is not None:
        s.assembly.exports = list(options.exports)
    return s


class PerRun:
    """A stage's work function that honours each run's options (see the module docstring)."""

    def __init__(self, settings: Settings, make: Callable[[Settings], Callable[[StageRun], Outcome]]) -> None:
        self.settings = settings
        self.make = make
        self.default = make(settings)

    def __call__(self, job: StageRun) -> Outcome:
        options = read_options(job.ref.path)
        if options is None and not (job.ref.path / PHOTOS_DIR).is_dir():
            return self.default(job)
        return self.make(effective_settings(self.settings, options, job.ref.path))(job)


def fit_scenes(analysis: Analysis, written: list[Segment], scenes: list[SceneOverride], *,
               clip_seconds: float) -> tuple[list[Segment], dict[int, str]]:
    """The written plan with the scenes laid over it, on beats; and the transitions at scene starts.

    The second value maps a segment index to the transition of the cut into it.
    """
    if not scenes:
        return written, {}
    ideas = []
    for n, scene in enumerate(scenes):
        start = end = None
        if scene.start is not None:
            start = scene.start
            end = scene.start + (scene.duration or clip_seconds)
        # The ideas only place the cuts; the words are laid on below.
        ideas.append(SegmentIdea.model_construct(
            index=scene.segment if scene.segment is not None else n, start=start, end=end,
            visual_prompt=scene.prompt or "", motion_prompt=scene.motion or "", mood=None, theme=None))
    cut = fit_ideas(analysis, written, PlanIdeas.model_construct(segments=ideas), theme_fill=written,
                    clip_seconds=clip_seconds, fixed_count=False)
    # fit_ideas gives a segment the prompts of any idea touching it (a writer's ideas cover the whole
    # song); a scene covers only its own stretch, so a segment takes a scene's words only when the
    # scene covers its middle, and the written plan's otherwise.
    spans = [(i.start, i.end) if i.start is not None else _segment_span(written, i.index) for i in ideas]
    fitted = []
    for segment in cut:
        middle = (segment.start + segment.end) / 2
        covering = next((sc for sc, (a, b) in zip(scenes, spans, strict=True)
                         if a is not None and b is not None and a <= middle < b), None)
        base = max(written, key=lambda w: min(w.end, segment.end) - max(w.start, segment.start))
        fitted.append(segment.model_copy(update={
            "visual_prompt": (covering.prompt if covering and covering.prompt else base.visual_prompt),
            "motion_prompt": (covering.motion if covering and covering.motion else base.motion_prompt),
            "negative_prompt": base.negative_prompt,
            "mood": segment.mood if covering else base.mood,
        }))
    transitions: dict[int, str] = {}
    for idea, scene in zip(ideas, scenes, strict=True):
        if scene.transition is None:
            continue
        begin = idea.start if idea.start is not None else _segment_start(written, scene.segment)
        if begin is None:
            continue
        nearest = min(fitted, key=lambda s: abs(s.start - begin))
        if nearest.index > 0:
            transitions[nearest.index] = scene.transition
    return fitted, transitions


def _segment_span(segments: list[Segment], index: int) -> tuple[float | None, float | None]:
    found = next((s for s in segments if s.index == index), None)
    return (found.start, found.end) if found else (None, None)


def _segment_start(segments: list[Segment], index: int | None) -> float | None:
    return next((s.start for s in segments if s.index == index), None)


def scene_cuts(meta: dict[str, Any], segments: int) -> dict[int, str]:
    """The transitions a run's scenes asked for, from ``segments.json``'s ``scene_transitions``."""
    raw = meta.get("scene_transitions") or {}
    found: dict[int, str] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                index = int(key)
            except ValueError:
                continue
            if 0 < index < segments and value in ("none", "fade", "crossfade"):
                found[index] = value
    return found


def segments_meta(run_dir: Path) -> dict[str, Any]:
    """``segments.json`` without its segments (who wrote it, scene transitions…)."""
    from daemon.music.segments_file import SEGMENTS_FILE

    doc = json.loads((run_dir / SEGMENTS_FILE).read_text(encoding="utf-8"))
    return {k: v for k, v in doc.items() if k != "segments"} if isinstance(doc, dict) else {}
