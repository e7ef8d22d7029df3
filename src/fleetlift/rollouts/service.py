"""Use cases of rollouts: starting one (devices placed in waves), the reconcile step that moves it
forward, and the operator actions (start, pause, resume, cancel, retry, approve).

``reconcile_deployment`` is the whole rollout engine: given a deployment locked in the caller's
transaction and the time, it derives everything from committed state (per-wave counts grouped in
one query), asks the pure rules (``rollouts.rules``) for one decision at a time, applies each with
set-based SQL and records an event for it. Running it twice changes nothing the second time, so a
crash between any two statements, or a second replica, is harmless."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from fleetlift.audit import service as audit
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.deployments import repository as deployments
from fleetlift.deployments.models import Deployment
from fleetlift.deployments.repository import Eligibility
from fleetlift.deployments.rules import IN_FLIGHT, DeviceUpdateState, Phase
from fleetlift.device_api.poll import deployments_changed
from fleetlift.devices import repository as devices
from fleetlift.devices.models import Device
from fleetlift.errors import FieldError, IllegalTransition, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.ids import new_id
from fleetlift.releases import repository as releases
from fleetlift.releases.models import Release
from fleetlift.rollouts import repository
from fleetlift.rollouts.rules import (
    AwaitApproval,
    Decision,
    Finish,
    Halt,
    OpenWave,
    Progress,
    RolloutState,
    Soak,
    Stay,
    Wave,
    counts_from_states,
    in_window,
    next_decision,
    parse_window_text,
    plan_waves,
    release_slots,
    timed_out_before,
    wave_sizes,
    windows_of,
)
from fleetlift.rollouts.schemas import RolloutPolicy
from fleetlift.targeting import parse_condition

if TYPE_CHECKING:
    from fleetlift.deployments.service import DeploymentView

log = logging.getLogger(__name__)

S = DeviceUpdateState
R = RolloutState
SYSTEM = "fleetlift"
ROLLBACK_LABEL = "fleetlift/rollback-of"
MAX_PRIORITY = 1_000_000
# Session info: devices released in this transaction, per tenant, to tell through the device
# channel after it commits (``reconciler.install_release_hooks``).
RELEASED = "fleetlift.released_devices"


def note_released(session: Session, tenant_id: str, device_ids: Sequence[str]) -> None:
    """Remember devices this transaction released, so the channel tells them after the commit."""
    if device_ids:
        session.info.setdefault(RELEASED, {}).setdefault(tenant_id, []).extend(device_ids)


# -- policy and plan ---------------------------------------------------------------------------


def policy_of(deployment: Deployment) -> RolloutPolicy:
    """The deployment's rollout policy (the empty policy for deployments made before rollouts)."""
    return _parse_policy(_frozen(deployment.policy or {}))


def _frozen(document: Any) -> Any:
    """A hashable copy of a JSON document, for the parse cache."""
    if isinstance(document, dict):
        return tuple(sorted((key, _frozen(value)) for key, value in document.items()))
    if isinstance(document, list):
        return ("__list__", tuple(_frozen(value) for value in document))
    return document


def _thawed(frozen: Any) -> Any:
    if isinstance(frozen, tuple) and frozen[:1] == ("__list__",):
        return [_thawed(value) for value in frozen[1]]
    if isinstance(frozen, tuple):
        return {key: _thawed(value) for key, value in frozen}
    return frozen


