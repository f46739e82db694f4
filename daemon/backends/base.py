"""What makes candidates and clips: the backend interfaces and the job record.

How this works: every unit of backend work is a ``Job`` whose id is chosen by
us and written into the run's manifest *before* the backend hears of it. The
stage then calls ``submit`` and ``collect``. After a restart, a job recorded
as submitted is re-attached with ``collect`` when the backend says it can
(``can_resume``: a ComfyUI server still holding our prompt id) and submitted
again otherwise, so finished work is never redone and unfinished work is
redone at most once.

The local backends here (``storyboard``, ``folder``, ``kenburns``) do their
work inside ``collect`` and cannot resume; a GPU backend queues in
``submit`` and waits, with progress, in ``collect``. Both raise
``TransientError`` for what a retry may fix and ``PermanentError`` (naming the
file or setting) for what it cannot.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

JobKind = Literal["image", "clip"]
JobStatus = Literal["submitted", "done", "failed"]


class Progress(Protocol):
    """Told how far a job is (0..1) and, optionally, where it is ("queued on …")."""

    def __call__(self, fraction: float, where: str = "") -> None: ...



class Job(BaseModel):
    """One unit of backend work, as recorded in ``run.json`` under ``jobs``."""

    id: str
    kind: JobKind
    backend: str
    segment: int
    seed: int
    # image: candidate number within the segment; clip: part number in a chain.
    index: int = 0
    prompt: str = ""
    negative_prompt: str = ""
    width: int
    height: int
    # clip only: frames to make, at fps, from the image at ``source``.
    frames: int = 0
    fps: int = 0
    source: str = ""
    # Where the backend writes its result (a path inside the run folder).
    output: str
    status: JobStatus = "submitted"
    attempts: int = 0
    detail: dict[str, str | int | float] = Field(default_factory=dict)


def noop_progress(fraction: float, where: str = "") -> None:
    """A progress callback that ignores progress."""


@runtime_checkable
class ImageBackend(Protocol):
    """Makes one candidate image for a segment from its prompt."""

    name: str
    # The engine resource this backend's jobs queue on ("cpu", "gpu:127.0.0.1:8188").
    resource: str

    def submit(self, job: Job) -> None:
        """Start the job (queue it on a server); local backends may do nothing here."""

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        """Block until the job's image exists at ``job.output``; return that path."""
        ...

    def can_resume(self, job: Job) -> bool:
        """Whether a job submitted before a restart can still be collected."""
        ...


@runtime_checkable
class VideoBackend(Protocol):
    """Makes a clip of ``job.frames`` frames at ``job.fps`` from the image at ``job.source``."""

    name: str
    resource: str
    # Frames one job can make at most (Wan 2.1: 81); None means any length.
    max_frames: int | None

    def submit(self, job: Job) -> None:
        """Start the job; local backends may do nothing here."""

    def collect(self, job: Job, *, progress: Progress, stop: threading.Event) -> Path:
        """Block until the clip exists at ``job.output``; return that path."""
        ...

    def can_resume(self, job: Job) -> bool:
        """Whether a job submitted before a restart can still be collected."""
        ...


def job_id(run_id: str, kind: JobKind, segment: int, index: int, seed: int) -> str:
    """Our own job id: unique per run, segment, index and seed (a new seed is a new job).

    ComfyUI caches identical prompts and writes no new file for them, so the
    id also becomes the unique output prefix there.
    """
    return f"{run_id}-{kind}-s{segment:03d}-i{index:02d}-{seed}"
