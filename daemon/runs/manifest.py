"""The run manifest (``run.json``): what a run is and how far each stage got.

The folder a run sits in says which state it is in; the manifest says
everything else: the song, its hash, the state history, per-stage progress
(which steps finished, how many attempts), errors, and where it failed. It
carries a schema version so a later Tandava can read or refuse an older one
explicitly.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from daemon.runs.job import Job
from daemon.runs.states import State

SCHEMA_VERSION = 1
MANIFEST = "run.json"
ERROR_FILE = "error.json"
_SLUG_MAX = 40


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)


class Song(BaseModel):
    """The audio file a person dropped, as it was when it arrived."""

    original_name: str
    file_name: str
    size: int
    sha256: str = ""  # empty when the file could not be read at intake
    dropped_from: str = ""


class StateChange(BaseModel):
    """One entry of a run's state history."""

    state: State
    at: datetime
    note: str = ""


class ErrorRecord(BaseModel):
    """A stage failure, in a person's words."""

    stage: str
    cause: str
    reason: str
    hint: str = ""
    at: datetime
    attempt: int = 0
    retryable: bool = False


# Detail keys that describe a stage while it is open (what it waits for, how
# often it stumbled); they are dropped when the stage ends, so nothing shows a
# finished or failed stage as still waiting.
OPEN_DETAIL_KEYS = ("waiting", "transient_failures")


class StageProgress(BaseModel):
    """How far a stage got: finished steps survive a crash and are never redone."""

    steps_done: list[str] = Field(default_factory=list)
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Set when the run failed in this stage; cleared when it is retried.
    failed_at: datetime | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        """Whether the stage has neither finished nor failed (it is working or waiting)."""
        return self.finished_at is None and self.failed_at is None

    @property
    def outcome(self) -> str:
        """``finished``, ``failed``, ``waiting`` or ``in progress``: what ``show`` prints."""
        if self.finished_at is not None:
            return "finished"
        if self.failed_at is not None:
            return "failed"
        return "waiting" if "waiting" in self.detail else "in progress"

    def end(self, at: datetime, *, failed: bool = False) -> None:
        """Close the stage, whichever way it ended: nothing it waited for is pending any more."""
        if failed:
            self.failed_at = at
        else:
            self.finished_at, self.failed_at = at, None
        for key in OPEN_DETAIL_KEYS:
            self.detail.pop(key, None)


class Manifest(BaseModel):
    """``run.json``."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    song: Song
    created_at: datetime
    updated_at: datetime
    state: State = State.INCOMING
    history: list[StateChange] = Field(default_factory=list)
    stages: dict[str, StageProgress] = Field(default_factory=dict)
    errors: list[ErrorRecord] = Field(default_factory=list)
    failed_from: State | None = None
    # Backend work by job id; a job is recorded here before it is submitted.
    jobs: dict[str, Job] = Field(default_factory=dict)
    # When retention removed the candidates and clips of this (rendered) run.
    intermediates_removed_at: datetime | None = None

    def progress(self, stage: str) -> StageProgress:
        """The progress record of ``stage``, created on first use."""
        return self.stages.setdefault(stage, StageProgress())

    def step_done(self, stage: str, step: str) -> bool:
        """Whether ``step`` of ``stage`` finished in an earlier attempt."""
        return step in self.progress(stage).steps_done

    @property
    def last_error(self) -> ErrorRecord | None:
        """The most recent failure, if any."""
        return self.errors[-1] if self.errors else None


def slugify(name: str) -> str:
    """A folder-safe slug of a song name that keeps non-Latin scripts readable.

    Letters, marks and digits of any script survive (a Hindi title stays Hindi:
    Devanagari vowel signs are marks), everything else becomes ``-``. Windows'
    reserved characters are never letters, so the result is safe there too.
    """
    normalized = unicodedata.normalize("NFC", name)
    kept = "".join(ch if unicodedata.category(ch)[0] in "LMN" else "-" for ch in normalized)
    slug = re.sub(r"-+", "-", kept).strip("-").lower()[:_SLUG_MAX].strip("-")
    return slug or "song"


def new_run_id(now: datetime, song_name: str, digest: str) -> str:
    """``<YYYYMMDD-HHMMSS>_<slug>_<hash8>``: sortable by arrival, readable, unique per song."""
    stem = song_name.rsplit(".", 1)[0] if "." in song_name else song_name
    return f"{now:%Y%m%d-%H%M%S}_{slugify(stem)}_{digest[:8]}"


def hash8_of(run_id: str) -> str:
    """The hash suffix of a run id (the cheap key for duplicate checks)."""
    return run_id.rsplit("_", 1)[-1]
