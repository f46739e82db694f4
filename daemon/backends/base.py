"""What makes candidates and clips: the backend interfaces (the job record is ``runs.job``).

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
from typing import Protocol, runtime_checkable

from daemon.runs.job import Job, JobKind, JobStatus, job_id

__all__ = ["SAFETY_FILTERED", "ImageBackend", "Job", "JobKind", "JobStatus", "Progress", "VideoBackend",
           "job_id", "job_detail", "job_number", "noop_progress"]

# The ``cause`` of a PermanentError for an output a backend's safety filter refused (Veo's RAI
# filter): the render stage rewrites the prompt once, then falls back to a Ken Burns clip.
SAFETY_FILTERED = "SafetyFiltered"


class Progress(Protocol):
    """Told how far a job is (0..1) and, optionally, where it is ("queued on …")."""

    def __call__(self, fraction: float, where: str = "") -> None: ...


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


def job_detail(job: Job, key: str) -> str | int | float:
    """A value the stage put in ``job.detail`` for the backend (a miss is a bug, named as such)."""
    try:
        return job.detail[key]
    except KeyError:
        # The stage that creates jobs always fills these; a miss is our bug.
        raise ValueError(f"job {job.id} lacks detail {key!r} (has {sorted(job.detail)})") from None


def job_number(job: Job, key: str) -> float:
    """``job_detail`` as a number."""
    value = job_detail(job, key)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"job {job.id} detail {key!r} is not a number: {value!r}") from None
