"""The built-in device protocol, under /api/device/v1."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from fleetlift.api.common import StrictModel, problem_responses
from fleetlift.api.deps import SessionDep
from fleetlift.device_api import service
from fleetlift.devices.models import Device
from fleetlift.errors import Unauthenticated

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
    return service.device_of_token(
        session=session, tokens=request.app.state.device_tokens, token=credentials.credentials
    )


CurrentDevice = Annotated[Device, Depends(current_device)]


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
    admitted = service.authenticate(
        session=session,
        tokens=request.app.state.device_tokens,
        request=service.AuthRequest(
            identity=data.identity,
            public_key=data.public_key,
            device_type=data.device_type,
            architecture=data.architecture,
            tenant_id=data.tenant or request.app.state.settings.default_tenant,
        ),
        body=body,
        signature=signature,
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
