"""Prompt writers: what turns an analysis and its segments into prompts.

``ThemeWriter`` is the built-in, offline writer: it draws words from a theme
file. Gemini and Ollama are remote writers (``writing.RemoteWriter``): they
propose ideas that ``plan.fit_ideas`` fits to the local plan's beats.

``write_plan`` is the chain: ``[analysis] writer``, then ``fallback`` (without
repeats), then ``theme``, which cannot fail and so is always the last resort.
A remote writer that fails (``WriterFailed``, any error really) hands over to
the next one; the ``WritingRecord`` says who wrote the plan and why each one
before it fell through, and goes into ``segments.json``. A run never fails
because a remote writer did.

A theme is a TOML file (``daemon/themes/<name>.toml``; a user's theme folder
is searched first, so a file there overrides a built-in of the same name):

    description = "..."
    extends = "shiva"             # optional: start from another theme
    subjects = ["...", ...]       # what the picture is of; one per section
    settings = ["...", ...]       # where it happens
    negative = "..."              # what every picture must not contain
    enhancements = ["...", ...]   # appended to every visual prompt
    [moods]                       # words per mood, see plan.MOODS
    calm = ["...", ...]
    [camera]                      # camera motions per energy level
    low = ["slow zoom in", ...]
    mid = [...]
    high = [...]

With ``extends``, lists and strings in the file replace the parent's, and the
``moods``/``camera`` tables are merged key by key.

Choices are deterministic: segment ``i`` draws from ``random.Random(seed + i)``
and a section's subject from a generator seeded by the seed and the section's
label, so sections that sound alike show the same subject.
"""

from __future__ import annotations

import random
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.config import Settings
from daemon.errors import ConfigError, StageError, TandavaError
from daemon.music.analysis import Analysis
from daemon.music.plan import MOODS, Segment, fit_ideas, plan_segments
from daemon.writers.brief import Brief, RemoteWriter, writer_chain

log = structlog.get_logger("tandava.writers")

BUILTIN_THEMES = Path(__file__).parent / "themes"
ENERGY_LEVELS = ("low", "mid", "high")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Energy thresholds for the camera's energy level.
_LOW, _HIGH = 0.4, 0.7
# How many theme files an ``extends`` chain may pass through (catches cycles).
_MAX_EXTENDS = 8


@runtime_checkable
class PromptWriter(Protocol):
    """Fills in each segment's visual, motion and negative prompt."""

    name: str

    def write(self, analysis: Analysis, segments: list[Segment], *, seed: int) -> list[Segment]:
        """Return copies of ``segments`` with prompts filled; same order, same spans."""
        ...


class Theme(BaseModel):
    """The vocabulary a ThemeWriter draws from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    subjects: list[str] = Field(min_length=1)
    settings: list[str] = Field(min_length=1)
    moods: dict[str, list[str]]
    camera: dict[str, list[str]]
    negative: str = ""
    enhancements: list[str] = Field(default_factory=list)

    @field_validator("moods")
    @classmethod
    def _every_mood(cls, moods: dict[str, list[str]]) -> dict[str, list[str]]:
        return _require_keys(moods, MOODS, "moods")

    @field_validator("camera")
    @classmethod
    def _every_level(cls, camera: dict[str, list[str]]) -> dict[str, list[str]]:
        return _require_keys(camera, ENERGY_LEVELS, "camera")


def _require_keys(
    table: dict[str, list[str]], keys: Sequence[str], what: str
) -> dict[str, list[str]]:
    missing = [k for k in keys if not table.get(k)]
    if missing:
        raise ValueError(f"[{what}] needs a non-empty list for: {', '.join(missing)}")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ValueError(f"[{what}] has unknown keys {unknown}; known: {', '.join(keys)}")
    return table


def available_themes(extra_dirs: Sequence[Path] = ()) -> list[str]:
    """Names of every theme in the user's folders and the built-ins, sorted."""
    names: set[str] = set()
    for folder in [*extra_dirs, BUILTIN_THEMES]:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml") if _NAME.match(p.stem))
    return sorted(names)


def load_theme(name: str, extra_dirs: Sequence[Path] = ()) -> Theme:
    """Load and validate theme ``name``; the user's folders are searched before the built-ins."""
    dirs = [*extra_dirs, BUILTIN_THEMES]
    data = _resolve(name, dirs, 0)
    data.pop("extends", None)
    try:
        return Theme(name=name, **data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"theme {name!r}: {where}", first.get("input"), first["msg"]) from err


def _resolve(name: str, dirs: list[Path], depth: int) -> dict[str, Any]:
    if not _NAME.match(name):
        raise ConfigError("theme", name, "a name of lowercase letters, digits, '-' or '_'")
    if depth > _MAX_EXTENDS:
        raise ConfigError("theme", name, f"an 'extends' chain shorter than {_MAX_EXTENDS} themes")
    for i, folder in enumerate(dirs):
        path = folder / f"{name}.toml"
        if path.is_file():
            data = _read(path)
            parent = data.get("extends")
            if parent is None:
                return data
            # A user's "shiva" extending "shiva" means the built-in one, so a
            # parent of the same name is looked up past this folder.
            later = dirs[i + 1 :] if parent == name else dirs
            return _merge(_resolve(str(parent), later, depth + 1), data)
    raise ConfigError("theme", name, f"one of: {', '.join(available_themes(dirs)) or 'none'}")


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"theme file {path}", str(err), "a readable UTF-8 TOML file") from err


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(parent.get(key), dict):
            merged[key] = {**parent[key], **value}
        else:
            merged[key] = value
    return merged


