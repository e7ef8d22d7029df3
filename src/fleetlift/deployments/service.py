"""Use cases of deployments, update triggers and per-device update states."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from fleetlift.audit import service as audit
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.deployments import repository, rules
from fleetlift.deployments.models import Deployment, DeploymentDevice
from fleetlift.deployments.repository import DeploymentFilter, Eligibility
from fleetlift.deployments.rules import (
    DeploymentContent,
    DeploymentFields,
    DeploymentStatus,
    DeviceReport,
    DeviceUpdateState,
    Phase,
    UpdateRefusal,
)
from fleetlift.deployments.schemas import (
    BatchDeviceResult,
    BatchUpdateRequest,
    BatchUpdateResult,
    DeploymentCreate,
    DeploymentReplace,
    SingleUpdateRequest,
    Target,
)
from fleetlift.devices import repository as devices
from fleetlift.devices.models import Device
from fleetlift.errors import (
    Conflict,
    FieldError,
    FleetliftError,
    IllegalTransition,
    Incompatible,
    InvalidInput,
    NotFound,
    Unauthenticated,
)
from fleetlift.etags import check_if_match
from fleetlift.events import repository as events
from fleetlift.ids import new_id
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.releases import repository as releases
from fleetlift.releases import service as releases_service
from fleetlift.releases.models import Release
from fleetlift.rollouts import repository as rollout_repository
from fleetlift.rollouts import service as rollouts
from fleetlift.rollouts.rules import RolloutState
from fleetlift.targeting import parse_condition, render_condition


@dataclass(frozen=True)
class DeploymentView:
    """A deployment with its derived status, per-state device counts and per-wave progress."""

    deployment: Deployment
    status: DeploymentStatus
    counts: dict[DeviceUpdateState, int]
    waves: list[rollouts.WaveSummary]


def view_of(session: Session, deployment: Deployment, now: datetime) -> DeploymentView:
    """The deployment as the API shows it: counts per state and per wave from one grouped query."""
    counts = rollout_repository.wave_state_counts(
        session, tenant_id=deployment.tenant_id, deployment_ids=[deployment.id]
    ).get(deployment.id, {})
    return _view_from(deployment, counts, now)


_view = view_of


def _view_from(
    deployment: Deployment, per_wave: rollout_repository.WaveCounts, now: datetime
) -> DeploymentView:
    counts: dict[DeviceUpdateState, int] = {}
    for states in per_wave.values():
        for state, n in states.items():
            counts[state] = counts.get(state, 0) + n
    status = rules.deployment_status(
        phase=Phase(deployment.phase), counts=counts, start_at=deployment.start_at, now=now
    )
    return DeploymentView(deployment, status, counts, rollouts.wave_summaries(deployment, per_wave))


def _load(session: Session, caller: Caller, deployment_id: str) -> Deployment:
    deployment = repository.get(session, tenant_id=caller.tenant_id, deployment_id=deployment_id)
    if deployment is None:
        raise NotFound(f"no deployment '{deployment_id}' in this tenant")
    return deployment


def _release(session: Session, caller: Caller, release_id: str) -> Release:
    release = releases.get(session, tenant_id=caller.tenant_id, release_id=release_id)
    if release is None:
        raise InvalidInput(
            f"no release '{release_id}' in this tenant",
            errors=[FieldError("body.release_id", "unknown release")],
        )
    return release


def _normalised_condition(condition: str | None) -> str | None:
    """Parse (a syntax error is a 400 naming the position) and store the canonical form."""
    if condition is None:
        return None
    return render_condition(parse_condition(condition))


def _release_facts(release: Release) -> rules.ReleaseFacts:
    return rules.ReleaseFacts(release.id, tuple(release.device_types), tuple(release.architectures))


def _device_facts(device: Device | None) -> rules.DeviceFacts | None:
    if device is None:
        return None
    return rules.DeviceFacts(device.status, device.device_type, device.architecture, device.release_id)


def _eligibility(
    session: Session, release: Release, device_ids: Sequence[str], condition: str | None
) -> Eligibility:
    clause = None if condition is None else devices.condition_clause(session, parse_condition(condition))
    return Eligibility(release=release, explicit_ids=list(device_ids), condition=clause)


def _check_explicit_targets(
    session: Session, caller: Caller, release: Release, device_ids: Sequence[str]
) -> None:
    """Explicitly named devices must exist and be able to run the release."""
    if not device_ids:
        return
    found = devices.get_many(session, tenant_id=caller.tenant_id, device_ids=device_ids)
    unknown = [device_id for device_id in device_ids if device_id not in found]
    if unknown:
        raise InvalidInput(
            f"{len(unknown)} target device(s) do not exist: {', '.join(unknown[:20])}",
            errors=[FieldError("body.target.device_ids", f"unknown device '{d}'") for d in unknown[:20]],
        )
    refusals = []
    for device_id in device_ids:
        refusal = rules.update_refusal(_device_facts(found[device_id]), _release_facts(release))
        if refusal is not None and refusal[0] in (
            UpdateRefusal.INCOMPATIBLE_TYPE,
            UpdateRefusal.INCOMPATIBLE_ARCHITECTURE,
        ):
            refusals.append({"device_id": device_id, "reason": refusal[0].value, "detail": refusal[1]})
    if refusals:
        first = refusals[0]
        raise Incompatible(
            f"release '{release.name}' {release.version} cannot run on {len(refusals)} target device(s); "
            f"first: '{first['device_id']}': {first['detail']}",
            extra={"devices": refusals[:100]},
        )


def get(*, session: Session, caller: Caller, deployment_id: str) -> DeploymentView:
    """One deployment with its status and device counts."""
    return _view(session, _load(session, caller, deployment_id), utcnow())


def list_deployments(
    *, session: Session, caller: Caller, filters: DeploymentFilter, page: PageRequest
) -> Page[DeploymentView]:
    """Deployments newest first, filtered by status, release and labels."""
    now = utcnow()
    rows = repository.list_deployments(
        session, tenant_id=caller.tenant_id, filters=filters, page=page, now=now
    )
    cut = page_of(rows, page, lambda deployment: [deployment.id])
    counts = rollout_repository.wave_state_counts(
        session, tenant_id=caller.tenant_id, deployment_ids=[d.id for d in cut.items]
    )
    return Page(
        items=[_view_from(d, counts.get(d.id, {}), now) for d in cut.items], next_cursor=cut.next_cursor
    )


def create(*, session: Session, caller: Caller, data: DeploymentCreate) -> DeploymentView:
    """Create a deployment; an active one is assigned its target devices at once."""
    phase = Phase(data.status)
    caller.require(rules.permission_for_new(phase))
    rules.check_target(data.target.device_ids, data.target.condition)
    condition = _normalised_condition(data.target.condition)
    release = _release(session, caller, data.release_id)
    if phase is Phase.ACTIVE:
        releases_service.ensure_deployable(release)
    device_ids = list(dict.fromkeys(data.target.device_ids))
    _check_explicit_targets(session, caller, release, device_ids)
    rollouts.check_policy(session, tenant_id=caller.tenant_id, policy=data.policy)
    now = utcnow()
    deployment = Deployment(
        tenant_id=caller.tenant_id,
        id=new_id("dep_"),
        name=data.name,
        release_id=release.id,
        target_device_ids=device_ids,
        target_condition=condition,
        priority=data.priority,
        labels=dict(data.labels),
        phase=phase.value,
        start_at=data.start_at,
        created_by=caller.subject,
        created_at=now,
        updated_at=now,
        policy=rollouts.stored_policy(data.policy),
    )
    repository.add(session, deployment)
    session.flush()
    rollout_repository.emit(
        session,
        deployment=deployment,
        type="deployment.created",
        now=now,
        data={"release_id": release.id, "status": phase.value},
    )
    details: dict[str, object] = {"release_id": release.id, "status": phase.value}
    if data.iothub is not None:
        # Imported here: the iothub slice builds on this one (it records device states through it).
        from fleetlift.iothub import service as iothub

        iothub.queue_delivery(
            session,
            caller=caller,
            deployment=deployment,
            release=release,
            delivery=data.iothub,
            policy=data.policy,
        )
        details["iothub_hub_id"] = data.iothub.hub_id
    assigned = 0
    if phase is Phase.ACTIVE:
        assigned, released = rollouts.begin(
            session, deployment=deployment, release=release, now=now, skip_already_installed=False
        )
        rollouts.note_released(session, deployment.tenant_id, released)
    audit.record(
        session,
        caller=caller,
        action="deployments.create",
        resource_type="deployment",
        resource_id=deployment.id,
        status_code=201,
        details={**details, "assigned_devices": assigned},
    )
    session.commit()
    return _view(session, deployment, now)


def _fields(deployment: Deployment) -> DeploymentFields:
    return DeploymentFields(
        name=deployment.name,
        priority=deployment.priority,
        labels=tuple(sorted(deployment.labels.items())),
        start_at=deployment.start_at,
        content=DeploymentContent(
            deployment.release_id, tuple(deployment.target_device_ids), deployment.target_condition
        ),
        phase=Phase(deployment.phase),
    )


def replace(
    *, session: Session, caller: Caller, deployment_id: str, data: DeploymentReplace, if_match: str | None
) -> DeploymentView:
    """Replace a deployment's editable fields and move its phase (start, pause, resume, cancel)."""
    deployment = _load(session, caller, deployment_id)
    check_if_match(if_match, deployment.row_version)
    rules.check_target(data.target.device_ids, data.target.condition)
    device_ids = list(dict.fromkeys(data.target.device_ids))
    before = _fields(deployment)
    after = DeploymentFields(
        name=data.name,
        priority=data.priority,
        labels=tuple(sorted(data.labels.items())),
        start_at=data.start_at,
        content=DeploymentContent(
            data.release_id, tuple(device_ids), _normalised_condition(data.target.condition)
        ),
        phase=Phase(data.status),
    )
    missing = rules.missing_permission(before, after, caller.permissions)
    if missing is not None:
        caller.require(missing)
    policy = rollouts.policy_of(deployment) if data.policy is None else data.policy
    policy_changed = rollouts.stored_policy(policy) != rollouts.stored_policy(rollouts.policy_of(deployment))
    if policy_changed:
        caller.require(Permission.DEPLOYMENTS_WRITE)
    rules.check_phase_change(before.phase, after.phase)
    rules.check_content_change(before.phase, before.content, after.content)
    if policy_changed and before.phase is not Phase.DRAFT:
        raise IllegalTransition(
            "the rollout policy of a deployment can change only while it is a draft; "
            "create a new deployment instead"
        )
    if (
        before.phase is Phase.PAUSED
        and after.phase is Phase.ACTIVE
        and deployment.rollout_state == RolloutState.HALTED.value
    ):
        raise IllegalTransition(
            f"the rollout halted ({deployment.halted_reason}); retry the failed devices "
            "(POST .../retry) or cancel it"
        )
    now = utcnow()
    if policy_changed:
        rollouts.check_policy(session, tenant_id=caller.tenant_id, policy=policy)
        deployment.policy = rollouts.stored_policy(policy)
    if before.content != after.content:
        release = _release(session, caller, data.release_id)
        _check_explicit_targets(session, caller, release, device_ids)
    deployment.name = after.name
    deployment.priority = after.priority
    deployment.labels = dict(after.labels)
    deployment.start_at = after.start_at
    deployment.release_id = after.content.release_id
    deployment.target_device_ids = device_ids
    deployment.target_condition = after.content.target_condition
    deployment.phase = after.phase.value
    deployment.updated_at = now
    session.flush()
    details: dict[str, object] = {}
    if before.phase != after.phase:
        details["phase"] = [before.phase.value, after.phase.value]
    if before.phase is Phase.DRAFT and after.phase is Phase.ACTIVE:
        release = _release(session, caller, deployment.release_id)
        releases_service.ensure_deployable(release)
        details["assigned_devices"], released = rollouts.begin(
            session, deployment=deployment, release=release, now=now, skip_already_installed=False
        )
        rollouts.note_released(session, deployment.tenant_id, released)
    elif before.phase is Phase.ACTIVE and after.phase is Phase.PAUSED:
        rollout_repository.emit(
            session, deployment=deployment, type="deployment.paused", now=now, data={"by": caller.subject}
        )
    elif before.phase is Phase.PAUSED and after.phase is Phase.ACTIVE:
        rollout_repository.emit(
            session, deployment=deployment, type="deployment.resumed", now=now, data={"by": caller.subject}
        )
        released = rollouts.reconcile_deployment(session, deployment, now)
        rollouts.note_released(session, deployment.tenant_id, released)
    if after.phase is Phase.CANCELLED and before.phase is not Phase.CANCELLED:
        details["cancelled_devices"] = rollouts.cancel_devices(session, deployment, now)
    audit.record(
        session,
        caller=caller,
        action="deployments.update",
        resource_type="deployment",
        resource_id=deployment.id,
        details=details,
    )
    session.commit()
    return _view(session, deployment, now)


