"""The built-in device protocol, under /api/device/v1."""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from fleetlift.api.common import StrictModel, problem_responses
from fleetlift.api.deps import SessionDep
from fleetlift.artifacts.rules import link_signature
from fleetlift.deployments.rules import TERMINAL, DeviceUpdateState
from fleetlift.device_api import service
from fleetlift.device_api.poll import PollAnswer, ReleaseView
from fleetlift.device_api.tokens import DeviceClaims
from fleetlift.devices.models import Device
from fleetlift.errors import Unauthenticated
from fleetlift.notifications import service as notifications
from fleetlift.notifications.schemas import Inventory, LogUpload, NotificationCreate, NotificationRead

router = APIRouter(prefix="/api/device/v1", tags=["device protocol"])

device_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="deviceToken",
    bearerFormat="JWT",
    description="A device token from `POST /api/device/v1/authentication`; opens only the device "
    "protocol, and only for its own device.",
)


class AuthRequestBody(StrictModel):
    """A device's authentication request, signed with its private key (header X-Fleetlift-Signature:
    base64 of the signature over the exact body bytes)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "identity": {"mac": "dc:a6:32:12:34:56", "serial": "GW1-000123"},
                    "public_key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA...\n"
                    "-----END PUBLIC KEY-----\n",
                    "device_type": "gateway-x1",
                    "architecture": "arm64",
                }
            ]
        },
    )

    identity: dict[str, Any] = Field(min_length=1, max_length=20)
    public_key: str = Field(min_length=1, max_length=4096)
    device_type: str = Field(min_length=1, max_length=100)
    architecture: str = Field(min_length=1, max_length=50)
    tenant: str | None = Field(default=None, max_length=64)
    enrollment_token: str | None = Field(
        default=None, max_length=200, description="Admits a new device at once."
    )


class DeviceTokenAnswer(BaseModel):
    device_id: str
    token: str
    expires_at: datetime


class DeviceIdentity(BaseModel):
    device_id: str
    status: str
    device_type: str
    architecture: str


def current_device(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(device_bearer)],
) -> Device:
    """The device behind the device token; 401 for anything else (management tokens included)."""
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("a device token is required")
    device = service.device_of_token(
        session=session, tokens=request.app.state.device_tokens, token=credentials.credentials
    )
    # End the read transaction: the connection goes back to the pool while this request waits
    # for a worker thread to run its endpoint. Holding it there let a burst of device requests
    # take every connection while the threads that would finish them waited for one (a 30 s
    # stall, docs/benchmarks.md). The device stays loaded (sessions do not expire on commit).
    session.commit()
    return device


CurrentDevice = Annotated[Device, Depends(current_device)]


async def polling_device(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(device_bearer)],
) -> DeviceClaims:
    """The claims of a device token, for the poll: its admission is checked by the poll's own query."""
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("a device token is required")
    claims: DeviceClaims = await request.app.state.device_poller.authenticate(credentials.credentials)
    return claims


PollingDevice = Annotated[DeviceClaims, Depends(polling_device)]


@router.post(
    "/authentication",
    response_model=DeviceTokenAnswer,
    summary="Authenticate a device",
    description="The device sends its identity attributes and public key, signed with its private "
    "key. A new device is recorded as `pending` (401 until an operator accepts it or it was "
    "preauthorized); an accepted device gets a short-lived device token. Renew by sending the "
    "request again.",
    responses=problem_responses(400, 401, 413, 415),
)
async def authenticate(
    data: AuthRequestBody,
    request: Request,
    session: SessionDep,
    signature: Annotated[str | None, Header(alias="X-Fleetlift-Signature", max_length=2048)] = None,
) -> DeviceTokenAnswer:
    body = await request.body()
    # Signature checks and database writes run on a worker thread: on the event loop they would
    # stall every other request, and a burst of devices would wait on the pool there forever.
    admitted = await anyio.to_thread.run_sync(
        partial(
            service.authenticate,
            session=session,
            tokens=request.app.state.device_tokens,
            request=service.AuthRequest(
                identity=data.identity,
                public_key=data.public_key,
                device_type=data.device_type,
                architecture=data.architecture,
                tenant_id=data.tenant or request.app.state.settings.default_tenant,
                enrollment_token=data.enrollment_token,
            ),
            body=body,
            signature=signature,
        )
    )
    return DeviceTokenAnswer(
        device_id=admitted.device_id, token=admitted.token, expires_at=admitted.expires_at
    )


