"""HTTP routes of enrollment tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Response

from fleetlift.api.deps import AuditIntent, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.enrollment import service
from fleetlift.enrollment.schemas import EnrollmentTokenCreate, EnrollmentTokenCreated, EnrollmentTokenRead

router = APIRouter(prefix="/enrollment-tokens", tags=["devices"])


def _admit(action: str) -> object:
    return permit(
        Permission.DEVICES_ADMIT,
        audit=AuditIntent(action=action, resource_type="enrollment_token", resource_param="token_id"),
    )


@router.post(
    "",
    status_code=201,
    response_model=EnrollmentTokenCreated,
    **operation(
        Permission.DEVICES_ADMIT,
        summary="Create an enrollment token",
        description="A token a batch of devices sends with its first authentication request to be "
        "admitted without a manual accept (with the token's tags). Answered once; only its hash is "
        "stored. Bounded by an expiry and optionally a number of uses.",
        errors=(400, 413, 415),
    ),
)
def create_token(
    data: EnrollmentTokenCreate, session: SessionDep, caller: Annotated[Caller, _admit("enrollment.create")]
) -> EnrollmentTokenCreated:
    row, token = service.create(
        session=session,
        caller=caller,
        name=data.name,
        valid_for=timedelta(hours=data.valid_for_hours),
        max_uses=data.max_uses,
        tags=data.tags,
    )
    return EnrollmentTokenCreated(**EnrollmentTokenRead.model_validate(row).model_dump(), token=token)


@router.get(
    "",
    response_model=list[EnrollmentTokenRead],
    **operation(
        Permission.DEVICES_ADMIT, summary="List enrollment tokens", description="Without the tokens."
    ),
)
def list_tokens(
    session: SessionDep, caller: Annotated[Caller, permit(Permission.DEVICES_ADMIT)]
) -> list[EnrollmentTokenRead]:
    return [
        EnrollmentTokenRead.model_validate(row) for row in service.list_tokens(session=session, caller=caller)
    ]


@router.delete(
    "/{token_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.DEVICES_ADMIT,
        summary="Revoke an enrollment token",
        description="No device enrolls with it after.",
        errors=(404,),
    ),
)
def revoke_token(
    token_id: str, session: SessionDep, caller: Annotated[Caller, _admit("enrollment.revoke")]
) -> Response:
    service.revoke(session=session, caller=caller, token_id=token_id)
    return Response(status_code=204)
