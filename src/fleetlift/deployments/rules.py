"""Pure rules of deployments: the per-device update state machine, the derived deployment
status, which deployment a device follows when several target it, and who may change what."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fleetlift.auth.rules import Permission
from fleetlift.errors import IllegalTransition, InvalidInput


class DeviceUpdateState(StrEnum):
    # Assigned to the deployment but not released yet (its wave is not open, no concurrency
    # slot, or outside its maintenance window); only the server moves it on.
    WAITING = "waiting"
    PENDING = "pending"
    NOTIFIED = "notified"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ALREADY_INSTALLED = "already_installed"
    CANCELLED = "cancelled"
    # A released device that reported nothing for the rollout's device timeout; set by the server.
    TIMED_OUT = "timed_out"


S = DeviceUpdateState

# The road a released device travels; a device may skip steps (not every update reboots), never
# go back. WAITING comes before it but is neither progress nor outcome: devices cannot leave it.
PROGRESS: tuple[DeviceUpdateState, ...] = (
    S.PENDING,
    S.NOTIFIED,
    S.DOWNLOADING,
    S.DOWNLOADED,
    S.INSTALLING,
    S.REBOOTING,
    S.VERIFYING,
)
TERMINAL: frozenset[DeviceUpdateState] = frozenset(
    {S.SUCCEEDED, S.FAILED, S.ROLLED_BACK, S.ALREADY_INSTALLED, S.CANCELLED, S.TIMED_OUT}
)
FAILURES: frozenset[DeviceUpdateState] = frozenset({S.FAILED, S.ROLLED_BACK, S.TIMED_OUT})
SUCCESSES: frozenset[DeviceUpdateState] = frozenset({S.SUCCEEDED, S.ALREADY_INSTALLED})

# From which in-progress states each outcome may be reached. Success needs something installed;
# a rollback needs something to roll back; "already installed" is found before installing;
# cancelling is only possible before the device starts changing itself; any released device can
# go silent long enough to time out.
_OUTCOME_SOURCES: dict[DeviceUpdateState, frozenset[DeviceUpdateState]] = {
    S.SUCCEEDED: frozenset({S.DOWNLOADED, S.INSTALLING, S.REBOOTING, S.VERIFYING}),
    S.FAILED: frozenset(PROGRESS),
    S.ROLLED_BACK: frozenset({S.INSTALLING, S.REBOOTING, S.VERIFYING}),
    S.ALREADY_INSTALLED: frozenset({S.PENDING, S.NOTIFIED, S.DOWNLOADING, S.DOWNLOADED}),
    S.CANCELLED: frozenset({S.WAITING, S.PENDING, S.NOTIFIED, S.DOWNLOADING, S.DOWNLOADED}),
    S.TIMED_OUT: frozenset(PROGRESS),
}

# Server-side moves, for the set-based SQL of the reconciler and the operator actions.
CANCELLABLE: frozenset[DeviceUpdateState] = _OUTCOME_SOURCES[S.CANCELLED]
TIMEOUT_SOURCES: frozenset[DeviceUpdateState] = _OUTCOME_SOURCES[S.TIMED_OUT]
RETRYABLE: frozenset[DeviceUpdateState] = FAILURES
IN_FLIGHT: frozenset[DeviceUpdateState] = frozenset(PROGRESS)


@dataclass(frozen=True)
class Transition:
    """The state after a report, and whether the report changed anything."""

    state: DeviceUpdateState
    changed: bool


def transition(current: DeviceUpdateState, reported: DeviceUpdateState) -> Transition:
    """Apply a device's report. Duplicates and late (out-of-order) reports change nothing;
    a report that could never follow the current state raises ``IllegalTransition``."""
    if reported == current:
        return Transition(current, changed=False)
    if current in TERMINAL:
        # The outcome is already known: anything else is a late or duplicated report.
        return Transition(current, changed=False)
    if current == S.WAITING and reported != S.CANCELLED:
        # The poll never offers a waiting row, so a report here is a device jumping the queue.
        raise IllegalTransition("the update has not been released to this device yet")
    if reported in TERMINAL:
        if current in _OUTCOME_SOURCES[reported]:
            return Transition(reported, changed=True)
        raise IllegalTransition(f"a device cannot go from {current.value} to {reported.value}")
    if reported in (S.WAITING, S.PENDING):
        # Only the server puts a device in these; a device reporting one is replaying history.
        return Transition(current, changed=False)
    if PROGRESS.index(reported) > PROGRESS.index(current):
        return Transition(reported, changed=True)
    return Transition(current, changed=False)


# The server's own moves: release (waiting -> pending), retry (a failure -> pending), time out,
# cancel. Devices never make these; the reconciler and operator actions apply them set-based.
_SERVER_MOVES: dict[DeviceUpdateState, frozenset[DeviceUpdateState]] = {
    S.PENDING: frozenset({S.WAITING}) | RETRYABLE,
    # A retry under a concurrency limit: the device queues for a slot like any other.
    S.WAITING: RETRYABLE,
    S.TIMED_OUT: TIMEOUT_SOURCES,
    S.CANCELLED: CANCELLABLE,
}


def server_transition(current: DeviceUpdateState, wanted: DeviceUpdateState) -> Transition:
    """Apply a server-made move (release, retry, time out, cancel); refuse one it does not allow."""
    if wanted == current:
        return Transition(current, changed=False)
    if current in _SERVER_MOVES.get(wanted, frozenset()):
        return Transition(wanted, changed=True)
    raise IllegalTransition(f"the server cannot move a device from {current.value} to {wanted.value}")


@dataclass(frozen=True)
class DeviceReport:
    """A device's progress report on one of its deployments (or the poll's note that it was told)."""

    tenant_id: str
    deployment_id: str
    device_id: str
    state: DeviceUpdateState
    detail: str | None = None
    # When the token the report came with was issued; ``None`` when the caller checked admission.
    token_issued_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, deployment, device): the row the report is about."""
        return (self.tenant_id, self.deployment_id, self.device_id)