@router.get(
    "/identity",
    response_model=DeviceIdentity,
    summary="Who this device is",
    description="The device's own ID and admission status, as the server knows them.",
    responses=problem_responses(401),
)
def identity(device: CurrentDevice) -> DeviceIdentity:
    return DeviceIdentity(
        device_id=device.id,
        status=device.status,
        device_type=device.device_type,
        architecture=device.architecture,
    )


class FilePayloadInstructions(BaseModel):
    type: str = "file"
    artifact_id: str
    filename: str
    size: int
    sha256: str
    url: str = Field(description="A short-lived signed link; resumable with Range.")
    tuf_target: str = Field(description="The TUF target path to verify before installing.")
    installer: Literal["package", "ab-slot", "script"]
    target: str = Field(description="The package name or slot set it installs into.")


class UpdateInstructions(BaseModel):
    """What the device should install now."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "state": "notified",
                    "release": {
                        "id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                        "name": "gateway-firmware",
                        "version": "1.4.0",
                        "kind": "base",
                    },
                    "containers": [],
                    "files": [],
                    "poll_interval_seconds": 60,
                    "forced": False,
                }
            ]
        }
    )

    deployment_id: str
    state: str
    release: dict[str, str]
    containers: list[dict[str, Any]] = Field(description="Container payloads, images pinned to digests.")
    files: list[FilePayloadInstructions]
    poll_interval_seconds: int
    forced: bool = Field(
        default=False,
        description="The rollout's mode: true installs as soon as possible; false (soft) lets the "
        "device and its hosting application defer.",
    )


class StatusReport(StrictModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "downloading", "detail": "42%"}]}
    )

    status: Literal[
        "downloading",
        "downloaded",
        "installing",
        "rebooting",
        "verifying",
        "succeeded",
        "failed",
        "rolled_back",
        "already_installed",
    ]
    detail: str | None = Field(default=None, max_length=2000)


def _instructions(state: Any, tenant_id: str, found: PollAnswer, release: ReleaseView) -> UpdateInstructions:
    expires = int(time.time()) + state.settings.download_link_ttl_seconds
    files = []
    containers = []
    for payload in release.payloads:
        if payload["type"] != "file":
            containers.append(payload)
            continue
        resource = f"{tenant_id}/{payload['artifact_id']}"
        signature = link_signature(state.link_secret, resource, expires)
        files.append(
            FilePayloadInstructions(
                artifact_id=payload["artifact_id"],
                filename=payload["filename"],
                size=payload["size"],
                sha256=payload["sha256"],
                url=f"/downloads/v1/{resource}?expires={expires}&signature={signature}",
                tuf_target=f"{payload['artifact_id']}/{payload['filename']}",
                # releases made before installers were named default the same way
                installer=payload.get("installer") or ("ab-slot" if release.kind == "base" else "package"),
                target=payload.get("target") or release.name,
            )
        )
    return UpdateInstructions(
        deployment_id=found.deployment_id,
        state=found.state,
        release={"id": release.id, "name": release.name, "version": release.version, "kind": release.kind},
        containers=containers,
        files=files,
        poll_interval_seconds=state.settings.device_poll_interval_seconds,
        forced=found.forced,
    )


@router.get(
    "/deployments/next",
    response_model=UpdateInstructions,
    summary="Poll for the next update",
    description="The update this device should work on now (the highest-priority active deployment "
    "that targets it, newest among equals), with signed download links, sizes, SHA-256 and TUF "
    "target paths; 204 when there is none. `If-None-Match` with the last `ETag` answers 304. "
    "`wait` (seconds, up to 60) holds the request until an update appears. "
    "`X-Fleetlift-Poll-Interval` suggests when to ask again.",
    responses={
        **problem_responses(401),
        204: {"description": "No update."},
        304: {"description": "Unchanged."},
    },
)
async def next_update(
    request: Request,
    device: PollingDevice,
    wait: Annotated[int, Query(ge=0, le=60)] = 0,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match", max_length=200)] = None,
) -> Response:
    state = request.app.state
    found = await state.device_poller.next_update(device, wait=wait, if_none_match=if_none_match)
    return poll_response(state, device.tenant_id, found)


def poll_response(state: Any, tenant_id: str, found: PollAnswer | None) -> Response:
    """The answer to a poll: 204, 304 (the device's If-None-Match named it) or the instructions.
    Shared by the route and the fast path (``fastpath.PollFastPath``)."""
    interval = {"X-Fleetlift-Poll-Interval": str(state.settings.device_poll_interval_seconds)}
    if found is None:
        return Response(status_code=204, headers=interval)
    headers = {**interval, "ETag": found.etag}
    if found.release is None:
        return Response(status_code=304, headers=headers)
    body = _instructions(state, tenant_id, found, found.release).model_dump_json()
    return Response(body, media_type="application/json", headers=headers)


@router.put(
    "/deployments/{deployment_id}/status",
    status_code=204,
    response_class=Response,
    summary="Report progress",
    description="The device's progress through an update. Duplicate and late reports change "
    "nothing; a report that could never follow the current state is a 409, and so is a report on "
    "a deployment whose rollout has not released this device yet (its wave is waiting).",
    responses=problem_responses(400, 401, 404, 409, 413, 415),
)
def report_status(
    deployment_id: str, data: StatusReport, request: Request, session: SessionDep, device: CurrentDevice
) -> Response:
    state = service.report_status(
        session=session,
        device=device,
        deployment_id=deployment_id,
        state=DeviceUpdateState(data.status),
        detail=data.detail,
    )
    if state in TERMINAL:
        # An outcome frees a concurrency slot and may complete a wave: the reconciler looks now.
        reconciler = getattr(request.app.state, "reconciler", None)
        if reconciler is not None:
            reconciler.wake()
    return Response(status_code=204)


@router.post(
    "/notifications",
    status_code=201,
    response_model=NotificationRead,
    summary="Send a notification",
    description="Info, warning or critical; operators see them per device and fleet-wide, and a "
    "critical one flags the device.",
    responses=problem_responses(400, 401, 413, 415),
)
def send_notification(
    data: NotificationCreate, session: SessionDep, device: CurrentDevice
) -> NotificationRead:
    row = notifications.notify(session=session, device=device, level=data.level, message=data.message)
    return NotificationRead.model_validate(row)


@router.put(
    "/deployments/{deployment_id}/log",
    status_code=204,
    response_class=Response,
    summary="Upload an update log",
    description="The device's log of one of its deployments (the last upload is kept); operators read "
    "it through the management API.",
    responses=problem_responses(400, 401, 404, 413, 415),
)
def upload_log(deployment_id: str, data: LogUpload, session: SessionDep, device: CurrentDevice) -> Response:
    notifications.upload_log(session=session, device=device, deployment_id=deployment_id, content=data.log)
    return Response(status_code=204)


@router.patch(
    "/inventory",
    response_model=dict[str, Any],
    summary="Report inventory",
    description="Merged into the device's reported properties (addressable in target conditions as "
    "`properties.reported.<key>`); a key sent as null is removed.",
    responses=problem_responses(400, 401, 413, 415),
)
def report_inventory(data: Inventory, session: SessionDep, device: CurrentDevice) -> dict[str, Any]:
    return notifications.merge_inventory(session=session, device=device, inventory=data.values())
