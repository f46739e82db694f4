"""The pure run state model, exhaustively."""

from __future__ import annotations

import itertools

import pytest

from daemon.errors import IllegalTransition
from daemon.runs.states import PIPELINE, TRANSITIONS, WORKING, Event, State, can_move, next_state

ALLOWED = {
    (State.INCOMING, Event.ANALYSIS_DONE): State.ANALYZED,
    (State.ANALYZED, Event.IMAGES_DONE): State.IMAGED,
    (State.IMAGED, Event.OFFERED): State.PENDING_APPROVAL,
    (State.PENDING_APPROVAL, Event.ALL_APPROVED): State.APPROVED,
    (State.APPROVED, Event.RENDER_DONE): State.RENDERED,
    (State.INCOMING, Event.FAIL): State.FAILED,
    (State.ANALYZED, Event.FAIL): State.FAILED,
    (State.IMAGED, Event.FAIL): State.FAILED,
    (State.PENDING_APPROVAL, Event.FAIL): State.FAILED,
    (State.APPROVED, Event.FAIL): State.FAILED,
}


def test_state_values_are_directory_names() -> None:
    """Each state's value is the folder name a person sees in a file browser."""
    assert [s.value for s in State] == [
        "incoming",
        "analyzed",
        "imaged",
        "pending_approval",
        "approved",
        "rendered",
        "failed",
    ]


def test_table_is_exactly_the_documented_edges() -> None:
    """The transition table holds the documented edges and nothing else."""
    assert TRANSITIONS == ALLOWED


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair_is_allowed_or_raises(state: State, event: Event) -> None:
    """Every (state, event) pair either follows the table or raises IllegalTransition."""
    if event is Event.RETRY:
        return  # covered below: retry needs the state the run failed in
    if (state, event) in ALLOWED:
        assert next_state(state, event) is ALLOWED[(state, event)]
        assert can_move(state, event)
    else:
        with pytest.raises(IllegalTransition):
            next_state(state, event)
        assert not can_move(state, event)


@pytest.mark.parametrize("failed_from", list(State))
def test_retry_returns_to_the_working_state_it_failed_in(failed_from: State) -> None:
    """Retry from failed goes back to a working state, never to rendered or failed."""
    if failed_from in WORKING:
        assert next_state(State.FAILED, Event.RETRY, failed_from=failed_from) is failed_from
    else:
        with pytest.raises(IllegalTransition):
            next_state(State.FAILED, Event.RETRY, failed_from=failed_from)


@pytest.mark.parametrize("state", [s for s in State if s is not State.FAILED])
def test_retry_only_from_failed(state: State) -> None:
    """A run that has not failed cannot be retried."""
    with pytest.raises(IllegalTransition):
        next_state(state, Event.RETRY, failed_from=State.INCOMING)


def test_retry_without_origin_is_illegal() -> None:
    """Retry needs to know where the run failed."""
    with pytest.raises(IllegalTransition):
        next_state(State.FAILED, Event.RETRY)


def test_pipeline_walks_to_rendered() -> None:
    """Following the happy path from incoming visits every pipeline state in order."""
    events = [Event.ANALYSIS_DONE, Event.IMAGES_DONE, Event.OFFERED, Event.ALL_APPROVED, Event.RENDER_DONE]
    state = State.INCOMING
    seen = [state]
    for event in events:
        state = next_state(state, event)
        seen.append(state)
    assert tuple(seen) == PIPELINE


def test_rendered_and_failed_are_terminal_for_progress() -> None:
    """Nothing moves a rendered run, and a failed run moves only by retry."""
    for event in Event:
        if event is Event.RETRY:
            continue
        assert not can_move(State.RENDERED, event)
        assert not can_move(State.FAILED, event)
