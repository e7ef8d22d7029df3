"""The hosting-application state machine (pure): the application on the device decides when an
update may be applied; the agent downloads in the background and asks before it changes anything.

    BUSY ──ready──▶ READY | READY_WITHPATCH | INTRANSIT_PATCH | READY_WITHBASE | INTRANSIT_BASE
                     (whichever the download in the background has reached)
    READY ──update offered──▶ INTRANSIT_PATCH (or INTRANSIT_BASE for a base)
    INTRANSIT_PATCH ──downloaded──▶ READY_WITHPATCH ──announce──▶ WAIT_CONFIRM_PATCH
    WAIT_CONFIRM_PATCH ──confirm-patch──▶ APPLYING_PATCH
    APPLYING_PATCH ──integrity holds──▶ READY
    APPLYING_PATCH ──integrity fails──▶ INTRANSIT_BASE (the base is the fallback)
    INTRANSIT_BASE ──downloaded──▶ READY_WITHBASE ──announce──▶ WAIT_CONFIRM_BASE
    WAIT_CONFIRM_BASE ──confirm-base──▶ APPLYING_BASE ──rebooted──▶ READY
    any waiting state ──busy──▶ BUSY (downloads go on; nothing is applied)
    BUSY or any waiting state, the download complete ──forced──▶ APPLYING_PATCH | APPLYING_BASE
                     (a forced deployment: applied without the application's confirmation)

A patch is a partial update (binaries, configuration, container images, scripts, connection
settings); a base is the full baseline image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Phase(StrEnum):
    BUSY = "BUSY"
    READY = "READY"
    INTRANSIT_PATCH = "INTRANSIT_PATCH"
    READY_WITHPATCH = "READY_WITHPATCH"
    WAIT_CONFIRM_PATCH = "WAIT_CONFIRM_PATCH"
    APPLYING_PATCH = "APPLYING_PATCH"
    INTRANSIT_BASE = "INTRANSIT_BASE"
    READY_WITHBASE = "READY_WITHBASE"
    WAIT_CONFIRM_BASE = "WAIT_CONFIRM_BASE"
    APPLYING_BASE = "APPLYING_BASE"


class Pending(StrEnum):
    """What the background download has reached, whatever the application allows."""

    NONE = "none"
    PATCH_PARTIAL = "patch_partial"
    PATCH_READY = "patch_ready"
    BASE_PARTIAL = "base_partial"
    BASE_READY = "base_ready"


class Event(StrEnum):
    # from the hosting application
    READY = "ready"
    BUSY = "busy"
    CONFIRM_PATCH = "confirm-patch"
    CONFIRM_BASE = "confirm-base"
    # from the agent itself
    PATCH_OFFERED = "patch-offered"
    BASE_OFFERED = "base-offered"
    DOWNLOADED = "downloaded"
    ANNOUNCE = "announce"
    INTEGRITY_OK = "integrity-ok"
    INTEGRITY_FAILED = "integrity-failed"
    REBOOTED = "rebooted"
    FORCED = "forced"  # the deployment is forced: apply the downloaded update without confirmation


class IllegalTransition(Exception):
    """An event that cannot happen in the current state."""


@dataclass(frozen=True)
class AgentState:
    phase: Phase = Phase.BUSY
    pending: Pending = Pending.NONE


APPLYING = frozenset({Phase.APPLYING_PATCH, Phase.APPLYING_BASE})
WAITING = frozenset(Phase) - APPLYING - {Phase.BUSY}

# Where `ready` leads from BUSY, by how far the background download got.
_READY_BY_PENDING = {
    Pending.NONE: Phase.READY,
    Pending.PATCH_PARTIAL: Phase.INTRANSIT_PATCH,
    Pending.PATCH_READY: Phase.READY_WITHPATCH,
    Pending.BASE_PARTIAL: Phase.INTRANSIT_BASE,
    Pending.BASE_READY: Phase.READY_WITHBASE,
}


def _phase_of(pending: Pending) -> Phase:
    return _READY_BY_PENDING[pending]


def transition(state: AgentState, event: Event) -> AgentState:
    """The state after ``event``; an event that cannot happen now raises ``IllegalTransition``."""
    phase, pending = state.phase, state.pending

    if event is Event.BUSY:
        if phase in APPLYING:
            raise IllegalTransition(f"the device is {phase.value}: too late to be busy")
        return replace(state, phase=Phase.BUSY)
    if event is Event.READY:
        if phase is Phase.BUSY:
            return AgentState(_phase_of(pending), pending)
        if phase in WAITING:
            return state  # already ready: a repeated command changes nothing
        raise IllegalTransition(f"the device is {phase.value}")

    # Downloads go on in the background, busy or not.
    if event in (Event.PATCH_OFFERED, Event.BASE_OFFERED):
        if pending not in (Pending.NONE,) or phase not in (Phase.READY, Phase.BUSY):
            raise IllegalTransition(f"an update is already under way ({phase.value}, {pending.value})")
        new_pending = Pending.PATCH_PARTIAL if event is Event.PATCH_OFFERED else Pending.BASE_PARTIAL
        return AgentState(phase if phase is Phase.BUSY else _phase_of(new_pending), new_pending)
    if event is Event.DOWNLOADED:
        done = {Pending.PATCH_PARTIAL: Pending.PATCH_READY, Pending.BASE_PARTIAL: Pending.BASE_READY}
        if pending not in done:
            raise IllegalTransition(f"nothing is downloading ({pending.value})")
        new_pending = done[pending]
        return AgentState(phase if phase is Phase.BUSY else _phase_of(new_pending), new_pending)

    if event is Event.ANNOUNCE:
        moves = {
            Phase.READY_WITHPATCH: Phase.WAIT_CONFIRM_PATCH,
            Phase.READY_WITHBASE: Phase.WAIT_CONFIRM_BASE,
        }
        if phase not in moves:
            raise IllegalTransition(f"nothing to announce in {phase.value}")
        return replace(state, phase=moves[phase])
    if event is Event.CONFIRM_PATCH:
        if phase is not Phase.WAIT_CONFIRM_PATCH:
            raise IllegalTransition(f"no patch is waiting for confirmation ({phase.value})")
        return replace(state, phase=Phase.APPLYING_PATCH)
    if event is Event.CONFIRM_BASE:
        if phase is not Phase.WAIT_CONFIRM_BASE:
            raise IllegalTransition(f"no base is waiting for confirmation ({phase.value})")
        return replace(state, phase=Phase.APPLYING_BASE)
    if event is Event.FORCED:
        applying = {Pending.PATCH_READY: Phase.APPLYING_PATCH, Pending.BASE_READY: Phase.APPLYING_BASE}
        if pending not in applying:
            raise IllegalTransition(f"nothing downloaded to apply ({pending.value})")
        if phase in APPLYING:
            raise IllegalTransition(f"the device is {phase.value} already")
        return replace(state, phase=applying[pending])
    if event is Event.INTEGRITY_OK:
        if phase is not Phase.APPLYING_PATCH:
            raise IllegalTransition(f"no patch is being applied ({phase.value})")
        return AgentState(Phase.READY, Pending.NONE)
    if event is Event.INTEGRITY_FAILED:
        if phase is not Phase.APPLYING_PATCH:
            raise IllegalTransition(f"no patch is being applied ({phase.value})")
        return AgentState(Phase.INTRANSIT_BASE, Pending.BASE_PARTIAL)  # fall back to the base
    if event is Event.REBOOTED:
        if phase is not Phase.APPLYING_BASE:
            raise IllegalTransition(f"no base is being applied ({phase.value})")
        return AgentState(Phase.READY, Pending.NONE)
    raise IllegalTransition(f"unknown event {event!r}")
