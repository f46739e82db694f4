"""The run state model: states, events and the one table of allowed moves.

How this works: a run is always in exactly one ``State``, and the state's value
is the name of the directory under the state root that holds the run's folder.
A stage finishing, a person approving, a failure or a retry is an ``Event``.
``next_state`` looks the pair up in ``TRANSITIONS``; a pair that is not in the
table is an ``IllegalTransition``. Nothing here touches the disk, a clock or a
network, so the whole model is tested exhaustively in milliseconds and the run
store simply renames folders to whatever this module answers.

``FAILED`` is reachable from every working state. Retrying goes back to the
state the run failed in, which only the run's manifest knows, so ``RETRY`` takes
it as an argument instead of being a fixed edge.
"""

from __future__ import annotations

from enum import StrEnum

from daemon.errors import IllegalTransition


class State(StrEnum):
    """Where a run is. Each value is also its directory name under the state root."""

    INCOMING = "incoming"
    ANALYZED = "analyzed"
    IMAGED = "imaged"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    RENDERED = "rendered"
    FAILED = "failed"


class Event(StrEnum):
    """Something that happened to a run."""

    ANALYSIS_DONE = "analysis_done"
    IMAGES_DONE = "images_done"
    OFFERED = "offered"
    ALL_APPROVED = "all_approved"
    RENDER_DONE = "render_done"
    FAIL = "fail"
    RETRY = "retry"


# States a run works its way through, in pipeline order. RENDERED and FAILED
# are where runs rest.
PIPELINE: tuple[State, ...] = (
    State.INCOMING,
    State.ANALYZED,
    State.IMAGED,
    State.PENDING_APPROVAL,
    State.APPROVED,
    State.RENDERED,
)

WORKING: frozenset[State] = frozenset(PIPELINE[:-1])

TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.INCOMING, Event.ANALYSIS_DONE): State.ANALYZED,
    (State.ANALYZED, Event.IMAGES_DONE): State.IMAGED,
    (State.IMAGED, Event.OFFERED): State.PENDING_APPROVAL,
    (State.PENDING_APPROVAL, Event.ALL_APPROVED): State.APPROVED,
    (State.APPROVED, Event.RENDER_DONE): State.RENDERED,
    **{(state, Event.FAIL): State.FAILED for state in WORKING},
}


def next_state(state: State, event: Event, *, failed_from: State | None = None) -> State:
    """Return the state a run in ``state`` moves to on ``event``.

    ``failed_from`` is required for ``RETRY`` and must be a working state: a run
    goes back to where it failed, never straight to ``RENDERED``.
    """
    if event is Event.RETRY:
        if state is not State.FAILED or failed_from not in WORKING:
            raise IllegalTransition(state.value, event.value)
        return failed_from
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state.value, event.value) from None


def can_move(state: State, event: Event, *, failed_from: State | None = None) -> bool:
    """Whether ``event`` is allowed for a run in ``state`` (no exception)."""
    try:
        next_state(state, event, failed_from=failed_from)
    except IllegalTransition:
        return False
    return True
