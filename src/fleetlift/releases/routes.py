"""HTTP routes of the release slice."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from fleetlift.api.common import Page
from fleetlift.api.deps import AuditIntent, IfMatch, PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.etags import etag_of
from fleetlift.releases import service
from fleetlift.releases.schemas import OverrideRequest, ReleaseCreate, ReleaseRead, ReleaseUpdate

router = APIRouter(prefix="/releases", tags=["releases"])


def _writer(action: str) -> object:
    return permit(
        Permission.RELEASES_WRITE,
        audit=AuditIntent(action=action, resource_type="release", resource_param="release_id"),
    )


@router.get(
    "",
    response_model=Page[ReleaseRead],
    **operation(
        Permission.RELEASES_READ,
        summary="List releases",
        description="Releases newest first; filter by `name` or by a `device_type` they fit.",
        errors=(400,),
    ),
)
def list_releases(
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.RELEASES_READ)],
    page: PageDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    device_type: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[ReleaseRead]:
    result = service.list_releases(
        session=session, caller=caller, name=name, device_type=device_type, page=page
    )
    return Page(items=[ReleaseRead.model_validate(r) for r in result.items], next_cursor=result.next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=ReleaseRead,
    **operation(
        Permission.RELEASES_WRITE,
        summary="Publish a release",
        description="A release is a named, versioned set of payloads (containers with their "
        "settings, or file artifacts) and the device types and architectures it fits. A name and "
        "version exist once per tenant (409). Each container image is pinned to the digest its tag "
        "names now (devices only ever receive digests) and checked for a platform per "
        "architecture; file payloads take their hash from their artifact. The verdict is in "
        "`validation`: a release that failed cannot be deployed (409) until it passes "
        "(`POST /releases/{id}/validate`) or an admin overrides it.",
        errors=(400, 409, 413, 415),
    ),
)
async def create_release(
    data: ReleaseCreate,
    request: Request,
    response: Response,
    caller: Annotated[Caller, _writer("releases.create")],
) -> ReleaseRead:
    state = request.app.state
    release = await service.create(
        sessions=state.sessions, image_checks=state.image_checks, caller=caller, data=data
    )
    response.headers["ETag"] = etag_of(release.row_version)
    response.headers["Location"] = f"/api/v1/releases/{release.id}"
    return ReleaseRead.model_validate(release)


@router.get(
    "/{release_id}",
    response_model=ReleaseRead,
    **operation(Permission.RELEASES_READ, summary="Get a release", description="One release.", errors=(404,)),
)
def get_release(
    release_id: str,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.RELEASES_READ)],
) -> ReleaseRead:
    release = service.get(session=session, caller=caller, release_id=release_id)
    response.headers["ETag"] = etag_of(release.row_version)
    return ReleaseRead.model_validate(release)


@router.put(
    "/{release_id}",
    response_model=ReleaseRead,
    **operation(
        Permission.RELEASES_WRITE,
        summary="Update a release's compatibility and notes",
        description="Replaces the compatible device types, architectures and notes. What a release "
        "installs never changes: publish a new version instead. Honors `If-Match`.",
        errors=(400, 404, 412, 413, 415),
    ),
)
def update_release(
    release_id: str,
    data: ReleaseUpdate,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, _writer("releases.update")],
    if_match: IfMatch = None,
) -> ReleaseRead:
    release = service.update(
        session=session, caller=caller, release_id=release_id, data=data, if_match=if_match
    )
    response.headers["ETag"] = etag_of(release.row_version)
    return ReleaseRead.model_validate(release)


@router.delete(
    "/{release_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.RELEASES_WRITE,
        summary="Delete a release",
        description="Deletes a release no deployment uses (409 otherwise). Honors `If-Match`.",
        errors=(404, 409, 412),
    ),
)
def delete_release(
    release_id: str,
    session: SessionDep,
    caller: Annotated[Caller, _writer("releases.delete")],
    if_match: IfMatch = None,
) -> Response:
    service.delete(session=session, caller=caller, release_id=release_id, if_match=if_match)
    return Response(status_code=204)


@router.post(
    "/{release_id}/validate",
    response_model=ReleaseRead,
    **operation(
        Permission.RELEASES_WRITE,
        summary="Validate a release again",
        description="Runs the checks again (a registry that was unreachable, a platform pushed "
        "since) and replaces the verdict, override included.",
        errors=(404,),
    ),
)
async def validate_release(
    release_id: str,
    request: Request,
    response: Response,
    caller: Annotated[Caller, _writer("releases.validate")],
) -> ReleaseRead:
    state = request.app.state
    release = await service.revalidate(
        sessions=state.sessions, image_checks=state.image_checks, caller=caller, release_id=release_id
    )
    response.headers["ETag"] = etag_of(release.row_version)
    return ReleaseRead.model_validate(release)


@router.post(
    "/{release_id}/override",
    response_model=ReleaseRead,
    **operation(
        Permission.RELEASES_OVERRIDE,
        summary="Override a failed validation",
        description="Lets a release that failed validation be deployed, recording who decided it and "
        "why (in the release and the audit log). 409 when there is nothing to override.",
        errors=(400, 404, 409, 412, 413, 415),
    ),
)
def override_release(
    release_id: str,
    data: OverrideRequest,
    session: SessionDep,
    response: Response,
    caller: Annotated[
        Caller,
        permit(
            Permission.RELEASES_OVERRIDE,
            audit=AuditIntent(
                action="releases.override", resource_type="release", resource_param="release_id"
            ),
        ),
    ],
    if_match: IfMatch = None,
) -> ReleaseRead:
    release = service.override(
        session=session, caller=caller, release_id=release_id, reason=data.reason, if_match=if_match
    )
    response.headers["ETag"] = etag_of(release.row_version)
    return ReleaseRead.model_validate(release)