def delete(
    *, session: Session, caller: Caller, deployment_id: str, force: bool, if_match: str | None
) -> None:
    """Hide a deployment; an active one only with ``force`` (which cancels it first). The
    per-device history stays, readable from each device."""
    deployment = _load(session, caller, deployment_id)
    check_if_match(if_match, deployment.row_version)
    now = utcnow()
    view = _view(session, deployment, now)
    cancelled = 0
    if rules.is_active(view.status):
        if not force:
            raise Conflict(
                f"deployment '{deployment_id}' is {view.status.value}; "
                "cancel it first or delete with force=true"
            )
        caller.require(Permission.DEPLOYMENTS_CONTROL)
        deployment.phase = Phase.CANCELLED.value
        cancelled = rollouts.cancel_devices(session, deployment, now)
    deployment.deleted_at = now
    deployment.updated_at = now
    rollout_repository.emit(session, deployment=deployment, type="deployment.deleted", now=now)
    audit.record(
        session,
        caller=caller,
        action="deployments.delete",
        resource_type="deployment",
        resource_id=deployment_id,
        status_code=204,
        details={"forced": force and rules.is_active(view.status), "cancelled_devices": cancelled},
    )
    session.commit()


def list_devices(
    *, session: Session, caller: Caller, deployment_id: str, state: str | None, page: PageRequest
) -> Page[DeploymentDevice]:
    """Every targeted device of a deployment with its update state, by device ID."""
    _load(session, caller, deployment_id)
    rows = repository.list_deployment_devices(
        session, tenant_id=caller.tenant_id, deployment_id=deployment_id, state=state, page=page
    )
    return page_of(rows, page, lambda row: [row.device_id])


