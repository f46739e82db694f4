"""The job record: one unit of backend work, as ``run.json`` keeps it under ``jobs``.

It lives with the run model (not with the backends) because the manifest, the
approval store and every stage read it; backends re-export it from
``daemon.backends.base`` beside the interfaces that take it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

JobKind = Literal["image", "clip"]
JobStatus = Literal["submitted", "done", "failed"]


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


def job_id(run_id: str, kind: JobKind, segment: int, index: int, seed: int) -> str:
    """Our own job id: unique per run, segment, index and seed (a new seed is a new job).

    ComfyUI caches identical prompts and writes no new file for them, so the
    id also becomes the unique output prefix there.
    """
    return f"{run_id}-{kind}-s{segment:03d}-i{index:02d}-{seed}"
