"""The per-device update state machine, the derived deployment status, overlap and edit rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetlift.auth import Permission
from fleetlift.deployments.rules import (
    FAILURES,
    PROGRESS,
    TERMINAL,
    Candidate,
    DeploymentContent,
    DeploymentFields,
    DeploymentStatus,
    DeviceFacts,
    Phase,
    ReleaseFacts,
    Transition,
    UpdateRefusal,
    check_content_change,
    check_phase_change,
    check_target,
    deployment_status,
    effective_deployment,
    is_active,
    missing_permission,
    permission_for_new,
    permissions_for_change,
    server_transition,
    transition,
    update_refusal,
)
from fleetlift.deployments.rules import DeviceUpdateState as S
from fleetlift.errors import IllegalTransition, InvalidInput

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

FORWARD = [
    (S.PENDING, S.NOTIFIED),
    (S.PENDING, S.DOWNLOADING),  # a device that polls before it is notified
    (S.NOTIFIED, S.DOWNLOADING),
    (S.DOWNLOADING, S.DOWNLOADED),
    (S.DOWNLOADING, S.INSTALLING),
    (S.DOWNLOADED, S.INSTALLING),
    (S.INSTALLING, S.REBOOTING),
    (S.INSTALLING, S.VERIFYING),  # not every update reboots
    (S.REBOOTING, S.VERIFYING),
]


@pytest.mark.parametrize(("current", "reported"), FORWARD)
def test_forward_progress_is_applied(current: S, reported: S) -> None:
    outcome = transition(current, reported)
    assert outcome.state is reported
    assert outcome.changed


@pytest.mark.parametrize(
    ("current", "reported"),
    [
        (S.NOTIFIED, S.PENDING),
        (S.DOWNLOADED, S.DOWNLOADING),
        (S.VERIFYING, S.INSTALLING),
        (S.REBOOTING, S.NOTIFIED),
        (S.DOWNLOADING, S.WAITING),
    ],
)
def test_late_reports_change_nothing(current: S, reported: S) -> None:
    outcome = transition(current, reported)
    assert outcome.state is current
    assert not outcome.changed


@pytest.mark.parametrize("state", list(S))
def test_duplicate_reports_change_nothing(state: S) -> None:
    assert transition(state, state).changed is False


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("reported", list(S))
def test_nothing_moves_a_device_out_of_an_outcome(terminal: S, reported: S) -> None:
    outcome = transition(terminal, reported)
    assert outcome.state is terminal
    assert not outcome.changed


LEGAL_OUTCOMES = {
    S.SUCCEEDED: {S.DOWNLOADED, S.INSTALLING, S.REBOOTING, S.VERIFYING},
    S.FAILED: set(PROGRESS),
    S.ROLLED_BACK: {S.INSTALLING, S.REBOOTING, S.VERIFYING},
    S.ALREADY_INSTALLED: {S.PENDING, S.NOTIFIED, S.DOWNLOADING, S.DOWNLOADED},
    S.CANCELLED: {S.PENDING, S.NOTIFIED, S.DOWNLOADING, S.DOWNLOADED},
    S.TIMED_OUT: set(PROGRESS),
}


@pytest.mark.parametrize("outcome", sorted(LEGAL_OUTCOMES))
@pytest.mark.parametrize("current", PROGRESS)
def test_outcomes_only_from_states_that_allow_them(outcome: S, current: S) -> None:
    if current in LEGAL_OUTCOMES[outcome]:
        assert transition(current, outcome).state is outcome
    else:
        with pytest.raises(IllegalTransition, match=f"from {current.value} to {outcome.value}"):
            transition(current, outcome)


def test_every_state_is_waiting_progress_or_outcome() -> None:
    assert set(PROGRESS) | TERMINAL | {S.WAITING} == set(S)
    assert not set(PROGRESS) & TERMINAL
    assert S.WAITING not in TERMINAL and S.WAITING not in PROGRESS


@pytest.mark.parametrize("reported", [s for s in S if s not in {S.WAITING, S.CANCELLED}])
def test_a_waiting_device_cannot_report(reported: S) -> None:
    with pytest.raises(IllegalTransition, match="not been released to this device yet"):
        transition(S.WAITING, reported)


def test_a_waiting_device_can_be_cancelled() -> None:
    assert transition(S.WAITING, S.CANCELLED) == Transition(S.CANCELLED, changed=True)


@pytest.mark.parametrize("reported", list(S))
def test_reports_after_a_timeout_are_late(reported: S) -> None:
    assert transition(S.TIMED_OUT, reported) == Transition(S.TIMED_OUT, changed=False)


def test_timed_out_is_a_failure() -> None:
    assert S.TIMED_OUT in FAILURES and S.TIMED_OUT in TERMINAL


@pytest.mark.parametrize(
    ("current", "wanted", "allowed"),
    [
        (S.WAITING, S.PENDING, True),  # release
        (S.FAILED, S.PENDING, True),  # retry
        (S.ROLLED_BACK, S.PENDING, True),
        (S.TIMED_OUT, S.PENDING, True),
        (S.FAILED, S.WAITING, True),  # retry under a concurrency limit: queued for a slot
        (S.TIMED_OUT, S.WAITING, True),
        (S.SUCCEEDED, S.WAITING, False),
        (S.PENDING, S.WAITING, False),  # released devices are never put back
        (S.SUCCEEDED, S.PENDING, False),
        (S.CANCELLED, S.PENDING, False),
        (S.NOTIFIED, S.PENDING, False),
        (S.PENDING, S.TIMED_OUT, True),
        (S.VERIFYING, S.TIMED_OUT, True),
        (S.WAITING, S.TIMED_OUT, False),  # never released, so never late
        (S.SUCCEEDED, S.TIMED_OUT, False),
        (S.WAITING, S.CANCELLED, True),
        (S.DOWNLOADED, S.CANCELLED, True),
        (S.INSTALLING, S.CANCELLED, False),  # in flight: it finishes
        (S.WAITING, S.SUCCEEDED, False),
        (S.PENDING, S.PENDING, True),  # no change
    ],
)
def test_server_moves(current: S, wanted: S, allowed: bool) -> None:
    if allowed:
        outcome = server_transition(current, wanted)
        assert outcome == Transition(wanted, changed=current != wanted)
    else:
        with pytest.raises(IllegalTransition, match=f"from {current.value} to {wanted.value}"):
            server_transition(current, wanted)


def counts(**by_state: int) -> dict[S, int]:
    return {S(name): n for name, n in by_state.items()}


@pytest.mark.parametrize(
    ("phase", "device_counts", "start_at", "expected"),
    [
        (Phase.DRAFT, {}, None, DeploymentStatus.DRAFT),
        (Phase.CANCELLED, counts(pending=3), None, DeploymentStatus.CANCELLED),
        (Phase.ACTIVE, {}, None, DeploymentStatus.ACTIVE),
        (Phase.ACTIVE, counts(pending=2, succeeded=1), None, DeploymentStatus.ACTIVE),
        (Phase.ACTIVE, counts(pending=2), NOW + timedelta(hours=1), DeploymentStatus.SCHEDULED),
        (Phase.ACTIVE, counts(pending=2), NOW - timedelta(hours=1), DeploymentStatus.ACTIVE),
        (Phase.ACTIVE, counts(succeeded=5, already_installed=2), None, DeploymentStatus.COMPLETED),
        (Phase.ACTIVE, counts(succeeded=5, failed=1), None, DeploymentStatus.FAILED),
        (Phase.ACTIVE, counts(succeeded=5, rolled_back=1), None, DeploymentStatus.FAILED),
        (Phase.ACTIVE, counts(succeeded=5, cancelled=1), None, DeploymentStatus.COMPLETED),
        (Phase.ACTIVE, counts(succeeded=5, timed_out=1), None, DeploymentStatus.FAILED),
        (Phase.ACTIVE, counts(succeeded=5, waiting=3), None, DeploymentStatus.ACTIVE),
        (Phase.ACTIVE, counts(failed=1, waiting=1), None, DeploymentStatus.ACTIVE),
        (Phase.PAUSED, counts(succeeded=5, waiting=3), None, DeploymentStatus.PAUSED),
        (Phase.PAUSED, counts(pending=1, succeeded=1), None, DeploymentStatus.PAUSED),
        (Phase.PAUSED, counts(succeeded=2), None, DeploymentStatus.COMPLETED),
    ],
)
def test_deployment_status_is_derived(
    phase: Phase, device_counts: dict[S, int], start_at: datetime | None, expected: DeploymentStatus
) -> None:
    assert deployment_status(phase=phase, counts=device_counts, start_at=start_at, now=NOW) is expected


def test_which_statuses_need_force_to_delete() -> None:
    assert {s for s in DeploymentStatus if is_active(s)} == {
        DeploymentStatus.ACTIVE,
        DeploymentStatus.SCHEDULED,
        DeploymentStatus.PAUSED,
    }


def test_highest_priority_wins_then_newest() -> None:
    old_high = Candidate("dep_a", 10, NOW - timedelta(days=2))
    new_low = Candidate("dep_b", 1, NOW)
    new_high = Candidate("dep_c", 10, NOW - timedelta(days=1))
    assert effective_deployment([old_high, new_low]) == old_high
    assert effective_deployment([old_high, new_low, new_high]) == new_high
    assert effective_deployment([]) is None


@pytest.mark.parametrize(
    ("current", "wanted", "allowed"),
    [
        (Phase.DRAFT, Phase.ACTIVE, True),
        (Phase.DRAFT, Phase.PAUSED, False),
        (Phase.ACTIVE, Phase.PAUSED, True),
        (Phase.PAUSED, Phase.ACTIVE, True),
        (Phase.ACTIVE, Phase.DRAFT, False),
        (Phase.ACTIVE, Phase.CANCELLED, True),
        (Phase.CANCELLED, Phase.ACTIVE, False),
        (Phase.CANCELLED, Phase.CANCELLED, True),
    ],
)
def test_phase_moves(current: Phase, wanted: Phase, allowed: bool) -> None:
    if allowed:
        check_phase_change(current, wanted)
    else:
        with pytest.raises(IllegalTransition):
            check_phase_change(current, wanted)


def test_content_is_frozen_outside_draft() -> None:
    before = DeploymentContent("rel_a", ("d1",), None)
    after = DeploymentContent("rel_b", ("d1",), None)
    check_content_change(Phase.DRAFT, before, after)
    check_content_change(Phase.ACTIVE, before, before)
    with pytest.raises(IllegalTransition, match="only while it is a draft"):
        check_content_change(Phase.ACTIVE, before, after)


def test_a_deployment_needs_a_target() -> None:
    check_target(["d1"], None)
    check_target([], "tags.env = 'prod'")
    with pytest.raises(InvalidInput):
        check_target([], None)


def fields(**changes: object) -> DeploymentFields:
    base: dict[str, object] = {
        "name": "n",
        "priority": 0,
        "labels": (),
        "start_at": None,
        "content": DeploymentContent("rel", (), "*"),
        "phase": Phase.ACTIVE,
    }
    base.update(changes)
    return DeploymentFields(**base)  # type: ignore[arg-type]


def test_permissions_for_a_change() -> None:
    assert permission_for_new(Phase.DRAFT) is Permission.DEPLOYMENTS_WRITE
    assert permission_for_new(Phase.ACTIVE) is Permission.DEPLOYMENTS_CONTROL
    assert permissions_for_change(fields(), fields()) == frozenset()
    assert permissions_for_change(fields(), fields(phase=Phase.PAUSED)) == {Permission.DEPLOYMENTS_CONTROL}
    assert permissions_for_change(fields(), fields(priority=5)) == {Permission.DEPLOYMENTS_WRITE}
    assert permissions_for_change(fields(), fields(priority=5, phase=Phase.PAUSED)) == {
        Permission.DEPLOYMENTS_WRITE,
        Permission.DEPLOYMENTS_CONTROL,
    }


def test_missing_permission_for_a_replace() -> None:
    write, control = Permission.DEPLOYMENTS_WRITE, Permission.DEPLOYMENTS_CONTROL
    assert missing_permission(fields(), fields(priority=5), frozenset({write})) is None
    assert missing_permission(fields(), fields(priority=5), frozenset({control})) is write
    assert missing_permission(fields(), fields(phase=Phase.PAUSED), frozenset({write})) is control
    assert missing_permission(fields(), fields(phase=Phase.PAUSED, name="x"), frozenset({control})) is write
    # an idempotent retry: anyone who may change deployments at all
    assert missing_permission(fields(), fields(), frozenset({control})) is None
    assert missing_permission(fields(), fields(), frozenset({write})) is None
    assert missing_permission(fields(), fields(), frozenset()) is write


RELEASE = ReleaseFacts("rel_1", ("gw-x1",), ("arm64",))


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (None, UpdateRefusal.UNKNOWN_DEVICE),
        (DeviceFacts("pending", "gw-x1", "arm64", None), UpdateRefusal.NOT_ACCEPTED),
        (DeviceFacts("accepted", "gw-x2", "arm64", None), UpdateRefusal.INCOMPATIBLE_TYPE),
        (DeviceFacts("accepted", "gw-x1", "armv7", None), UpdateRefusal.INCOMPATIBLE_ARCHITECTURE),
        (DeviceFacts("accepted", "gw-x1", "arm64", "rel_1"), UpdateRefusal.ALREADY_INSTALLED),
        (DeviceFacts("accepted", "gw-x1", "arm64", "rel_0"), None),
        (DeviceFacts("accepted", "gw-x1", "arm64", None), None),
    ],
)
def test_update_refusal(device: DeviceFacts | None, expected: UpdateRefusal | None) -> None:
    refusal = update_refusal(device, RELEASE)
    assert (refusal[0] if refusal else None) is expected
    if refusal:
        assert refusal[1]


def test_empty_compatibility_lists_allow_any_device() -> None:
    anything = ReleaseFacts("rel_2", (), ())
    assert update_refusal(DeviceFacts("accepted", "whatever", "riscv64", None), anything) is None
