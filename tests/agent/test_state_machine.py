"""The hosting-application state machine of the agent, transition by transition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetlift_agent.state import (
    APPLYING,
    AgentState,
    Event,
    IllegalTransition,
    Pending,
    Phase,
    transition,
)

P, E = Phase, Event


def run(*events: Event, start: AgentState | None = None) -> AgentState:
    state = start or AgentState(P.READY)
    for event in events:
        state = transition(state, event)
    return state


def test_a_patch_from_offer_to_applied() -> None:
    state = run(E.PATCH_OFFERED)
    assert state == AgentState(P.INTRANSIT_PATCH, Pending.PATCH_PARTIAL)
    state = run(E.DOWNLOADED, start=state)
    assert state.phase is P.READY_WITHPATCH
    state = run(E.ANNOUNCE, E.CONFIRM_PATCH, start=state)
    assert state.phase is P.APPLYING_PATCH
    assert run(E.INTEGRITY_OK, start=state) == AgentState(P.READY, Pending.NONE)


def test_a_patch_that_fails_integrity_falls_back_to_the_base() -> None:
    state = run(E.PATCH_OFFERED, E.DOWNLOADED, E.ANNOUNCE, E.CONFIRM_PATCH, E.INTEGRITY_FAILED)
    assert state == AgentState(P.INTRANSIT_BASE, Pending.BASE_PARTIAL)
    state = run(E.DOWNLOADED, start=state)
    assert state.phase is P.READY_WITHBASE
    state = run(E.ANNOUNCE, E.CONFIRM_BASE, start=state)
    assert state.phase is P.APPLYING_BASE
    assert run(E.REBOOTED, start=state) == AgentState(P.READY, Pending.NONE)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ((), P.READY),
        ((E.PATCH_OFFERED,), P.INTRANSIT_PATCH),
        ((E.PATCH_OFFERED, E.DOWNLOADED), P.READY_WITHPATCH),
        ((E.BASE_OFFERED,), P.INTRANSIT_BASE),
        ((E.BASE_OFFERED, E.DOWNLOADED), P.READY_WITHBASE),
    ],
)
def test_busy_then_ready_resumes_where_the_download_got(events: tuple[Event, ...], expected: Phase) -> None:
    busy = run(E.BUSY, *events, start=AgentState(P.READY))
    assert busy.phase is P.BUSY  # downloads go on while busy, nothing is applied
    assert transition(busy, E.READY).phase is expected


@pytest.mark.parametrize("phase", sorted(set(Phase) - APPLYING - {P.BUSY}))
def test_any_waiting_state_becomes_busy(phase: Phase) -> None:
    assert transition(AgentState(phase), E.BUSY).phase is P.BUSY


@pytest.mark.parametrize("phase", sorted(APPLYING))
def test_an_update_being_applied_cannot_be_interrupted(phase: Phase) -> None:
    with pytest.raises(IllegalTransition, match="too late"):
        transition(AgentState(phase), E.BUSY)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (AgentState(P.READY), E.CONFIRM_PATCH),
        (AgentState(P.READY_WITHPATCH, Pending.PATCH_READY), E.CONFIRM_BASE),
        (AgentState(P.BUSY), E.ANNOUNCE),
        (AgentState(P.READY), E.DOWNLOADED),
        (AgentState(P.INTRANSIT_PATCH, Pending.PATCH_PARTIAL), E.PATCH_OFFERED),
        (AgentState(P.READY), E.INTEGRITY_OK),
        (AgentState(P.READY), E.REBOOTED),
        (AgentState(P.APPLYING_PATCH, Pending.PATCH_READY), E.READY),
    ],
)
def test_impossible_events_are_refused(state: AgentState, event: Event) -> None:
    with pytest.raises(IllegalTransition):
        transition(state, event)


def test_a_repeated_ready_changes_nothing() -> None:
    state = AgentState(P.READY_WITHPATCH, Pending.PATCH_READY)
    assert transition(state, E.READY) == state


@given(st.lists(st.sampled_from(list(Event)), max_size=40))
@settings(max_examples=500, derandomize=True)
def test_phase_and_download_always_agree(events: list[Event]) -> None:
    state = AgentState(P.READY)
    for event in events:
        try:
            state = transition(state, event)
        except IllegalTransition:
            continue
        waiting_on_download = {
            P.READY,
            P.INTRANSIT_PATCH,
            P.READY_WITHPATCH,
            P.INTRANSIT_BASE,
            P.READY_WITHBASE,
        }
        if state.phase in waiting_on_download:
            assert transition(AgentState(P.BUSY, state.pending), E.READY).phase is state.phase
        if state.phase in (P.WAIT_CONFIRM_PATCH, P.APPLYING_PATCH):
            assert state.pending is Pending.PATCH_READY
        if state.phase in (P.WAIT_CONFIRM_BASE, P.APPLYING_BASE):
            assert state.pending is Pending.BASE_READY