@lru_cache(maxsize=1024)
def _parse_policy(frozen: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate(_thawed(frozen))


def plan_of(deployment: Deployment) -> tuple[Wave, ...]:
    """The waves of a started deployment. Tag waves had their values written into the stored
    policy when it started, so the plan never shifts under devices already placed."""
    return _plan_of_frozen(_frozen(deployment.policy or {}))


@lru_cache(maxsize=1024)
def _plan_of_frozen(frozen: Any) -> tuple[Wave, ...]:
    return _plan(_parse_policy(frozen))


def _plan(policy: RolloutPolicy) -> tuple[Wave, ...]:
    return plan_waves(policy, {})


def stored_policy(policy: RolloutPolicy) -> dict[str, Any]:
    """The policy as the deployment row keeps it."""
    return policy.model_dump(mode="json", exclude_defaults=False)


def check_policy(session: Session, *, tenant_id: str, policy: RolloutPolicy) -> None:
    """What the schema cannot check: the rollback release exists in the tenant."""
    release_id = policy.rollback.release_id
    if release_id is not None and releases.get(session, tenant_id=tenant_id, release_id=release_id) is None:
        raise InvalidInput(
            f"no release '{release_id}' in this tenant to roll back to",
            errors=[FieldError("body.policy.rollback.release_id", "unknown release")],
        )


# -- starting a rollout ------------------------------------------------------------------------


def eligibility_of(session: Session, deployment: Deployment, release: Release) -> Eligibility:
    """Which devices the deployment targets, as SQL."""
    condition = deployment.target_condition
    clause = None if condition is None else devices.condition_clause(session, parse_condition(condition))
    # Imported here: the iothub slice builds on deployments and rollouts.
    from fleetlift.iothub import repository as iothub

    required = None
    if iothub.revisions_of(session, tenant_id=deployment.tenant_id, deployment_id=deployment.id):
        # The hub's configuration targets IoT Edge devices only; so does fleetlift's side of it,
        # or the other devices would wait for an update the hub never gives them.
        required = Device.identity["edge"].as_boolean().is_(True)
    return Eligibility(
        release=release,
        explicit_ids=list(deployment.target_device_ids),
        condition=clause,
        required=required,
    )


def begin(
    session: Session, *, deployment: Deployment, release: Release, now: datetime, skip_already_installed: bool
) -> tuple[int, list[str]]:
    """A deployment became active: assign its targeted devices as ``waiting`` (one INSERT ...
    SELECT), place them in their waves, and take the first step at once (an empty policy releases
    every device in this same transaction). Returns (devices assigned, devices released)."""
    policy = policy_of(deployment)
    assigned = deployments.assign_devices(
        session,
        deployment=deployment,
        eligibility=eligibility_of(session, deployment, release),
        skip_already_installed=skip_already_installed,
        now=now,
        initial=S.WAITING,
        wave=repository.UNPLACED if policy.waves else 0,
    )
    if policy.waves:
        policy = _resolve_tags(session, deployment, policy)
        deployment.policy = stored_policy(policy)
    plan = _plan(policy)
    if policy.waves:
        _place(session, deployment, plan)
    deployment.wave_count = len(plan)
    deployment.rollout_state = R.PENDING.value
    deployment.current_wave = 0
    deployment.halted_reason = None
    deployment.soak_until = None
    return assigned, reconcile_deployment(session, deployment, now)


def _resolve_tags(session: Session, deployment: Deployment, policy: RolloutPolicy) -> RolloutPolicy:
    """Write the tag values found now into tag waves that did not list theirs, so the plan is
    fixed from the start (a tag with no values yields no wave, as before)."""
    waves = []
    for spec in policy.waves:
        if spec.tag is not None and spec.tag_values is None:
            values = repository.tag_values(session, deployment=deployment, key=spec.tag)
            if values:
                spec = spec.model_copy(update={"tag_values": values})
        waves.append(spec)
    return policy.model_copy(update={"waves": waves})


def _place(session: Session, deployment: Deployment, plan: Sequence[Wave]) -> None:
    """Identity waves (canary IDs, tag values) take their devices first; percent and count waves
    then take theirs in device-ID order from the rest; the remainder wave takes what is left."""
    taken = [0] * len(plan)
    for wave in plan:
        if wave.kind == "device_ids":
            taken[wave.index] = repository.place_by_ids(
                session, deployment=deployment, wave=wave.index, device_ids=wave.device_ids
            )
        elif wave.kind == "tag" and wave.tag is not None and wave.tag_value is not None:
            taken[wave.index] = repository.place_by_tag(
                session, deployment=deployment, wave=wave.index, key=wave.tag, value=wave.tag_value
            )
    total = sum(taken) + repository.count_unplaced(session, deployment=deployment)
    for wave, size in zip(plan, wave_sizes(total, plan, taken), strict=True):
        if size is not None:
            repository.place_first(session, deployment=deployment, wave=wave.index, count=size)
    repository.place_rest(session, deployment=deployment, wave=plan[-1].index)


# -- the reconcile step ------------------------------------------------------------------------


def _progress(deployment: Deployment, counts: repository.WaveCounts) -> Progress:
    current = deployment.current_wave
    overall: dict[DeviceUpdateState, int] = {}
    later_waiting = 0
    for wave, states in counts.items():
        for state, n in states.items():
            overall[state] = overall.get(state, 0) + n
        if wave > current:
            later_waiting += states.get(S.WAITING, 0)
    return Progress(
        state=R(deployment.rollout_state),
        current_wave=current,
        wave_count=deployment.wave_count,
        soak_until=deployment.soak_until,
        approved_through=deployment.approved_through,
        wave=counts_from_states(counts.get(current, {})),
        overall=counts_from_states(overall),
        later_waves_waiting=later_waiting,
    )


def _counts(session: Session, deployment: Deployment) -> repository.WaveCounts:
    return repository.wave_state_counts(
        session, tenant_id=deployment.tenant_id, deployment_ids=[deployment.id]
    ).get(deployment.id, {})


def reconcile_deployment(session: Session, deployment: Deployment, now: datetime) -> list[str]:
    """Move one rollout as far as it can go now, in the caller's transaction (which holds the
    deployment's lock); the IDs of the devices it released, to notify after the commit."""
    if deployment.deleted_at is not None or deployment.phase != Phase.ACTIVE.value:
        return []
    if deployment.start_at is not None and deployment.start_at > now:
        return []
    policy = policy_of(deployment)
    plan = plan_of(deployment)
    _time_out(session, deployment, policy, now)
    if policy.dynamic:
        _join(session, deployment, now)
    released: list[str] = []
    counts = _counts(session, deployment)
    for _ in range(3 * len(plan) + 6):  # each decision moves forward; Stay ends the step
        progress = _progress(deployment, counts)
        decision = _decide(progress, plan, now)
        if isinstance(decision, Stay):
            break
        released += _apply(session, deployment, policy, plan, decision, progress, now)
        if isinstance(decision, (Halt, Finish)):
            break
        counts = _counts(session, deployment)
    if deployment.rollout_state == R.WAVE_OPEN.value and deployment.phase == Phase.ACTIVE.value:
        released += _release(session, deployment, policy, counts, now)
    if released:
        deployments_changed(session, deployment.tenant_id)
    return released


def _decide(progress: Progress, plan: Sequence[Wave], now: datetime) -> Decision:
    """The rules' decision, with the approval gate of the first wave (before anything opens)."""
    if progress.state is R.PENDING and plan[0].requires_approval and progress.approved_through < 0:
        return AwaitApproval(0)
    decision = next_decision(progress, plan, now)
    if isinstance(decision, Halt) and plan[0].kind == "all" and progress.overall.done:
        # The empty policy has one wave and no error threshold: there is nothing left to hold
        # back, so falling short of 100% is a failed deployment (as before rollouts), not a halt.
        return Finish(failed=True)
    return decision


def _apply(
    session: Session,
    deployment: Deployment,
    policy: RolloutPolicy,
    plan: Sequence[Wave],
    decision: Decision,
    progress: Progress,
    now: datetime,
) -> list[str]:
    """Apply one decision to the deployment row and record its event; devices it released."""
    deployment.updated_at = now
    if isinstance(decision, OpenWave):
        if progress.state is R.PENDING or (progress.state is R.AWAITING_APPROVAL and decision.wave == 0):
            repository.emit(session, deployment=deployment, type="deployment.started", now=now)
        wave = plan[min(decision.wave, len(plan) - 1)]
        deployment.rollout_state = R.WAVE_OPEN.value
        deployment.current_wave = decision.wave
        deployment.wave_opened_at = now
        deployment.soak_until = None
        size = repository.wave_size(session, deployment=deployment, wave=decision.wave)
        repository.emit(
            session,
            deployment=deployment,
            type="deployment.wave_opened",
            now=now,
            data={"wave": decision.wave, "name": wave.name, "devices": size},
        )
    elif isinstance(decision, Soak):
        deployment.rollout_state = R.SOAKING.value
        deployment.soak_until = decision.until
        repository.emit(
            session,
            deployment=deployment,
            type="deployment.wave_soaking",
            now=now,
            data={"wave": decision.wave, "until": decision.until.isoformat()},
        )
    elif isinstance(decision, AwaitApproval):
        deployment.rollout_state = R.AWAITING_APPROVAL.value
        if decision.wave == 0:
            deployment.current_wave = -1  # nothing opened yet: the awaited wave is current + 1
        repository.emit(
            session,
            deployment=deployment,
            type="deployment.awaiting_approval",
            now=now,
            data={"wave": decision.wave},
        )
    elif isinstance(decision, Halt):
        return _halt(session, deployment, policy, decision.reason, progress, now)
    elif isinstance(decision, Finish):
        deployment.rollout_state = R.FINISHED.value
        overall = progress.overall
        repository.emit(
            session,
            deployment=deployment,
            type="deployment.failed" if decision.failed else "deployment.completed",
            now=now,
            data={"succeeded": overall.succeeded, "failed": overall.failed, "cancelled": overall.cancelled},
        )
    return []


def _halt(
    session: Session,
    deployment: Deployment,
    policy: RolloutPolicy,
    reason: str,
    progress: Progress,
    now: datetime,
) -> list[str]:
    """The error threshold tripped (or a wave fell short): stop opening waves, pause, and roll
    back as the policy says."""
    deployment.rollout_state = R.HALTED.value
    deployment.halted_reason = reason
    repository.emit(
        session,
        deployment=deployment,
        type="deployment.halted",
        now=now,
        data={"reason": reason, "failed": progress.overall.failed, "wave": progress.current_wave},
    )
    # Paused: devices released but not started are no longer offered; the ones installing finish.
    deployment.phase = Phase.PAUSED.value
    repository.emit(
        session, deployment=deployment, type="deployment.paused", now=now, data={"reason": "halted"}
    )
    if policy.rollback.on_error == "pause" or policy.rollback.release_id is None:
        return []
    return _roll_back(
        session,
        deployment,
        policy.rollback.release_id,
        only_failed=policy.rollback.on_error == "rollback_failed",
        now=now,
    )


def _roll_back(
    session: Session, parent: Deployment, release_id: str, *, only_failed: bool, now: datetime
) -> list[str]:
    """A deployment of the rollback release to the failed (or all released) devices of ``parent``,
    one priority higher, released at once."""
    release = releases.get(session, tenant_id=parent.tenant_id, release_id=release_id)
    if release is None:
        parent.halted_reason = f"{parent.halted_reason}; no rollback: release '{release_id}' no longer exists"
        return []
    rollback = Deployment(
        tenant_id=parent.tenant_id,
        id=new_id("dep_"),
        name=f"rollback of {parent.name}"[:200],
        release_id=release.id,
        target_device_ids=[],
        target_condition=None,
        priority=min(parent.priority + 1, MAX_PRIORITY),
        labels={ROLLBACK_LABEL: parent.id},
        phase=Phase.ACTIVE.value,
        start_at=None,
        created_by=SYSTEM,
        created_at=now,
        updated_at=now,
        policy={},
        rollout_state=R.WAVE_OPEN.value,
        current_wave=0,
        wave_count=1,
        wave_opened_at=now,
        parent_deployment_id=parent.id,
    )
    deployments.add(session, rollback)
    session.flush()
    rows = repository.add_rollback_devices(
        session, parent=parent, rollback=rollback, only_failed=only_failed, now=now
    )
    repository.emit(
        session,
        deployment=rollback,
        type="deployment.created",
        now=now,
        data={"release_id": release.id, "parent_deployment_id": parent.id, "devices": len(rows)},
    )
    repository.emit(session, deployment=rollback, type="deployment.started", now=now)
    repository.emit(
        session,
        deployment=rollback,
        type="deployment.wave_opened",
        now=now,
        data={"wave": 0, "name": "all devices", "devices": len(rows)},
    )
    repository.emit_device_states(
        session,
        deployment=rollback,
        moved=[(device_id, 0) for device_id, _ in rows],
        state=S.PENDING,
        now=now,
    )
    repository.emit(
        session,
        deployment=parent,
        type="deployment.rollback_created",
        now=now,
        data={"rollback_deployment_id": rollback.id, "devices": len(rows), "release_id": release.id},
    )
    return [device_id for device_id, _ in rows]


def _time_out(session: Session, deployment: Deployment, policy: RolloutPolicy, now: datetime) -> None:
    before = timed_out_before(policy.device_timeout_seconds, now)
    if before is None:
        return
    detail = f"no report for {policy.device_timeout_seconds} s"
    moved = repository.time_out(session, deployment=deployment, before=before, now=now, detail=detail)
    if moved:
        repository.emit_device_states(
            session, deployment=deployment, moved=moved, state=S.TIMED_OUT, now=now, detail=detail
        )


def _join(session: Session, deployment: Deployment, now: datetime) -> None:
    """Devices that match the target now and are not in the rollout join it: into the open wave,
    else the last one (a finished rollout opens its last wave again for them)."""
    release = releases.get(session, tenant_id=deployment.tenant_id, release_id=deployment.release_id)
    if release is None:
        return
    state = R(deployment.rollout_state)
    wave = deployment.current_wave if state is R.WAVE_OPEN else deployment.wave_count - 1
    joined = deployments.join_devices(
        session,
        deployment=deployment,
        eligibility=eligibility_of(session, deployment, release),
        now=now,
        wave=wave,
    )
    if not joined:
        return
    for member in (S.WAITING, S.ALREADY_INSTALLED):
        repository.emit_device_states(
            session,
            deployment=deployment,
            moved=[(device_id, wave) for device_id, row_state in joined if row_state == member.value],
            state=member,
            now=now,
        )
    if state is R.FINISHED and any(row_state == S.WAITING.value for _, row_state in joined):
        deployment.rollout_state = R.WAVE_OPEN.value
        deployment.current_wave = wave
        deployment.updated_at = now


def _release(
    session: Session,
    deployment: Deployment,
    policy: RolloutPolicy,
    counts: repository.WaveCounts,
    now: datetime,
) -> list[str]:
    """Release the open wave's waiting devices that may start now: within the concurrency limit
    and inside their maintenance window."""
    wave = deployment.current_wave
    if not any(states.get(S.WAITING, 0) for number, states in counts.items() if number <= wave):
        return []
    in_flight = sum(n for states in counts.values() for state, n in states.items() if state in IN_FLIGHT)
    slots = release_slots(policy.max_concurrent, in_flight)
    if slots == 0:
        return []
    window_tag: str | None = None
    open_windows: list[str] | None = None
    maintenance = policy.maintenance
    if maintenance is not None and maintenance.windows:
        if not in_window(windows_of(maintenance), now):
            return []
    elif maintenance is not None and maintenance.tag is not None:
        window_tag = maintenance.tag
        texts = repository.waiting_window_values(session, deployment=deployment, wave=wave, tag=window_tag)
        open_windows = [text for text in texts if _window_open(text, now)]
    moved = repository.release(
        session,
        deployment=deployment,
        wave=wave,
        limit=slots,
        now=now,
        window_tag=window_tag,
        open_windows=open_windows,
    )
    if moved:
        repository.emit_device_states(session, deployment=deployment, moved=moved, state=S.PENDING, now=now)
    return [device_id for device_id, _ in moved]


def _window_open(text: str, now: datetime) -> bool:
    """Whether a device's window text says it may start now; text that does not parse never opens
    (the device waits, and its tag says why)."""
    try:
        windows = _windows(text)
    except InvalidInput:
        return False
    return in_window(windows, now)


@lru_cache(maxsize=4096)
def _windows(text: str) -> tuple[Any, ...]:
    return parse_window_text(text)


# -- progress as the API shows it --------------------------------------------------------------


@dataclass(frozen=True)
class WaveSummary:
    index: int
    name: str
    devices: int
    succeeded: int
    failed: int
    in_flight: int
    waiting: int


def wave_summaries(deployment: Deployment, counts: repository.WaveCounts) -> list[WaveSummary]:
    """Per-wave counts of a deployment, every planned wave listed (empty ones too)."""
    try:
        plan = plan_of(deployment)
    except ValueError:  # a stored policy that no longer validates: show what is there
        plan = ()
    names = {wave.index: wave.name for wave in plan}
    indexes = sorted(set(names) | {wave for wave in counts if wave >= 0})
    summaries = []
    for index in indexes:
        folded = counts_from_states(counts.get(index, {}))
        summaries.append(
            WaveSummary(
                index=index,
                name=names.get(index, f"wave {index}"),
                devices=folded.total,
                succeeded=folded.succeeded,
                failed=folded.failed,
                in_flight=folded.in_flight,
                waiting=folded.waiting,
            )
        )
    return summaries


# -- operator actions --------------------------------------------------------------------------


def _locked(session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> Deployment:
    caller.require(Permission.DEPLOYMENTS_CONTROL)
    deployment = repository.lock(
        session, tenant_id=caller.tenant_id, deployment_id=deployment_id, skip_locked=False
    )
    if deployment is None or deployment.deleted_at is not None:
        raise NotFound(f"no deployment '{deployment_id}' in this tenant")
    check_if_match(if_match, deployment.row_version)
    return deployment


def _finish_action(
    session: Session,
    caller: Caller,
    deployment: Deployment,
    action: str,
    now: datetime,
    released: list[str],
    details: dict[str, Any],
) -> DeploymentView:
    # Imported here: the deployments service imports this module to start rollouts.
    from fleetlift.deployments import service as deployments_service

    deployment.updated_at = now
    note_released(session, deployment.tenant_id, released)
    audit.record(
        session,
        caller=caller,
        action=f"deployments.{action}",
        resource_type="deployment",
        resource_id=deployment.id,
        details={**details, "released_devices": len(released)},
    )
    session.commit()
    return deployments_service.view_of(session, deployment, now)


def start(*, session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> DeploymentView:
    """Start a draft (devices are assigned and the first wave opens), or a scheduled deployment now."""
    from fleetlift.releases import service as releases_service

    deployment = _locked(session, caller, deployment_id, if_match)
    now = utcnow()
    phase = Phase(deployment.phase)
    details: dict[str, Any] = {}
    if phase is Phase.DRAFT:
        release = releases.get(session, tenant_id=deployment.tenant_id, release_id=deployment.release_id)
        if release is None:
            raise IllegalTransition(f"the release '{deployment.release_id}' of this draft no longer exists")
        releases_service.ensure_deployable(release)
        deployment.phase = Phase.ACTIVE.value
        session.flush()
        assigned, released = begin(
            session, deployment=deployment, release=release, now=now, skip_already_installed=False
        )
        details = {"phase": [phase.value, Phase.ACTIVE.value], "assigned_devices": assigned}
    elif phase is Phase.ACTIVE and deployment.start_at is not None and deployment.start_at > now:
        details = {"start_at": [deployment.start_at.isoformat(), now.isoformat()]}
        deployment.start_at = now
        released = reconcile_deployment(session, deployment, now)
    else:
        raise IllegalTransition(f"a {_described(deployment, now)} deployment cannot be started")
    return _finish_action(session, caller, deployment, "start", now, released, details)


def _described(deployment: Deployment, now: datetime) -> str:
    if (
        deployment.phase == Phase.ACTIVE.value
        and deployment.start_at is not None
        and deployment.start_at > now
    ):
        return "scheduled"
    if deployment.phase == Phase.ACTIVE.value:
        return "started"
    return deployment.phase


def pause(*, session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> DeploymentView:
    """Pause: no wave opens and no device is released; devices already released are no longer
    offered, devices installing finish."""
    deployment = _locked(session, caller, deployment_id, if_match)
    now = utcnow()
    if deployment.phase != Phase.ACTIVE.value:
        raise IllegalTransition(f"a {deployment.phase} deployment cannot be paused")
    deployment.phase = Phase.PAUSED.value
    repository.emit(
        session, deployment=deployment, type="deployment.paused", now=now, data={"by": caller.subject}
    )
    return _finish_action(session, caller, deployment, "pause", now, [], {"phase": ["active", "paused"]})


def resume(*, session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> DeploymentView:
    """Resume a paused deployment where it stopped. A rollout its error threshold halted resumes
    through ``retry`` (the failures would halt it again at once)."""
    deployment = _locked(session, caller, deployment_id, if_match)
    now = utcnow()
    if deployment.phase != Phase.PAUSED.value:
        raise IllegalTransition(f"a {deployment.phase} deployment cannot be resumed")
    if deployment.rollout_state == R.HALTED.value:
        raise IllegalTransition(
            f"the rollout halted ({deployment.halted_reason}); retry the failed devices "
            "(POST .../retry) or cancel it"
        )
    deployment.phase = Phase.ACTIVE.value
    repository.emit(
        session, deployment=deployment, type="deployment.resumed", now=now, data={"by": caller.subject}
    )
    released = reconcile_deployment(session, deployment, now)
    return _finish_action(
        session, caller, deployment, "resume", now, released, {"phase": ["paused", "active"]}
    )


def cancel(*, session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> DeploymentView:
    """Cancel: devices that have not started installing are cancelled; devices installing finish."""
    deployment = _locked(session, caller, deployment_id, if_match)
    now = utcnow()
    if deployment.phase == Phase.CANCELLED.value:
        raise IllegalTransition("the deployment is already cancelled")
    before = deployment.phase
    cancelled = cancel_devices(session, deployment, now)
    deployment.phase = Phase.CANCELLED.value
    return _finish_action(
        session,
        caller,
        deployment,
        "cancel",
        now,
        [],
        {"phase": [before, Phase.CANCELLED.value], "cancelled_devices": cancelled},
    )


def cancel_devices(session: Session, deployment: Deployment, now: datetime) -> int:
    """Cancel the deployment's devices that have not started installing, with their events and
    the deployment's; how many."""
    moved = deployments.cancel_unstarted(session, deployment=deployment, now=now)
    repository.emit_device_states(
        session, deployment=deployment, moved=moved, state=S.CANCELLED, now=now, detail="deployment cancelled"
    )
    repository.emit(
        session, deployment=deployment, type="deployment.cancelled", now=now, data={"devices": len(moved)}
    )
    deployments_changed(session, deployment.tenant_id)
    return len(moved)


def retry(*, session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> DeploymentView:
    """Failed, rolled back and timed out devices get another attempt (back to pending, or queued
    for a slot under a concurrency limit); a halted rollout goes on from its current wave."""
    deployment = _locked(session, caller, deployment_id, if_match)
    now = utcnow()
    if deployment.phase not in (Phase.ACTIVE.value, Phase.PAUSED.value):
        raise IllegalTransition(f"a {deployment.phase} deployment cannot retry devices")
    # Under a concurrency limit the retried devices queue for slots (the reconciler releases them,
    # below and later); without one they are released at once.
    queue = policy_of(deployment).max_concurrent is not None
    moved = repository.retry(session, deployment=deployment, now=now, queue=queue)
    if not moved:
        raise IllegalTransition("no device of this deployment failed, rolled back or timed out")
    state = S.WAITING if queue else S.PENDING
    repository.emit_device_states(session, deployment=deployment, moved=moved, state=state, now=now)
    repository.emit(
        session, deployment=deployment, type="deployment.retried", now=now, data={"devices": len(moved)}
    )
    details: dict[str, Any] = {"retried_devices": len(moved)}
    if deployment.rollout_state in (R.HALTED.value, R.FINISHED.value):
        if deployment.rollout_state == R.HALTED.value and deployment.phase == Phase.PAUSED.value:
            deployment.phase = Phase.ACTIVE.value
            repository.emit(
                session,
                deployment=deployment,
                type="deployment.resumed",
                now=now,
                data={"by": caller.subject},
            )
            details["phase"] = ["paused", "active"]
        deployment.rollout_state = R.WAVE_OPEN.value
        deployment.halted_reason = None
        if deployment.current_wave < 0:
            deployment.current_wave = 0
    deployments_changed(session, deployment.tenant_id)
    released = [] if queue else [device_id for device_id, _ in moved]
    released += reconcile_deployment(session, deployment, now)
    return _finish_action(session, caller, deployment, "retry", now, released, details)


def approve(*, session: Session, caller: Caller, deployment_id: str, if_match: str | None) -> DeploymentView:
    """Open the approval gate of the next wave: the one the rollout waits at, or the next gated
    wave ahead of the open one."""
    deployment = _locked(session, caller, deployment_id, if_match)
    now = utcnow()
    if deployment.phase in (Phase.DRAFT.value, Phase.CANCELLED.value):
        raise IllegalTransition(f"a {deployment.phase} deployment has no wave to approve")
    state = R(deployment.rollout_state)
    plan = plan_of(deployment)
    following = deployment.current_wave + 1
    if state is R.PENDING and plan[0].requires_approval:
        following = 0
    if state in (R.HALTED, R.FINISHED) or following >= len(plan):
        raise IllegalTransition(f"the rollout is {state.value}: no wave awaits approval")
    if not plan[following].requires_approval or deployment.approved_through >= following:
        raise IllegalTransition(f"wave {following} ({plan[following].name}) does not await approval")
    deployment.approved_through = following
    repository.emit(
        session,
        deployment=deployment,
        type="deployment.wave_approved",
        now=now,
        data={"wave": following, "by": caller.subject},
    )
    released = reconcile_deployment(session, deployment, now)
    return _finish_action(session, caller, deployment, "approve", now, released, {"wave": following})
