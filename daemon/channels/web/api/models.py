"""The HTTP API's shapes: what each call takes and answers, as pydantic models.

How this works: handlers build their answers from these models and validate
what they take with them; ``openapi.py`` writes the spec from the same
models, so the spec cannot drift from what the handlers do. ``ApiError`` is
the one error every call answers with (``{"error": {"code", "message",
"hint"}}``); ``Problem`` is the exception a handler raises to send it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from daemon.runs.states import State


class Problem(Exception):
    """An error answer: HTTP ``status``, a stable ``code``, and a message and hint for a person."""

    def __init__(self, status: int, code: str, message: str, hint: str = "") -> None:
        self.status, self.code, self.message, self.hint = status, code, message, hint
        super().__init__(message)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, for programs: not_found, not_waiting, invalid_options…")
    message: str = Field(description="what went wrong, for a person")
    hint: str = Field("", description="how to fix it")


class ApiError(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class Links(BaseModel):
    self_: str = Field(alias="self")
    events: str
    files: dict[str, str] = Field(default_factory=dict)

    model_config = ConfigDict(populate_by_name=True)


class RunSummary(BaseModel):
    """A run in a list."""

    id: str
    state: State
    song: str
    created_at: datetime
    updated_at: datetime
    links: Links


class RunList(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class Created(BaseModel):
    """The answer to an upload: the run (new: 201; the same song already known: 200, duplicate)."""

    id: str
    state: State
    duplicate: bool
    song: str
    photos: int = 0
    links: Links


class StateChangeOut(BaseModel):
    state: State
    at: datetime
    note: str = ""


class StageOut(BaseModel):
    steps_done: list[str]
    attempts: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    jobs_done: int = 0
    jobs_total: int = 0


class CandidateOut(BaseModel):
    segment: int
    candidate: int
    seed: int
    status: Literal["approved", "rejected", "open"]
    url: str


class SegmentOut(BaseModel):
    index: int
    start: float
    end: float
    mood: str
    prompt: str
    motion: str


class DecisionOut(BaseModel):
    segment: int
    candidate: int | None = None
    action: Literal["approve", "reject", "regenerate", "undo"]
    by: str
    channel: str
    at: datetime


class RunError(BaseModel):
    stage: str
    reason: str
    hint: str


class RunDetail(BaseModel):
    """Everything about one run."""

    id: str
    state: State
    song: str
    created_at: datetime
    updated_at: datetime
    history: list[StateChangeOut]
    stages: dict[str, StageOut]
    segments: list[SegmentOut]
    candidates: list[CandidateOut]
    decisions: list[DecisionOut]
    error: RunError | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict, description="file name → URL")
    links: Links


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segment: int = Field(ge=0, le=100_000)
    candidate: int | None = Field(None, ge=0, le=100_000, description="not needed for regenerate")
    # undo: takes back this candidate's latest approve or reject, within 15 s.
    action: Literal["approve", "reject", "regenerate", "undo"]


class DecisionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[DecisionIn] = Field(min_length=1, max_length=1000)


class DecisionsOut(BaseModel):
    applied: list[DecisionOut]
    state: State


class RetryOut(BaseModel):
    id: str
    state: State


class Event(BaseModel):
    """One thing that happened, as SSE ``data`` and as a webhook body."""

    id: int = Field(description="increases by one per event, across restarts")
    type: Literal["run.created", "run.state", "run.progress", "segment.offered", "run.decision"]
    run_id: str
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


def error_body(code: str, message: str, hint: str = "") -> dict[str, Any]:
    """The JSON of an error answer."""
    return ApiError(error=ErrorDetail(code=code, message=message, hint=hint)).model_dump()