class Phase(StrEnum):
    """The operator's intent for a deployment."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class DeploymentStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


def deployment_status(
    *,
    phase: Phase,
    counts: Mapping[DeviceUpdateState, int],
    start_at: datetime | None,
    now: datetime,
) -> DeploymentStatus:
    """The status users see, derived from the operator's intent and the per-device states.

    An active deployment is *completed* when every targeted device reached an outcome and none
    failed, *failed* when every device reached an outcome and at least one failed or rolled back.
    A deployment that targets no devices yet stays active: devices may still join. Devices
    waiting for their wave are not outcomes, so a rollout with waves still to open is not done.
    """
    if phase is Phase.DRAFT:
        return DeploymentStatus.DRAFT
    if phase is Phase.CANCELLED:
        return DeploymentStatus.CANCELLED
    total = sum(counts.values())
    in_flight = sum(n for state, n in counts.items() if state not in TERMINAL)
    if total > 0 and in_flight == 0:
        failed = sum(counts.get(state, 0) for state in FAILURES)
        return DeploymentStatus.FAILED if failed else DeploymentStatus.COMPLETED
    if phase is Phase.PAUSED:
        return DeploymentStatus.PAUSED
    if start_at is not None and start_at > now:
        return DeploymentStatus.SCHEDULED
    return DeploymentStatus.ACTIVE


# Which stored phases can show which derived status (used to build the SQL filter).
PHASES_FOR_STATUS: dict[DeploymentStatus, frozenset[Phase]] = {
    DeploymentStatus.DRAFT: frozenset({Phase.DRAFT}),
    DeploymentStatus.CANCELLED: frozenset({Phase.CANCELLED}),
    DeploymentStatus.PAUSED: frozenset({Phase.PAUSED}),
    DeploymentStatus.SCHEDULED: frozenset({Phase.ACTIVE}),
    DeploymentStatus.ACTIVE: frozenset({Phase.ACTIVE}),
    DeploymentStatus.COMPLETED: frozenset({Phase.ACTIVE, Phase.PAUSED}),
    DeploymentStatus.FAILED: frozenset({Phase.ACTIVE, Phase.PAUSED}),
}


def is_active(status: DeploymentStatus) -> bool:
    """Whether devices may be in the middle of this deployment (deleting it needs force)."""
    return status in {DeploymentStatus.ACTIVE, DeploymentStatus.SCHEDULED, DeploymentStatus.PAUSED}


# Operators move deployments between phases; a draft's content is the developer's to edit.
_PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.DRAFT: frozenset({Phase.ACTIVE, Phase.CANCELLED}),
    Phase.ACTIVE: frozenset({Phase.PAUSED, Phase.CANCELLED}),
    Phase.PAUSED: frozenset({Phase.ACTIVE, Phase.CANCELLED}),
    Phase.CANCELLED: frozenset(),
}


def check_phase_change(current: Phase, wanted: Phase) -> None:
    """Refuse a phase change the lifecycle does not allow."""
    if wanted != current and wanted not in _PHASE_MOVES[current]:
        raise IllegalTransition(f"a {current.value} deployment cannot become {wanted.value}")


@dataclass(frozen=True)
class DeploymentContent:
    """What a deployment deploys and to whom: frozen once it leaves draft."""

    release_id: str
    target_device_ids: tuple[str, ...]
    target_condition: str | None


def check_content_change(phase: Phase, before: DeploymentContent, after: DeploymentContent) -> None:
    """A deployment's release and target can change only while it is a draft."""
    if before != after and phase is not Phase.DRAFT:
        raise IllegalTransition(
            "the release and target of a deployment can change only while it is a draft; "
            "create a new deployment instead"
        )