def trigger_single(
    *, session: Session, caller: Caller, device_id: str, data: SingleUpdateRequest
) -> DeploymentDevice:
    """Update one device to a release now, through a deployment of its own."""
    device = devices.get(session, tenant_id=caller.tenant_id, device_id=device_id)
    if device is None:
        raise NotFound(f"no device '{device_id}' in this tenant")
    release = _release(session, caller, data.release_id)
    releases_service.ensure_deployable(release)
    refusal = rules.update_refusal(_device_facts(device), _release_facts(release))
    if refusal is not None:
        reason, detail = refusal
        error = (
            Incompatible
            if reason in (UpdateRefusal.INCOMPATIBLE_TYPE, UpdateRefusal.INCOMPATIBLE_ARCHITECTURE)
            else Conflict
        )
        raise error(
            f"device '{device_id}' cannot be updated to '{release.name}' {release.version}: {detail}",
            extra={"reason": reason.value},
        )
    deployment = _new_trigger_deployment(
        session,
        caller,
        release,
        name=f"{device_id} to {release.name} {release.version}",
        device_ids=[device_id],
        condition=None,
        priority=data.priority,
    )
    _, released = rollouts.begin(
        session,
        deployment=deployment,
        release=release,
        now=deployment.created_at,
        skip_already_installed=True,
    )
    rollouts.note_released(session, deployment.tenant_id, released)
    state = repository.get_device_state(
        session, tenant_id=caller.tenant_id, deployment_id=deployment.id, device_id=device_id
    )
    assert state is not None  # the refusal check above guarantees the device was eligible
    audit.record(
        session,
        caller=caller,
        action="updates.trigger",
        resource_type="device",
        resource_id=device_id,
        status_code=202,
        details={"deployment_id": deployment.id, "release_id": release.id},
    )
    session.commit()
    return state


