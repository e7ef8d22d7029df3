"""HTTP routes of registry credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from fleetlift.api.deps import AuditIntent, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.registries import service
from fleetlift.registries.models import RegistryCredential
from fleetlift.registries.schemas import RegistryCredentialRead, RegistryCredentialWrite

router = APIRouter(prefix="/registries", tags=["registries"])

Host = Annotated[
    str, Path(max_length=255, pattern=r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$", examples=["registry.example.com"])
]


def _read(row: RegistryCredential) -> RegistryCredentialRead:
    return RegistryCredentialRead(
        registry=row.host, username=row.username, updated_by=row.updated_by, updated_at=row.updated_at
    )


def _admin(action: str) -> object:
    return permit(
        Permission.KEYS_MANAGE,
        audit=AuditIntent(action=action, resource_type="registry", resource_param="registry"),
    )


@router.get(
    "",
    response_model=list[RegistryCredentialRead],
    **operation(
        Permission.KEYS_MANAGE,
        summary="List registry credentials",
        description="The registries fleetlift has credentials for, with their user names. Passwords "
        "are stored sealed (AES-256-GCM) and never answered.",
    ),
)
def list_credentials(
    session: SessionDep, caller: Annotated[Caller, permit(Permission.KEYS_MANAGE)]
) -> list[RegistryCredentialRead]:
    return [_read(row) for row in service.list_credentials(session=session, caller=caller)]


@router.put(
    "/{registry}/credentials",
    response_model=RegistryCredentialRead,
    **operation(
        Permission.KEYS_MANAGE,
        summary="Store a registry's credentials",
        description="Stores or replaces the user name and password (or token) fleetlift uses to read "
        "images from a private registry when it pins and checks releases. The password is sealed "
        "before it is stored and never appears in answers or logs.",
        errors=(400, 413, 415),
    ),
)
def put_credentials(
    registry: Host,
    data: RegistryCredentialWrite,
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, _admin("registries.credentials.put")],
) -> RegistryCredentialRead:
    row = service.put(
        session=session, box=request.app.state.secrets, caller=caller, registry=registry, data=data
    )
    return _read(row)


@router.delete(
    "/{registry}/credentials",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.KEYS_MANAGE,
        summary="Forget a registry's credentials",
        description="Removes the stored credentials of a registry.",
        errors=(404,),
    ),
)
def delete_credentials(
    registry: Host, session: SessionDep, caller: Annotated[Caller, _admin("registries.credentials.delete")]
) -> Response:
    service.delete(session=session, caller=caller, registry=registry)
    return Response(status_code=204)
