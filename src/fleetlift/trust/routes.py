"""Serving TUF metadata and targets to devices (``tuf.ngclient.Updater``)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request, Response

from fleetlift.artifacts import service as artifacts
from fleetlift.artifacts.routes import stream_download
from fleetlift.errors import NotFound
from fleetlift.trust.repository import tenant_repository

router = APIRouter(prefix="/tuf/v1/{tenant_id}", tags=["trust"])

Tenant = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
_JSON = {"application/json": {"schema": {"type": "object"}}}


@router.get(
    "/metadata/{name}.json",
    summary="TUF metadata",
    description="Signed TUF metadata of the tenant's artifacts: `N.root.json`, `timestamp.json`, "
    "`snapshot.json`, `targets.json`. Devices verify it themselves; nothing here is secret.",
    response_class=Response,
    responses={200: {"content": _JSON, "description": "The metadata file."}, 404: {"description": "None."}},
)
async def metadata(
    tenant_id: Tenant,
    name: Annotated[str, Path(pattern=r"^([0-9]{1,9}\.root|timestamp|snapshot|targets)$")],
    request: Request,
) -> Response:
    repository = tenant_repository(request.app.state.settings.data_dir, tenant_id)
    content = await anyio.to_thread.run_sync(repository.metadata_bytes, name)
    if content is None:
        raise NotFound(f"no TUF metadata '{name}.json' for this tenant")
    return Response(content, media_type="application/json", headers={"Cache-Control": "no-cache"})


@router.get(
    "/targets/{artifact_id}/{filename}",
    summary="TUF target",
    description="The artifact bytes the targets metadata describes (the device checks length and "
    "hash against the signed metadata). Honors `Range`.",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The target.",
        },
        404: {"description": "No such target."},
    },
)
async def target(tenant_id: Tenant, artifact_id: str, filename: str, request: Request) -> Response:
    state = request.app.state

    def load() -> artifacts.StoredArtifact:
        with state.sessions() as session:
            stored = artifacts.stored_in_tenant(session=session, tenant_id=tenant_id, artifact_id=artifact_id)
        if stored.artifact.filename != filename:
            raise NotFound("no such target")
        return stored

    stored = await anyio.to_thread.run_sync(load)
    download = await artifacts.download(
        store=state.artifact_store,
        stored=stored,
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
    )
    return stream_download(download)