def _new_trigger_deployment(
    session: Session,
    caller: Caller,
    release: Release,
    *,
    name: str,
    device_ids: list[str],
    condition: str | None,
    priority: int,
) -> Deployment:
    now = utcnow()
    deployment = Deployment(
        tenant_id=caller.tenant_id,
        id=new_id("dep_"),
        name=name[:200],
        release_id=release.id,
        target_device_ids=device_ids,
        target_condition=condition,
        priority=priority,
        labels={"fleetlift/trigger": "manual"},
        phase=Phase.ACTIVE.value,
        start_at=None,
        created_by=caller.subject,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, deployment)
    session.flush()
    rollout_repository.emit(
        session,
        deployment=deployment,
        type="deployment.created",
        now=now,
        data={"release_id": release.id, "status": Phase.ACTIVE.value, "trigger": "manual"},
    )
    return deployment


def trigger_batch(
    *, session: Session, caller: Caller, data: BatchUpdateRequest, max_listed: int = 10_000
) -> BatchUpdateResult:
    """Update many devices to a release; says per device whether it was accepted or why not."""
    if not data.device_ids and not data.condition:
        raise InvalidInput("name the devices to update with device_ids, a condition, or both")
    condition = _normalised_condition(data.condition)
    release = _release(session, caller, data.release_id)
    releases_service.ensure_deployable(release)
    device_ids = list(dict.fromkeys(data.device_ids))
    eligibility = _eligibility(session, release, device_ids, condition)

    results: list[BatchDeviceResult] = []
    accepted_explicit: list[str] = []
    if device_ids:
        found = devices.get_many(session, tenant_id=caller.tenant_id, device_ids=device_ids)
        for device_id in device_ids:
            refusal = rules.update_refusal(_device_facts(found.get(device_id)), _release_facts(release))
            if refusal is None:
                accepted_explicit.append(device_id)
                results.append(BatchDeviceResult(device_id=device_id, accepted=True))
            else:
                results.append(
                    BatchDeviceResult(
                        device_id=device_id, accepted=False, reason=refusal[0].value, detail=refusal[1]
                    )
                )
    if condition is not None:
        listed = {result.device_id for result in results}
        for device in repository.ineligible_devices(
            session, tenant_id=caller.tenant_id, eligibility=eligibility, limit=max_listed
        ):
            if device.id in listed:
                continue
            refusal = rules.update_refusal(_device_facts(device), _release_facts(release))
            if refusal is not None:
                results.append(
                    BatchDeviceResult(
                        device_id=device.id, accepted=False, reason=refusal[0].value, detail=refusal[1]
                    )
                )

    eligible = repository.count_eligible(session, tenant_id=caller.tenant_id, eligibility=eligibility)
    deployment_id: str | None = None
    if eligible:
        deployment = _new_trigger_deployment(
            session,
            caller,
            release,
            name=data.name or f"batch update to {release.name} {release.version}",
            device_ids=accepted_explicit,
            condition=condition,
            priority=data.priority,
        )
        eligible, released = rollouts.begin(
            session,
            deployment=deployment,
            release=release,
            now=deployment.created_at,
            skip_already_installed=True,
        )
        rollouts.note_released(session, deployment.tenant_id, released)
        deployment_id = deployment.id
    rejected = sum(1 for result in results if not result.accepted)
    audit.record(
        session,
        caller=caller,
        action="updates.trigger_batch",
        resource_type="deployment" if deployment_id else "release",
        resource_id=deployment_id or release.id,
        details={"release_id": release.id, "accepted": eligible, "rejected": rejected},
    )
    session.commit()
    return BatchUpdateResult(
        deployment_id=deployment_id, accepted_count=eligible, rejected_count=rejected, results=results
    )