class ThemeWriter:
    """The offline default writer: prompts composed from a theme's vocabulary."""

    name = "theme"

    def __init__(self, theme: Theme) -> None:
        self.theme = theme

    def write(self, analysis: Analysis, segments: list[Segment], *, seed: int) -> list[Segment]:
        """Return ``segments`` with visual, motion and negative prompts from the theme."""
        theme = self.theme
        written = []
        for segment in segments:
            rng = random.Random(seed + segment.index)
            label = _section_label(analysis, segment.section)
            subject = random.Random(f"{seed}/section/{label}").choice(theme.subjects)
            words = theme.moods[segment.mood]
            mood_words = rng.sample(words, k=min(2, len(words)))
            camera = rng.choice(theme.camera[energy_level(segment.energy)])
            visual = [subject, rng.choice(theme.settings), *mood_words, *theme.enhancements]
            motion = (
                f"{camera}, {mood_words[0]}, movement in time with a {analysis.tempo:.0f} BPM pulse"
            )
            written.append(
                segment.model_copy(
                    update={
                        "visual_prompt": ", ".join(visual),
                        "motion_prompt": motion,
                        "negative_prompt": theme.negative,
                    }
                )
            )
        return written


def energy_level(energy: float) -> str:
    """The camera table a segment's energy (0..1) draws from: low, mid or high."""
    if energy < _LOW:
        return "low"
    return "mid" if energy < _HIGH else "high"


def _section_label(analysis: Analysis, section: int) -> int | str:
    if 0 <= section < len(analysis.sections):
        return analysis.sections[section].label
    return section


@dataclass(frozen=True)
class WritingRecord:
    """Who wrote a run's plan, and for each writer tried before it, why it fell through."""

    writer: str
    fell_through: list[dict[str, str]] = field(default_factory=list)


RemoteFactory = Callable[[str, Settings], RemoteWriter]


def make_remote_writer(name: str, settings: Settings) -> RemoteWriter:
    """The remote writer called ``name`` (``gemini`` or ``ollama``), configured from ``settings``."""
    if name == "ollama":
        from daemon.writers.ollama import OllamaWriter, shares_gpu_with_comfy

        return OllamaWriter(settings.ollama, unload_after=shares_gpu_with_comfy(settings))
    if name == "gemini":
        from daemon.writers.gemini import make_gemini_writer

        return make_gemini_writer(settings)
    raise ValueError(f"no remote writer called {name!r}")


def write_plan(
    settings: Settings,
    analysis: Analysis,
    song: Path,
    seed: int,
    *,
    make_remote: RemoteFactory = make_remote_writer,
) -> tuple[list[Segment], WritingRecord]:
    """The song's segment plan with prompts, from the first writer in the chain that gives one."""
    from daemon.logs import scrub

    cfg = settings.analysis
    fixed = isinstance(cfg.segments, int)
    clip_seconds = settings.video.clip_seconds
    local = plan_segments(analysis, clip_seconds=clip_seconds,
                          count=cfg.segments if isinstance(cfg.segments, int) else None)
    theme = load_theme(cfg.theme, [settings.paths.themes] if settings.paths.themes else [])
    filled = ThemeWriter(theme).write(analysis, local, seed=seed)
    fell: list[dict[str, str]] = []
    for name in writer_chain(settings):
        if name == "theme":
            return filled, WritingRecord("theme", fell)
        brief = Brief(analysis=analysis, segments=local, song=song, theme_name=theme.name,
                      theme_description=theme.description, subjects=list(theme.subjects),
                      negative=theme.negative, enhancements=list(theme.enhancements), seed=seed)
        started = time.monotonic()
        try:
            ideas = make_remote(name, settings).propose(brief)
        except Exception as exc:  # noqa: BLE001 - a remote writer must never fail the run
            reason, hint = _why(name, exc)
            fell.append({"writer": name, "reason": scrub(reason), **({"hint": scrub(hint)} if hint else {})})
            log.warning("writer.fell_through", writer=name, reason=reason, hint=hint,
                        error_type=type(exc).__name__, exc_info=not isinstance(exc, TandavaError | ImportError))
            continue
        segments = fit_ideas(analysis, local, ideas, theme_fill=filled, enhancements=theme.enhancements,
                             clip_seconds=clip_seconds, fixed_count=fixed)
        log.info("writer.wrote", writer=name, ideas=len(ideas.segments), segments=len(segments),
                 seconds=round(time.monotonic() - started, 2))
        return segments, WritingRecord(name, fell)
    raise AssertionError("the writer chain always ends with theme")


def _why(name: str, exc: Exception) -> tuple[str, str]:
    """What a person reads about a writer that fell through: the reason and, when known, the fix."""
    if isinstance(exc, StageError):
        return exc.reason, exc.hint
    if isinstance(exc, TandavaError):
        return str(exc), ""
    if isinstance(exc, ImportError):
        return f"the {name} writer is not available ({exc})", "reinstall Tandava"
    return f"the {name} writer failed unexpectedly ({type(exc).__name__}: {exc})", ""
