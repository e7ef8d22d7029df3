"""Use cases of artifacts: streaming upload with hashing and dedup, downloads with ranges and
signed links, deletion that never orphans a release."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.artifacts import repository, rules
from fleetlift.artifacts.models import Artifact, Blob
from fleetlift.artifacts.rules import ArtifactKind, ByteRange
from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import transaction, utcnow
from fleetlift.errors import Conflict, FieldError, FleetliftError, Forbidden, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.ids import new_id
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.ports import ArtifactStore
from fleetlift.trust.repository import tenant_repository

T = TypeVar("T")


class UploadTooLarge(FleetliftError):
    status = 413
    title = "Request body too large"
    type_slug = "request-body-too-large"


@dataclass(frozen=True)
class UploadMeta:
    name: str
    version: str
    kind: ArtifactKind
    filename: str
    device_types: tuple[str, ...]
    expected_sha256: str | None


@dataclass(frozen=True)
class Uploaded:
    artifact: Artifact
    created: bool  # False when the same name, version and content were uploaded before


async def _in_thread(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


def _record(
    sessions: sessionmaker[Session], caller: Caller, meta: UploadMeta, sha256: str, size: int, key: str
) -> tuple[Artifact, bool, bool]:
    """Store the metadata; returns (artifact, created, whether the new blob is a duplicate)."""
    with transaction(sessions) as session:
        existing = repository.find_by_name_version(
            session, tenant_id=caller.tenant_id, name=meta.name, version=meta.version
        )
        if existing is not None:
            if existing.sha256 == sha256:
                return existing, False, True
            raise Conflict(f"artifact '{meta.name}' version '{meta.version}' exists with other content")
        now = utcnow()
        blob = repository.get_blob(session, tenant_id=caller.tenant_id, sha256=sha256)
        duplicate = blob is not None
        if blob is None:
            repository.add(
                session,
                Blob(tenant_id=caller.tenant_id, sha256=sha256, size=size, storage_key=key, created_at=now),
            )
            session.flush()
        artifact = Artifact(
            tenant_id=caller.tenant_id,
            id=new_id("art_"),
            name=meta.name,
            version=meta.version,
            kind=meta.kind.value,
            filename=meta.filename,
            device_types=list(dict.fromkeys(meta.device_types)),
            sha256=sha256,
            size=size,
            uploaded_by=caller.subject,
            created_at=now,
        )
        repository.add(session, artifact)
        audit.record(
            session,
            caller=caller,
            action="artifacts.upload",
            resource_type="artifact",
            resource_id=artifact.id,
            status_code=201,
            details={"name": meta.name, "version": meta.version, "sha256": sha256, "size": size},
        )
        return artifact, True, duplicate


async def upload(
    *,
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    caller: Caller,
    meta: UploadMeta,
    chunks: AsyncIterator[bytes],
    max_bytes: int,
    trust_root: Path | None = None,
) -> Uploaded:
    """Stream an upload into the store while hashing it; check the expected hash; keep one copy
    of each distinct content. A failed upload leaves nothing behind."""
    key = f"{caller.tenant_id}/{new_id('blob_')}"
    writer = await store.writer(key)
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"the artifact exceeds {max_bytes} bytes")
            digest.update(chunk)
            await writer.write(chunk)
        if size == 0:
            raise InvalidInput("the upload is empty", errors=[FieldError("body", "no bytes received")])
        sha256 = digest.hexdigest()
        if meta.expected_sha256 is not None and meta.expected_sha256 != sha256:
            raise InvalidInput(
                f"the upload's SHA-256 is {sha256}, not the expected {meta.expected_sha256}: it was "
                "corrupted on the way or the wrong file was sent; nothing was stored",
                errors=[FieldError("query.sha256", "does not match the uploaded bytes")],
            )
    except BaseException:
        await writer.abort()
        raise
    await writer.commit()
    try:
        artifact, created, duplicate = await _in_thread(
            partial(_record, sessions, caller, meta, sha256, size, key)
        )
    except (FleetliftError, IntegrityError):
        await store.delete(key)
        raise
    if duplicate:
        await store.delete(key)  # the content was stored already: keep one copy
    if created and trust_root is not None:
        # Signed TUF metadata for the new target, so devices can verify what they download.
        repository_of_tenant = tenant_repository(trust_root, caller.tenant_id)
        await _in_thread(
            partial(repository_of_tenant.add_target, target_path(artifact), length=size, sha256=sha256)
        )
    return Uploaded(artifact, created)


def target_path(artifact: Artifact) -> str:
    """The artifact's path in the tenant's TUF targets."""
    return f"{artifact.id}/{artifact.filename}"


def get(*, session: Session, caller: Caller, artifact_id: str) -> Artifact:
    """One artifact of the caller's tenant."""
    artifact = repository.get(session, tenant_id=caller.tenant_id, artifact_id=artifact_id)
    if artifact is None:
        raise NotFound(f"no artifact '{artifact_id}' in this tenant")
    return artifact


def list_artifacts(
    *, session: Session, caller: Caller, name: str | None, kind: str | None, page: PageRequest
) -> Page[Artifact]:
    """Artifacts newest first."""
    rows = repository.list_artifacts(session, tenant_id=caller.tenant_id, name=name, kind=kind, page=page)
    return page_of(rows, page, lambda artifact: [artifact.id])