def device_deployments(
    *, session: Session, caller: Caller, device_id: str, limit: int = 200
) -> list[tuple[DeploymentDevice, Deployment, bool]]:
    """The deployments that targeted a device (deleted ones too), marking the one it follows now."""
    if devices.get(session, tenant_id=caller.tenant_id, device_id=device_id) is None:
        raise NotFound(f"no device '{device_id}' in this tenant")
    history = repository.device_history(session, tenant_id=caller.tenant_id, device_id=device_id, limit=limit)
    chosen = _effective(history, utcnow())
    return [
        (state, deployment, chosen is not None and deployment.id == chosen.deployment_id)
        for state, deployment in history
    ]


def _effective(
    history: Sequence[tuple[DeploymentDevice, Deployment]], now: datetime
) -> rules.Candidate | None:
    """Which of a device's deployments it follows now (active, started, not finished for it)."""
    live = [
        rules.Candidate(deployment.id, deployment.priority, deployment.created_at)
        for state, deployment in history
        if deployment.deleted_at is None
        and deployment.phase == Phase.ACTIVE.value
        and (deployment.start_at is None or deployment.start_at <= now)
        and DeviceUpdateState(state.state) not in rules.TERMINAL
        and state.state != DeviceUpdateState.WAITING.value
    ]
    return rules.effective_deployment(live)


