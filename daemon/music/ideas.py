"""What a prompt writer may propose for a song: ideas per segment, before they are fitted.

These are the shapes of a model's answer (also the JSON schema sent to it as
structured output). They live here, below both the planner that fits them
(``plan.fit_ideas``) and the writers that ask for them (``daemon.writers``),
so neither imports the other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
