"""HTTP routes of artifacts: streaming upload, range downloads, signed links."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleetlift.api.common import Page
from fleetlift.api.deps import AuditIntent, IfMatch, PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.artifacts import service
from fleetlift.artifacts.rules import ArtifactKind, check_file_name
from fleetlift.artifacts.schemas import ArtifactKindName, ArtifactRead, DownloadLink
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.errors import FleetliftError
from fleetlift.etags import etag_of

router = APIRouter(prefix="/artifacts", tags=["artifacts"])
public = APIRouter(tags=["artifacts"])

Reader = Annotated[Caller, permit(Permission.RELEASES_READ)]
UPLOAD_MEDIA_TYPE = "application/octet-stream"

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole file.", "content": {"application/octet-stream": _BINARY}},
    206: {"description": "The requested byte range.", "content": {"application/octet-stream": _BINARY}},
    416: {"description": "The range starts past the end of the file."},
}


class UnsupportedUpload(FleetliftError):
    status = 415
    title = "Unsupported media type"
    type_slug = "unsupported-media-type"


def _intent(action: str) -> AuditIntent:
    return AuditIntent(action=action, resource_type="artifact", resource_param="artifact_id")


def stream_download(download: service.Download) -> Response:
    """A planned download as an HTTP answer, streamed."""
    if download.body is None:
        return Response(status_code=download.status, headers=download.headers)
    return StreamingResponse(download.body, status_code=download.status, headers=download.headers)


@router.post(
    "",
    status_code=201,
    response_model=ArtifactRead,
    **operation(
        Permission.RELEASES_WRITE,
        summary="Upload an artifact",
        description="Streams the request body (`application/octet-stream`, any size up to the "
        "configured limit) into artifact storage while computing its SHA-256 and size; metadata "
        "goes in the query. With `sha256` the upload is checked and refused (400, nothing kept) "
        "when it differs. Content is stored once per tenant: sending the same name, version and "
        "bytes again answers 200 with the existing artifact; the same name and version with other "
        "bytes is a 409.",
        errors=(400, 409, 413, 415),
        request_body={"required": True, "content": {UPLOAD_MEDIA_TYPE: _BINARY}},
        responses={200: {"description": "The same artifact was uploaded before.", "model": ArtifactRead}},
    ),
)
async def upload_artifact(
    request: Request,
    response: Response,
    caller: Annotated[Caller, permit(Permission.RELEASES_WRITE, audit=_intent("artifacts.upload"))],
    name: Annotated[str, Query(min_length=1, max_length=200, examples=["gateway-firmware"])],
    version: Annotated[str, Query(min_length=1, max_length=100, examples=["2.1.0"])],
    kind: ArtifactKindName = "file",
    filename: Annotated[str | None, Query(max_length=200, examples=["gateway-fw-2.1.0.bin"])] = None,
    device_type: Annotated[list[str] | None, Query(max_length=100)] = None,
    sha256: Annotated[str | None, Query(pattern="^[a-f0-9]{64}$")] = None,
) -> ArtifactRead:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != UPLOAD_MEDIA_TYPE:
        raise UnsupportedUpload(
            f"send the artifact as {UPLOAD_MEDIA_TYPE}, not '{content_type or 'nothing'}'"
        )
    meta = service.UploadMeta(
        name=check_file_name(name, field="query.name"),
        version=version,
        kind=ArtifactKind(kind),
        filename=check_file_name(filename or name, field="query.filename"),
        device_types=tuple(device_type or ()),
        expected_sha256=sha256,
    )
    state = request.app.state
    uploaded = await service.upload(
        sessions=state.sessions,
        store=state.artifact_store,
        caller=caller,
        meta=meta,
        chunks=request.stream(),
        max_bytes=state.settings.artifact_max_bytes,
        trust_root=state.settings.data_dir,
    )
    response.status_code = 201 if uploaded.created else 200
    response.headers["Location"] = f"/api/v1/artifacts/{uploaded.artifact.id}"
    response.headers["ETag"] = etag_of(uploaded.artifact.row_version)
    return ArtifactRead.model_validate(uploaded.artifact)


@router.get(
    "",
    response_model=Page[ArtifactRead],
    **operation(
        Permission.RELEASES_READ,
        summary="List artifacts",
        description="Artifacts newest first; filter by `name` and `kind`.",
        errors=(400,),
    ),
)
def list_artifacts(
    session: SessionDep,
    caller: Reader,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    kind: ArtifactKindName | None = None,
) -> Page[ArtifactRead]:
    result = service.list_artifacts(session=session, caller=caller, name=name, kind=kind, page=page)
    return Page(items=[ArtifactRead.model_validate(a) for a in result.items], next_cursor=result.next_cursor)


@router.get(
    "/{artifact_id}",
    response_model=ArtifactRead,
    **operation(
        Permission.RELEASES_READ, summary="Get an artifact", description="Its metadata.", errors=(404,)
    ),
)
def get_artifact(artifact_id: str, session: SessionDep, response: Response, caller: Reader) -> ArtifactRead:
    artifact = service.get(session=session, caller=caller, artifact_id=artifact_id)
    response.headers["ETag"] = etag_of(artifact.row_version)
    return ArtifactRead.model_validate(artifact)


@router.delete(
    "/{artifact_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.RELEASES_WRITE,
        summary="Delete an artifact",
        description="Deletes an artifact no release uses (409 names the releases otherwise). Its "
        "bytes are removed when no other artifact shares them. Honors `If-Match`.",
        errors=(404, 409, 412),
    ),
)
async def delete_artifact(
    artifact_id: str,
    request: Request,
    caller: Annotated[Caller, permit(Permission.RELEASES_WRITE, audit=_intent("artifacts.delete"))],
    if_match: IfMatch = None,
) -> Response:
    state = request.app.state
    await service.delete(
        sessions=state.sessions,
        store=state.artifact_store,
        caller=caller,
        artifact_id=artifact_id,
        if_match=if_match,
    )
    return Response(status_code=204)


@router.get(
    "/{artifact_id}/download",
    response_class=Response,
    **operation(
        Permission.RELEASES_READ,
        summary="Download an artifact",
        description="Streams the file. Honors `Range` (one range, answered 206 with `Content-Range`) "
        'and `If-Range` with the `ETag` (`"sha256:<hex>"`), so an interrupted download resumes.',
        errors=(404,),
        responses=_DOWNLOAD_RESPONSES,
    ),
)
async def download_artifact(artifact_id: str, request: Request, caller: Reader) -> Response:
    state = request.app.state
    stored = await _load(request, caller, artifact_id)
    download = await service.download(
        store=state.artifact_store,
        stored=stored,
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
        accel_redirect_prefix=state.settings.accel_redirect_prefix,
    )
    return stream_download(download)


async def _load(request: Request, caller: Caller, artifact_id: str) -> service.StoredArtifact:
    def load() -> service.StoredArtifact:
        with request.app.state.sessions() as session:
            return service.get_stored(session=session, caller=caller, artifact_id=artifact_id)

    return await anyio.to_thread.run_sync(load)


@router.post(
    "/{artifact_id}/link",
    response_model=DownloadLink,
    **operation(
        Permission.RELEASES_READ,
        summary="Make a short-lived download link",
        description="A URL that downloads the artifact without a bearer token until it expires: "
        "a SAS link straight to blob storage when the store can sign one, otherwise a fleetlift "
        "link carrying an HMAC over the artifact and the expiry.",
        errors=(404,),
    ),
)
async def make_link(artifact_id: str, request: Request, caller: Reader) -> DownloadLink:
    state = request.app.state
    stored = await _load(request, caller, artifact_id)
    artifact = stored.artifact
    url, expires_at = service.download_link(
        store=state.artifact_store,
        stored=stored,
        secret=state.link_secret,
        ttl=timedelta(seconds=state.settings.download_link_ttl_seconds),
        now=utcnow(),
    )
    return DownloadLink(url=url, expires_at=expires_at, size=artifact.size, sha256=artifact.sha256)


@public.get(
    "/downloads/v1/{tenant_id}/{artifact_id}",
    response_class=Response,
    summary="Download through a signed link",
    description="No bearer token: the `expires` and `signature` of a link from "
    "`POST /api/v1/artifacts/{id}/link` authorise it. Honors `Range` and `If-Range`.",
    responses={**_DOWNLOAD_RESPONSES, 403: {"description": "The link is invalid or has expired."}},
)
async def download_by_link(
    tenant_id: str,
    artifact_id: str,
    request: Request,
    expires: Annotated[int, Query(ge=0)],
    signature: Annotated[str, Query(max_length=128)],
) -> Response:
    state = request.app.state

    def load() -> service.StoredArtifact:
        with state.sessions() as session:
            return service.stored_for_link(
                session=session,
                secret=state.link_secret,
                tenant_id=tenant_id,
                artifact_id=artifact_id,
                expires=expires,
                signature=signature,
                now=int(time.time()),
            )

    stored = await anyio.to_thread.run_sync(load)
    download = await service.download(
        store=state.artifact_store,
        stored=stored,
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
        accel_redirect_prefix=state.settings.accel_redirect_prefix,
    )
    return stream_download(download)
