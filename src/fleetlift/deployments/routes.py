"""HTTP routes of deployments and of update triggers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from fleetlift.api.common import Page
from fleetlift.api.deps import AuditIntent, IfMatch, PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.api.filters import parse_key_values
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.deployments import service
from fleetlift.deployments.repository import DeploymentFilter
from fleetlift.deployments.rules import DeploymentStatus
from fleetlift.deployments.schemas import (
    BatchUpdateRequest,
    BatchUpdateResult,
    DeploymentCreate,
    DeploymentDeviceRead,
    DeploymentRead,
    DeploymentReplace,
    RolloutRead,
    SingleUpdateRequest,
    SingleUpdateResult,
    WaveRead,
)
from fleetlift.etags import etag_of
from fleetlift.rollouts import service as rollouts

router = APIRouter(prefix="/deployments", tags=["deployments"])
triggers = APIRouter(prefix="/devices", tags=["updates"])

Reader = Annotated[Caller, permit(Permission.DEPLOYMENTS_READ)]


def _intent(action: str) -> AuditIntent:
    return AuditIntent(action=action, resource_type="deployment", resource_param="deployment_id")


def _read(view: service.DeploymentView) -> DeploymentRead:
    deployment = view.deployment
    rollout = RolloutRead(
        state=deployment.rollout_state,
        current_wave=deployment.current_wave,
        wave_count=deployment.wave_count,
        soak_until=deployment.soak_until,
        approved_through=deployment.approved_through,
        halted_reason=deployment.halted_reason,
        waves=[WaveRead(**vars(wave)) for wave in view.waves],
    )
    return DeploymentRead(
        id=deployment.id,
        name=deployment.name,
        release_id=deployment.release_id,
        target=service.target_of(deployment),
        priority=deployment.priority,
        labels=deployment.labels,
        status=view.status.value,
        start_at=deployment.start_at,
        device_counts={state.value: count for state, count in sorted(view.counts.items())},
        total_devices=sum(view.counts.values()),
        policy=rollouts.policy_of(deployment),
        rollout=rollout,
        parent_deployment_id=deployment.parent_deployment_id,
        created_by=deployment.created_by,
        created_at=deployment.created_at,
        updated_at=deployment.updated_at,
    )


def with_etag(response: Response, view: service.DeploymentView) -> DeploymentRead:
    """The deployment as the API shows it, its ETag in the response headers."""
    response.headers["ETag"] = etag_of(view.deployment.row_version)
    return _read(view)


_with_etag = with_etag


@router.get(
    "",
    response_model=Page[DeploymentRead],
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="List deployments",
        description="Deployments newest first, with their derived status and per-state device "
        "counts. Filter by `status`, `release_id` and `label` (`key:value`, repeatable).",
        errors=(400,),
    ),
)
def list_deployments(
    session: SessionDep,
    caller: Reader,
    page: PageDep,
    status: DeploymentStatus | None = None,
    release_id: Annotated[str | None, Query(max_length=64)] = None,
    label: Annotated[
        list[str] | None, Query(max_length=20, description="`key:value`; repeat to AND.")
    ] = None,
) -> Page[DeploymentRead]:
    filters = DeploymentFilter(
        status=status, release_id=release_id, labels=parse_key_values(label or [], parameter="label")
    )
    result = service.list_deployments(session=session, caller=caller, filters=filters, page=page)
    return Page(items=[_read(view) for view in result.items], next_cursor=result.next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=DeploymentRead,
    **operation(
        Permission.DEPLOYMENTS_WRITE,
        summary="Create a deployment",
        description="Deploys a release to a target: explicit device IDs, an IoT Hub style target "
        "condition, or both. An `active` deployment is assigned every matching, accepted, "
        "compatible device at once (devices already on the release are recorded as "
        "`already_installed`); a `draft` is assigned when it is started. Explicit devices that "
        "cannot run the release are refused (409) with the reason per device. Where deployments "
        "overlap, a device follows the highest priority, then the newest. The `policy` makes it a "
        "rollout: waves (canary IDs, percent, count, tag values) with success and error "
        "thresholds, soak times and approval gates, a concurrency limit, maintenance windows, "
        "forced or soft mode, rollback on errors, device timeouts and dynamic targeting; devices "
        "wait (`waiting`) until their wave releases them. The empty policy releases every device "
        "at once.",
        errors=(400, 409, 413, 415),
        extra_permission_note=" Creating it `active` needs `deployments:control` (operator, admin).",
    ),
)
def create_deployment(
    data: DeploymentCreate,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_READ, audit=_intent("deployments.create"))],
) -> DeploymentRead:
    view = service.create(session=session, caller=caller, data=data)
    response.headers["Location"] = f"/api/v1/deployments/{view.deployment.id}"
    return _with_etag(response, view)


@router.get(
    "/{deployment_id}",
    response_model=DeploymentRead,
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="Get a deployment",
        description="One deployment with its derived status and per-state device counts.",
        errors=(404,),
    ),
)
def get_deployment(
    deployment_id: str, session: SessionDep, response: Response, caller: Reader
) -> DeploymentRead:
    return _with_etag(response, service.get(session=session, caller=caller, deployment_id=deployment_id))


@router.put(
    "/{deployment_id}",
    response_model=DeploymentRead,
    **operation(
        Permission.DEPLOYMENTS_WRITE,
        summary="Replace a deployment",
        description="Replaces the editable deployment. The release and target change only while it "
        "is a draft (409 otherwise). `status` moves it: draft → active (assigns devices), active ⇄ "
        "paused, any → cancelled (devices that have not started are cancelled). Honors `If-Match`.",
        errors=(400, 404, 409, 412, 413, 415),
        extra_permission_note=" Changing `status` needs `deployments:control` (operator, admin).",
    ),
)
def replace_deployment(
    deployment_id: str,
    data: DeploymentReplace,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_READ, audit=_intent("deployments.update"))],
    if_match: IfMatch = None,
) -> DeploymentRead:
    view = service.replace(
        session=session, caller=caller, deployment_id=deployment_id, data=data, if_match=if_match
    )
    return _with_etag(response, view)


@router.delete(
    "/{deployment_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.DEPLOYMENTS_WRITE,
        summary="Delete a deployment",
        description="Removes the deployment from lists. An active, scheduled or paused deployment "
        "is refused (409) unless `force=true`, which cancels it first. The per-device history is "
        "kept and stays readable from each device. Honors `If-Match`.",
        errors=(404, 409, 412),
        extra_permission_note=" `force` on an active deployment needs `deployments:control`.",
    ),
)
def delete_deployment(
    deployment_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_WRITE, audit=_intent("deployments.delete"))],
    force: bool = False,
    if_match: IfMatch = None,
) -> Response:
    service.delete(
        session=session, caller=caller, deployment_id=deployment_id, force=force, if_match=if_match
    )
    return Response(status_code=204)


@router.get(
    "/{deployment_id}/devices",
    response_model=Page[DeploymentDeviceRead],
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="List a deployment's devices",
        description="Every targeted device with its update state, by device ID; filter by `state`.",
        errors=(400, 404),
    ),
)
def list_deployment_devices(
    deployment_id: str,
    session: SessionDep,
    caller: Reader,
    page: PageDep,
    state: Annotated[
        str | None,
        Query(
            pattern="^(waiting|pending|notified|downloading|downloaded|installing|rebooting|verifying"
            "|succeeded|failed|rolled_back|already_installed|cancelled|timed_out)$"
        ),
    ] = None,
) -> Page[DeploymentDeviceRead]:
    result = service.list_devices(
        session=session, caller=caller, deployment_id=deployment_id, state=state, page=page
    )
    return Page(
        items=[
            DeploymentDeviceRead(
                device_id=row.device_id,
                state=row.state,
                detail=row.detail,
                attempts=row.attempts,
                wave=row.wave,
                released_at=row.released_at,
                updated_at=row.updated_at,
            )
            for row in result.items
        ],
        next_cursor=result.next_cursor,
    )


@triggers.post(
    "/update",
    response_model=BatchUpdateResult,
    **operation(
        Permission.UPDATES_TRIGGER,
        summary="Update a batch of devices",
        description="Updates devices named by ID, matched by a target condition, or both, to a "
        "release, through one new deployment. The answer says per device whether it was accepted "
        "or why not (unknown device, not accepted, incompatible type or architecture, already on "
        "the release): partial success is explicit. Devices matched only by the condition are "
        "listed when refused; the accepted ones are the new deployment's devices.",
        errors=(400, 413, 415),
    ),
)
def update_batch(
    data: BatchUpdateRequest,
    session: SessionDep,
    caller: Annotated[
        Caller,
        permit(
            Permission.UPDATES_TRIGGER,
            audit=AuditIntent(action="updates.trigger_batch", resource_type="release", resource_param=None),
        ),
    ],
) -> BatchUpdateResult:
    return service.trigger_batch(session=session, caller=caller, data=data)


@triggers.post(
    "/{device_id}/update",
    status_code=202,
    response_model=SingleUpdateResult,
    **operation(
        Permission.UPDATES_TRIGGER,
        summary="Update one device",
        description="Updates one device to a release now, through a deployment of its own. Refused "
        "with the reason when the device is not accepted, cannot run the release (409) or already "
        "runs it (409).",
        errors=(400, 404, 409, 413, 415),
    ),
)
def update_device(
    device_id: str,
    data: SingleUpdateRequest,
    session: SessionDep,
    caller: Annotated[
        Caller,
        permit(
            Permission.UPDATES_TRIGGER,
            audit=AuditIntent(action="updates.trigger", resource_type="device", resource_param="device_id"),
        ),
    ],
) -> SingleUpdateResult:
    state = service.trigger_single(session=session, caller=caller, device_id=device_id, data=data)
    return SingleUpdateResult(
        deployment_id=state.deployment_id,
        device_id=state.device_id,
        release_id=data.release_id,
        state=state.state,
    )
