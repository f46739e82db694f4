"""Veo's long-running operations: when to poll, how many at once, what a finished one holds.

How this works: nothing is ready before ``poll_first_seconds`` after the
submit, then one ``operations.get`` every ``poll_every_seconds``, counted from
when the operation was submitted (a re-attached one polls at once). Waits are
on the stop event, so a stop request ends a wait at once; the operation keeps
running at Google and is re-attached by name on the next start.

``Slots`` keeps at most ``max_concurrent_operations`` of our operations open
per daemon (Google allows about 10 per project); a job that finds none free
is submitted later, from ``collect``, when one is given back.

``outcome`` reads a finished operation: video bytes (Vertex answers inline
when no bucket is named), a file URI (the Gemini API), the RAI filter's
reasons (no video, not charged), or an error (a google.rpc.Status).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from google.genai import types

# Veo typically takes about a minute; progress is shown against this.
TYPICAL_SECONDS = 60.0
_SLOT_WAIT_SECONDS = 0.5


def poll_times(first: float, every: float) -> Iterator[float]:
    """Seconds after the submit at which the operation is asked about: first, first+every, …"""
    at = first
    while True:
        yield at
        at += every


def polls_for(seconds: float, first: float, every: float) -> int:
    """How many polls see an operation that takes ``seconds`` through (for the bench)."""
    for count, at in enumerate(poll_times(first, every), start=1):
        if at >= seconds:
            return count
    raise AssertionError("unreachable")


def wait_until_done(get: Callable[[], types.GenerateVideosOperation], *, submitted_at: float,
                    first: float, every: float, stop: threading.Event,
                    progress: Callable[[float, str], None], clock: Callable[[], float] = time.time,
                    ) -> types.GenerateVideosOperation | None:
    """Poll on the schedule until the operation is done; None when ``stop`` was set first."""
    for at in poll_times(first, every):
        now = clock()
        if submitted_at + at > now and stop.wait(submitted_at + at - now):
            return None
        if stop.is_set():
            return None
        operation = get()
        if operation.done:
            return operation
        elapsed = clock() - submitted_at
        progress(min(0.95, elapsed / (elapsed + TYPICAL_SECONDS)), f"rendering at Google, {elapsed:.0f} s")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Outcome:
    """What a finished operation holds."""

    kind: Literal["video", "filtered", "error"]
    video: types.Video | None = None
    reasons: tuple[str, ...] = ()
    error: dict[str, object] = field(default_factory=dict)


def outcome(operation: types.GenerateVideosOperation) -> Outcome:
    """Read a done operation (see the module docstring)."""
    if operation.error:
        return Outcome("error", error=dict(operation.error))
    response = operation.response or operation.result
    videos = (response.generated_videos or []) if response is not None else []
    for generated in videos:
        if generated.video is not None and (generated.video.video_bytes or generated.video.uri):
            return Outcome("video", video=generated.video)
    reasons = tuple(response.rai_media_filtered_reasons or []) if response is not None else ()
    if reasons or (response is not None and response.rai_media_filtered_count):
        return Outcome("filtered", reasons=reasons or ("filtered by Google's safety rules",))
    return Outcome("error", error={"code": 0, "message": "the operation finished without a video"})


class Slots:
    """At most ``limit`` operations open at once, each held by a job id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: set[str] = set()
        self._cond = threading.Condition()

    def try_take(self, job_id: str) -> bool:
        with self._cond:
            if job_id in self._held:
                return True
            if len(self._held) >= self.limit:
                return False
            self._held.add(job_id)
            return True

    def take(self, job_id: str, stop: threading.Event) -> bool:
        """Wait for a slot; False when ``stop`` was set first."""
        with self._cond:
            while not self.try_take(job_id):
                if stop.is_set():
                    return False
                self._cond.wait(_SLOT_WAIT_SECONDS)
            return True

    def give(self, job_id: str) -> None:
        with self._cond:
            self._held.discard(job_id)
            self._cond.notify_all()

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._held)
