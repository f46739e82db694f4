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

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from daemon.analysis import Analysis
from daemon.errors import TransientError
from daemon.plan import Segment


class WriterFailed(TransientError):
    """A remote writer gave no usable plan (network, quota, invalid output after retries).

    The run falls back to the next writer in the chain and records why.
    """


class SegmentIdea(BaseModel):
    """One segment as a model proposes it; times are approximate and get snapped."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0, description="the local segment this describes, 0-based")
    start: float | None = Field(None, description="seconds; optional, snapped to a beat")
    end: float | None = Field(None, description="seconds; optional, snapped to a beat")
    visual_prompt: str = Field(min_length=1, max_length=2000)
    motion_prompt: str = Field(min_length=1, max_length=1000)
    mood: str | None = None
    theme: str | None = Field(None, description="a short title for what the segment shows")


class PlanIdeas(BaseModel):
    """A remote writer's whole answer (this is the JSON schema sent as structured output)."""

    model_config = ConfigDict(extra="ignore")

    segments: list[SegmentIdea] = Field(min_length=1)


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
