"""Use cases of releases."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from fleetlift.artifacts import repository as artifacts
from fleetlift.artifacts.models import ReleaseArtifact
from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.errors import Conflict, FieldError, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.ids import new_id
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.releases import repository
from fleetlift.releases.models import Release
from fleetlift.releases.schemas import ReleaseCreate, ReleaseUpdate


def _resolve_file_payloads(session: Session, caller: Caller, payloads: list[dict[str, Any]]) -> list[str]:
    """File payloads must name uploaded artifacts; their filename, size and hash come from the
    artifact (a hash given in the payload must agree). Returns the artifact IDs used."""
    wanted = [p["artifact_id"] for p in payloads if p["type"] == "file"]
    found = artifacts.get_many(session, tenant_id=caller.tenant_id, artifact_ids=wanted)
    for index, payload in enumerate(payloads):
        if payload["type"] != "file":
            continue
        where = f"body.payloads.{index}"
        artifact = found.get(payload["artifact_id"])
        if artifact is None:
            raise InvalidInput(
                f"no artifact '{payload['artifact_id']}' in this tenant; upload it first",
                errors=[FieldError(f"{where}.artifact_id", "unknown artifact")],
            )
        if payload.get("sha256") not in (None, artifact.sha256):
            raise InvalidInput(
                f"payload {index} says sha256 {payload['sha256']} "
                f"but artifact '{artifact.id}' has {artifact.sha256}",
                errors=[FieldError(f"{where}.sha256", "does not match the artifact")],
            )
        payload.update(filename=artifact.filename, sha256=artifact.sha256, size=artifact.size)
    return list(dict.fromkeys(wanted))


def get(*, session: Session, caller: Caller, release_id: str) -> Release:
    """One release of the caller's tenant."""
    release = repository.get(session, tenant_id=caller.tenant_id, release_id=release_id)
    if release is None:
        raise NotFound(f"no release '{release_id}' in this tenant")
    return release


def list_releases(
    *, session: Session, caller: Caller, name: str | None, device_type: str | None, page: PageRequest
) -> Page[Release]:
    """Releases, newest first, optionally of one name or fitting one device type."""
    rows = repository.list_releases(
        session, tenant_id=caller.tenant_id, name=name, device_type=device_type, page=page
    )
    return page_of(rows, page, lambda release: [release.id])


def create(*, session: Session, caller: Caller, data: ReleaseCreate) -> Release:
    """Publish a release; a name and version pair exists once per tenant."""
    if repository.find_by_name_version(
        session, tenant_id=caller.tenant_id, name=data.name, version=data.version
    ):
        raise Conflict(f"release '{data.name}' version '{data.version}' already exists")
    now = utcnow()
    payloads: list[dict[str, Any]] = [payload.model_dump(mode="json") for payload in data.payloads]
    artifact_ids = _resolve_file_payloads(session, caller, payloads)
    release = Release(
        tenant_id=caller.tenant_id,
        id=new_id("rel_"),
        name=data.name,
        version=data.version,
        kind=data.kind,
        payloads=payloads,
        device_types=list(dict.fromkeys(data.device_types)),
        architectures=list(dict.fromkeys(data.architectures)),
        notes=data.notes,
        created_by=caller.subject,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, release)
    session.flush()
    for artifact_id in artifact_ids:
        artifacts.add(
            session,
            ReleaseArtifact(tenant_id=caller.tenant_id, release_id=release.id, artifact_id=artifact_id),
        )
    audit.record(
        session,
        caller=caller,
        action="releases.create",
        resource_type="release",
        resource_id=release.id,
        status_code=201,
        details={"name": release.name, "version": release.version},
    )
    session.commit()
    return release


def update(
    *, session: Session, caller: Caller, release_id: str, data: ReleaseUpdate, if_match: str | None
) -> Release:
    """Replace a release's compatibility lists and notes."""
    release = get(session=session, caller=caller, release_id=release_id)
    check_if_match(if_match, release.row_version)
    release.device_types = list(dict.fromkeys(data.device_types))
    release.architectures = list(dict.fromkeys(data.architectures))
    release.notes = data.notes
    release.updated_at = utcnow()
    audit.record(
        session, caller=caller, action="releases.update", resource_type="release", resource_id=release.id
    )
    session.commit()
    return release


def delete(*, session: Session, caller: Caller, release_id: str, if_match: str | None) -> None:
    """Delete a release that no deployment uses."""
    release = get(session=session, caller=caller, release_id=release_id)
    check_if_match(if_match, release.row_version)
    users = repository.count_deployments_using(session, tenant_id=caller.tenant_id, release_id=release_id)
    if users:
        raise Conflict(f"release '{release_id}' is used by {users} deployment(s) and cannot be deleted")
    repository.delete(session, release)
    audit.record(
        session,
        caller=caller,
        action="releases.delete",
        resource_type="release",
        resource_id=release_id,
        status_code=204,
    )
    session.commit()
