"""Tandava's one exception tree.

Adapters translate foreign exceptions (OSError from a share, soundfile's
LibsndfileError, pydantic's ValidationError, later requests/websocket/telegram
errors) into these at the edge, so the engine only ever decides on two things:
is it worth retrying, and what does a person need to read.

    TandavaError
    ├── ConfigError            configuration is invalid; raised at start-up
    ├── StoreError             the state root itself is unusable
    │   ├── RunNotFound        no run matches the id a person typed
    │   └── StoreLocked        another daemon owns this state root
    ├── IllegalTransition      a state move the run state model forbids
    └── StageError             a stage could not finish a run
        ├── TransientError     retry with backoff (share gone, server busy)
        │   ├── Unavailable    a GPU server is down or full: the run waits, no attempt is used
        │   └── QCFailed       a backend's output failed quality checks; made again with a new seed
        └── PermanentError     retrying cannot help; the run goes to failed/
            ├── BadInput       the song itself cannot be used
            ├── WorkflowError  a ComfyUI workflow does not fit its mapping or the live server
            └── QCGaveUp       every new seed allowed for an output failed QC

Every StageError carries ``reason`` (what went wrong and why, in words a
person understands) and ``hint`` (how to fix it and retry). Those two end up
in a failed run's ``error.json`` and in the log; nothing else in the package
composes user-facing sentences.
"""

from __future__ import annotations


class TandavaError(Exception):
    """Base of every error Tandava raises on purpose."""

    retryable: bool = False


class ConfigError(TandavaError):
    """Configuration that cannot be used: names the key, the value and what was expected."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"{key} = {value!r} is not valid: {expected}")


class StoreError(TandavaError):
    """The state root cannot be used (missing, not writable, inconsistent)."""


class RunNotFound(StoreError):
    """No run matches the given id or prefix."""


class StoreLocked(StoreError):
    """Another live daemon process holds the state root's lock."""


class IllegalTransition(TandavaError):
    """A run was asked to move along an edge the state model does not have."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"cannot apply {event!r} to a run in state {state!r}")


# Adapters that cannot know which run they work for write this in a hint; the
# engine replaces it with the run id before the hint reaches error.json.
RUN_PLACEHOLDER = "<run>"


class StageError(TandavaError):
    """A stage failed for a run; ``reason`` and ``hint`` are for a person."""

    def __init__(self, reason: str, hint: str = "", *, cause: str = "") -> None:
        self.reason = reason
        self.hint = hint
        self.cause = cause or type(self).__name__
        super().__init__(reason)


class TransientError(StageError):
    """Worth retrying after a pause: the condition is expected to clear by itself."""

    retryable = True


class PermanentError(StageError):
    """Retrying the same input cannot succeed; the run goes to failed/."""


class BadInput(PermanentError):
    """The song file itself is unusable (empty, corrupt, too short, too long, unreadable)."""


class Unavailable(TransientError):
    """A backend cannot take work now (down, restarting, hung, short of VRAM).

    The engine parks the run and looks again after ``recheck_seconds``
    without using one of its attempts: an outage of an hour must not fail
    every run that was waiting for the GPU.
    """

    def __init__(self, reason: str, hint: str = "", *, cause: str = "", recheck_seconds: float = 15.0) -> None:
        super().__init__(reason, hint, cause=cause)
        self.recheck_seconds = recheck_seconds


class QCFailed(TransientError):
    """An image or clip came back broken (black, flat, frozen, flashing); ``figures`` say by how much."""

    def __init__(self, reason: str, hint: str = "", *, cause: str = "", figures: dict[str, float] | None = None) -> None:
        super().__init__(reason, hint, cause=cause or "QCFailed")
        self.figures = dict(figures or {})


class WorkflowError(PermanentError):
    """A workflow that cannot run: names the workflow, node, input, value and model folder."""


class QCGaveUp(PermanentError):
    """Every new seed allowed for an image or clip failed QC; ``figures`` are the last output's."""

    def __init__(self, reason: str, hint: str = "", *, cause: str = "", figures: dict[str, float] | None = None) -> None:
        super().__init__(reason, hint, cause=cause or "QCFailed")
        self.figures = dict(figures or {})