def _delete_rows(
    sessions: sessionmaker[Session], caller: Caller, artifact_id: str, if_match: str | None
) -> str | None:
    with transaction(sessions) as session:
        artifact = get(session=session, caller=caller, artifact_id=artifact_id)
        check_if_match(if_match, artifact.row_version)
        users = repository.releases_using(session, tenant_id=caller.tenant_id, artifact_id=artifact_id)
        if users:
            raise Conflict(
                f"artifact '{artifact_id}' is used by release(s) {', '.join(users)} and cannot be deleted",
                extra={"releases": list(users)},
            )
        sha256 = artifact.sha256
        repository.delete(session, artifact)
        session.flush()
        orphan_key = None
        if repository.count_artifacts_of_blob(session, tenant_id=caller.tenant_id, sha256=sha256) == 0:
            blob = repository.get_blob(session, tenant_id=caller.tenant_id, sha256=sha256)
            if blob is not None:
                orphan_key = blob.storage_key
                repository.delete(session, blob)
        audit.record(
            session,
            caller=caller,
            action="artifacts.delete",
            resource_type="artifact",
            resource_id=artifact_id,
            status_code=204,
        )
        return orphan_key


async def delete(
    *,
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    caller: Caller,
    artifact_id: str,
    if_match: str | None,
) -> None:
    """Delete an artifact no release uses; its bytes go when no other artifact shares them."""
    orphan_key = await _in_thread(partial(_delete_rows, sessions, caller, artifact_id, if_match))
    if orphan_key is not None:
        await store.delete(orphan_key)


@dataclass(frozen=True)
class Download:
    """What to answer a download request with."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes] | None


def etag_of(artifact: Artifact) -> str:
    """Content-addressed: the same bytes always have the same ETag."""
    return f'"sha256:{artifact.sha256}"'


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact with the key of its bytes in the store."""

    artifact: Artifact
    storage_key: str


def get_stored(*, session: Session, caller: Caller, artifact_id: str) -> StoredArtifact:
    """An artifact of the caller's tenant, ready to download."""
    return stored_in_tenant(session=session, tenant_id=caller.tenant_id, artifact_id=artifact_id)


def stored_in_tenant(*, session: Session, tenant_id: str, artifact_id: str) -> StoredArtifact:
    """An artifact of a tenant, ready to download."""
    found = repository.get_with_storage_key(session, tenant_id=tenant_id, artifact_id=artifact_id)
    if found is None:
        raise NotFound(f"no artifact '{artifact_id}' in this tenant")
    return StoredArtifact(*found)


async def download(
    *,
    store: ArtifactStore,
    stored: StoredArtifact,
    range_header: str | None,
    if_range: str | None,
    accel_redirect_prefix: str | None = None,
) -> Download:
    """The full file, or the one byte range asked for (honouring ``If-Range``), streamed; or,
    behind nginx, an ``X-Accel-Redirect`` that lets nginx send the stored file itself."""
    artifact, key = stored.artifact, stored.storage_key
    etag = etag_of(artifact)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{artifact.filename}"',
        "Digest": f"sha-256={_b64_hex(artifact.sha256)}",
    }
    if accel_redirect_prefix is not None and store.name == "filesystem":
        # nginx answers Range and If-Range for the internal location itself.
        return Download(
            200, {**headers, "X-Accel-Redirect": accel_redirect_prefix.rstrip("/") + "/" + key}, None
        )
    wanted: ByteRange | None = None
    if if_range is None or if_range.strip() == etag:
        try:
            wanted = rules.parse_range(range_header, artifact.size)
        except rules.RangeNotSatisfiable:
            return Download(416, {**headers, "Content-Range": f"bytes */{artifact.size}"}, None)
    if wanted is None:
        headers["Content-Length"] = str(artifact.size)
        # Never more than the recorded length, whatever the store holds now.
        return Download(200, headers, store.read(key, start=0, end=artifact.size - 1))
    headers["Content-Length"] = str(wanted.length)
    headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{artifact.size}"
    return Download(206, headers, store.read(key, start=wanted.start, end=wanted.end))


def _b64_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def link_resource(artifact: Artifact) -> str:
    """What a fleetlift-signed download link signs."""
    return f"{artifact.tenant_id}/{artifact.id}"


def download_link(
    *,
    store: ArtifactStore,
    stored: StoredArtifact,
    secret: bytes,
    ttl: timedelta,
    now: datetime,
) -> tuple[str, datetime]:
    """A short-lived link: straight to the blob store when it can sign one (SAS), else a
    fleetlift URL carrying an HMAC over the artifact and the expiry."""
    expires_at = now + ttl
    artifact = stored.artifact
    direct = store.direct_url(stored.storage_key, filename=artifact.filename, expires_at=expires_at)
    if direct is not None:
        return direct, expires_at
    expires = int(expires_at.timestamp())
    signature = rules.link_signature(secret, link_resource(artifact), expires)
    return f"/downloads/v1/{link_resource(artifact)}?expires={expires}&signature={signature}", expires_at


def stored_for_link(
    *,
    session: Session,
    secret: bytes,
    tenant_id: str,
    artifact_id: str,
    expires: int,
    signature: str,
    now: int,
) -> StoredArtifact:
    """The artifact a signed link names; any doubt about the link is a 403 that says only that."""
    if not rules.link_is_valid(secret, f"{tenant_id}/{artifact_id}", expires, signature, now):
        raise Forbidden("the download link is invalid or has expired")
    found = repository.get_with_storage_key(session, tenant_id=tenant_id, artifact_id=artifact_id)
    if found is None:
        raise NotFound("the artifact of this link no longer exists")
    return StoredArtifact(*found)