def check_target(device_ids: Iterable[str], condition: str | None) -> None:
    """A deployment must target something: device IDs, a condition, or both."""
    if not list(device_ids) and not condition:
        raise InvalidInput("a deployment needs target device IDs, a target condition, or both")


@dataclass(frozen=True)
class Candidate:
    """A deployment that targets a device, as far as choosing between overlapping ones goes."""

    deployment_id: str
    priority: int
    created_at: datetime


def effective_deployment(candidates: Iterable[Candidate]) -> Candidate | None:
    """The deployment a device follows: highest priority first, the newest among equals
    (Azure IoT Hub's rule for overlapping automatic deployments)."""
    best: Candidate | None = None
    for candidate in candidates:
        if best is None or (candidate.priority, candidate.created_at, candidate.deployment_id) > (
            best.priority,
            best.created_at,
            best.deployment_id,
        ):
            best = candidate
    return best


def permission_for_new(phase: Phase) -> Permission:
    """Drafting a deployment is authoring; creating it active starts a rollout."""
    return Permission.DEPLOYMENTS_WRITE if phase is Phase.DRAFT else Permission.DEPLOYMENTS_CONTROL


@dataclass(frozen=True)
class DeploymentFields:
    """Everything a ``PUT`` may change, to tell which permissions the change needs."""

    name: str
    priority: int
    labels: tuple[tuple[str, str], ...]
    start_at: datetime | None
    content: DeploymentContent
    phase: Phase


def permissions_for_change(before: DeploymentFields, after: DeploymentFields) -> frozenset[Permission]:
    """Moving the phase is control (operators); any other change is authoring (developers).
    A replace that changes nothing needs neither (see ``missing_permission``)."""
    needed: set[Permission] = set()
    if before.phase != after.phase:
        needed.add(Permission.DEPLOYMENTS_CONTROL)
    if (before.name, before.priority, before.labels, before.start_at, before.content) != (
        after.name,
        after.priority,
        after.labels,
        after.start_at,
        after.content,
    ):
        needed.add(Permission.DEPLOYMENTS_WRITE)
    return frozenset(needed)


def missing_permission(
    before: DeploymentFields, after: DeploymentFields, granted: frozenset[Permission]
) -> Permission | None:
    """The permission a replace needs and the caller lacks, if any. A replace that changes nothing
    (an idempotent retry) is allowed to anyone who could change a deployment at all."""
    needed = permissions_for_change(before, after)
    if not needed:
        editors = {Permission.DEPLOYMENTS_WRITE, Permission.DEPLOYMENTS_CONTROL}
        return None if granted & editors else Permission.DEPLOYMENTS_WRITE
    for permission in sorted(needed):
        if permission not in granted:
            return permission
    return None


class UpdateRefusal(StrEnum):
    UNKNOWN_DEVICE = "unknown_device"
    NOT_ACCEPTED = "device_not_accepted"
    INCOMPATIBLE_TYPE = "incompatible_device_type"
    INCOMPATIBLE_ARCHITECTURE = "incompatible_architecture"
    ALREADY_INSTALLED = "already_on_release"


@dataclass(frozen=True)
class DeviceFacts:
    """What decides whether a device may be sent a release."""

    status: str
    device_type: str
    architecture: str
    release_id: str | None


@dataclass(frozen=True)
class ReleaseFacts:
    id: str
    device_types: tuple[str, ...]
    architectures: tuple[str, ...]


def update_refusal(device: DeviceFacts | None, release: ReleaseFacts) -> tuple[UpdateRefusal, str] | None:
    """Why an update trigger refuses a device, or ``None`` when it accepts it."""
    if device is None:
        return UpdateRefusal.UNKNOWN_DEVICE, "no such device in this tenant"
    if device.status != "accepted":
        return UpdateRefusal.NOT_ACCEPTED, f"the device is {device.status}, not accepted"
    if release.device_types and device.device_type not in release.device_types:
        return (
            UpdateRefusal.INCOMPATIBLE_TYPE,
            f"device type '{device.device_type}' is not among the release's device types "
            f"({', '.join(release.device_types)})",
        )
    if release.architectures and device.architecture not in release.architectures:
        return (
            UpdateRefusal.INCOMPATIBLE_ARCHITECTURE,
            f"architecture '{device.architecture}' is not among the release's architectures "
            f"({', '.join(release.architectures)})",
        )
    if device.release_id == release.id:
        return UpdateRefusal.ALREADY_INSTALLED, "the device already runs this release"
    return None
