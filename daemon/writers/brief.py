"""What a remote prompt writer (Gemini, Ollama) is given and what it must give back.

How this works: the local analysis always runs first and cuts the song on
its beats. A remote writer gets a ``Brief`` (the analysis, that local plan,
the theme, the song file) and answers with ``PlanIdeas``: per segment a
visual and a motion prompt, optionally its own idea of where the segment
starts and ends. The answer is data from a model, so it is validated here and
never trusted: ``plan.fit_ideas`` (pure) clamps its times to the song, snaps
every boundary to the nearest beat of the local grid, and fills what is
missing from the theme, so the plan always covers the song on beats whatever
a model says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon.config import Settings
from daemon.errors import TransientError
from daemon.music.analysis import Analysis
from daemon.music.ideas import PlanIdeas, SegmentIdea
from daemon.music.plan import Segment

__all__ = ["Brief", "PlanIdeas", "RemoteWriter", "SegmentIdea", "WriterFailed", "brief_text", "writer_chain"]


class WriterFailed(TransientError):
    """A remote writer gave no usable plan (network, quota, invalid output after retries).

    The run falls back to the next writer in the chain and records why.
    """


@dataclass(frozen=True)
class Brief:
    """What a writer is told about one song."""

    analysis: Analysis
    segments: list[Segment]  # the local plan, cut on beats
    song: Path
    theme_name: str
    theme_description: str
    subjects: list[str]
    negative: str
    enhancements: list[str]
    seed: int


class RemoteWriter(Protocol):
    """Gemini or Ollama: proposes prompts (and maybe timings) for a brief."""

    name: str

    def propose(self, brief: Brief) -> PlanIdeas:
        """The model's ideas for the song; raises ``WriterFailed`` when it gives none usable."""
        ...

# About a number per 4 s of a 4-minute song: enough to see builds and drops.
_ENERGY_POINTS = 60


def brief_text(brief: Brief, *, audio_attached: bool = False) -> str:
    """The prompt for any writer: the analysis in brief, the theme, the local plan and the task.

    ``audio_attached`` adds a line telling the model to listen to the song it
    was sent; a writer that sends no audio leaves it out.
    """
    a = brief.analysis
    lines = ["SONG", f'"{brief.song.stem}", {_clock(a.duration)} ({a.duration:.2f} s), '
             f"{a.tempo:.1f} BPM, {a.beats_per_bar} beats per bar."]
    if len(a.beats) >= 2:
        gaps = sorted(b - c for b, c in zip(a.beats[1:], a.beats[:-1], strict=False))
        lines.append(f"Beat grid: {len(a.beats)} beats from {a.beats[0]:.2f} s to {a.beats[-1]:.2f} s, "
                     f"about one every {gaps[len(gaps) // 2]:.3f} s; {len(a.downbeats)} bars"
                     + (f", the first downbeat at {a.downbeats[0]:.2f} s." if a.downbeats else "."))
    if a.sections:
        lines.append("Sections (the same letter sounds alike; energy 0 quiet to 1 loud):")
        lines += [f"  S{i} {s.start:.2f}-{s.end:.2f} s, {_letter(s.label)}, energy {s.energy:.2f}"
                  for i, s in enumerate(a.sections)]
    lines.append(_energy_line(brief))
    lines += ["", f'THEME "{brief.theme_name}"']
    if brief.theme_description:
        lines.append(brief.theme_description.strip())
    if brief.subjects:
        lines.append("Subjects: " + "; ".join(brief.subjects))
    if brief.enhancements:
        lines.append("Style, in every picture: " + ", ".join(brief.enhancements))
    if brief.negative:
        lines.append("Never show: " + brief.negative)
    lines += ["", f"LOCAL PLAN ({len(brief.segments)} segments, cut on beats; each becomes one video clip)"]
    lines += [f"#{s.index} {s.start:.2f}-{s.end:.2f} s, section S{s.section}, {s.mood}, energy {s.energy:.2f}"
              for s in brief.segments]
    lines += ["", "TASK"]
    if audio_attached:
        lines.append("Listen to the attached song: its instruments, voice and changes matter more than the "
                     "numbers above.")
    lines += [
        f"Write one idea per local segment, in order, {len(brief.segments)} in all, each with the "
        "segment's index:",
        "- visual_prompt: one still picture for a text-to-image model: subject, setting, light, colour, "
        "composition, style; 20 to 60 words; no text or lettering. Keep to the theme's subjects and style "
        "and never show what it forbids. Sections with the same letter should look related.",
        "- motion_prompt: how that picture moves for an image-to-video model over the clip: camera move "
        "and subject motion, gentle when the energy is low, bold when it is high, in time with the beat.",
        "- mood: one or two words. theme: a short title (two to five words) for what the segment shows.",
        "- start and end: leave them out to keep the local cut. Give them, in seconds, only where the "
        "music clearly changes elsewhere; they are moved to the nearest beat.",
        "Answer with JSON only, matching the schema: {\"segments\": [...]}.",
    ]
    return "\n".join(lines)


def _energy_line(brief: Brief) -> str:
    a = brief.analysis
    if a.duration <= 0:
        return "Energy: unknown."
    step = max(1.0, a.duration / _ENERGY_POINTS)
    count = max(1, math.ceil(a.duration / step - 1e-9))
    values = [a.energy_between(i * step, min(a.duration, (i + 1) * step)) for i in range(count)]
    return f"Energy every {step:.1f} s (0..1): " + " ".join(f"{v:.2f}" for v in values)


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _letter(label: int) -> str:
    return chr(ord("A") + label) if 0 <= label < 26 else f"L{label}"


def writer_chain(settings: Settings) -> list[str]:
    """The writers tried in order: the configured one, the fallbacks, then ``theme`` (never past it)."""
    chain: list[str] = []
    for name in [settings.analysis.writer, *settings.analysis.fallback, "theme"]:
        if name not in chain:
            chain.append(name)
        if name == "theme":
            break
    return chain