# Why an admitted device's token no longer counts (``device_api.rules.token_refusal``): given the
# device's status, since when its tokens count and when this one was issued; ``None`` when it does.
Refusal = Callable[[str, datetime | None, datetime], str | None]


def record_device_reports(
    *,
    session: Session,
    reports: Sequence[DeviceReport],
    now: datetime,
    refusal: Refusal | None = None,
) -> list[DeviceUpdateState | FleetliftError]:
    """Apply many status reports through the state machine in one transaction (group commit: the
    rows are read and locked in one statement, changed in one, their events written in one), and
    commit. Each report gets its state after it, or the error that refused it (not part of the
    deployment, token refused, an impossible transition) without failing the others. Reports on
    one row apply in order; duplicates and late reports change nothing; a success records the
    release the device now runs."""
    rows = repository.lock_report_rows(session, [report.key for report in reports])
    current = {key: DeviceUpdateState(row.state) for key, row in rows.items()}
    changes: dict[repository.ReportKey, repository.StateChange] = {}
    emitted: list[dict[str, object]] = []
    installed: list[tuple[str, str, str]] = []
    outcomes: list[DeviceUpdateState | FleetliftError] = []
    for report in reports:
        row = rows.get(report.key)
        if row is None:
            outcomes.append(
                NotFound(f"device '{report.device_id}' is not part of deployment '{report.deployment_id}'")
            )
            continue
        if refusal is not None and report.token_issued_at is not None:
            refused = refusal(row.device_status, row.tokens_valid_after, report.token_issued_at)
            if refused is not None:
                outcomes.append(Unauthenticated(refused))
                continue
        try:
            outcome = rules.transition(current[report.key], report.state)
        except IllegalTransition as error:
            outcomes.append(error)
            continue
        outcomes.append(outcome.state)
        if not outcome.changed:
            continue
        current[report.key] = outcome.state
        changes[report.key] = repository.StateChange(report.key, outcome.state.value, report.detail)
        data: dict[str, object] = {"state": outcome.state.value, "wave": row.wave}
        if report.detail is not None:
            data["detail"] = report.detail[:500]
        emitted.append(
            {
                "tenant_id": report.tenant_id,
                "type": "device.update_state",
                "deployment_id": report.deployment_id,
                "device_id": report.device_id,
                "data": data,
                "created_at": now,
            }
        )
        if outcome.state is DeviceUpdateState.SUCCEEDED:
            installed.append((report.tenant_id, report.device_id, row.release_id))
    repository.write_device_states(session, list(changes.values()), now)
    events.emit_many(session, emitted)
    repository.record_installed_releases(session, installed, now)
    session.commit()
    return outcomes


def record_device_report(
    *,
    session: Session,
    tenant_id: str,
    deployment_id: str,
    device_id: str,
    state: DeviceUpdateState,
    detail: str | None = None,
) -> DeviceUpdateState:
    """Apply one device's status report (``record_device_reports`` of one); its error raised."""
    (outcome,) = record_device_reports(
        session=session,
        reports=[DeviceReport(tenant_id, deployment_id, device_id, state, detail)],
        now=utcnow(),
    )
    if isinstance(outcome, FleetliftError):
        raise outcome
    return outcome


def target_of(deployment: Deployment) -> Target:
    """The target as the API shows it."""
    return Target(device_ids=list(deployment.target_device_ids), condition=deployment.target_condition)
