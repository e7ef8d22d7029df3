"""Use cases of releases."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.artifacts import repository as artifacts
from fleetlift.artifacts.models import ReleaseArtifact
from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import transaction, utcnow
from fleetlift.errors import Conflict, FieldError, FleetliftError, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.ids import new_id
from fleetlift.images.rules import Credentials, ResolvedImage, parse_image_reference
from fleetlift.images.signatures import (
    VULN_PREDICATE,
    PublicKey,
    dsse_signed_by,
    open_dsse,
    verify_sigstore_bundle,
    verify_simple_signing,
)
from fleetlift.images.vulnerabilities import VulnerabilityPolicy, findings_from_trivy, judge
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.ports import ImageRegistry
from fleetlift.registries import service as registries
from fleetlift.releases import repository
from fleetlift.releases.models import Release
from fleetlift.releases.rules import Check, deploy_refusal, platform_checks, verdict, with_override
from fleetlift.releases.schemas import ReleaseCreate, ReleaseUpdate
from fleetlift.secrets_box import SecretBox


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


@dataclass(frozen=True)
class ImageChecks:
    """What release validation needs: a registry to ask and the keys trusted to sign images."""

    registry: ImageRegistry
    trusted_keys: Sequence[PublicKey] = ()
    vulnerability_policy: VulnerabilityPolicy | None = None
    secrets: SecretBox | None = None
    fallback_credentials: Callable[[str], Credentials | None] = lambda registry: None

    def for_tenant(self, credentials: Mapping[str, Credentials]) -> ImageChecks:
        """The checks with the registry authenticating as the tenant (its stored credentials
        first, then the server's Docker config)."""
        fallback = self.fallback_credentials
        registry = self.registry.bound(lambda host: credentials.get(host) or fallback(host))
        return ImageChecks(registry, self.trusted_keys, self.vulnerability_policy, self.secrets, fallback)


def _tenant_credentials(
    sessions: sessionmaker[Session], box: SecretBox | None, tenant_id: str
) -> dict[str, Credentials]:
    if box is None:
        return {}
    with sessions() as session:
        return registries.credentials_by_registry(session=session, box=box, tenant_id=tenant_id)


async def _checks_for(sessions: sessionmaker[Session], checks: ImageChecks, caller: Caller) -> ImageChecks:
    credentials = await anyio.to_thread.run_sync(
        partial(_tenant_credentials, sessions, checks.secrets, caller.tenant_id)
    )
    return checks.for_tenant(credentials)


async def _signature_check(checks: ImageChecks, image: str, resolved: ResolvedImage) -> Check:
    """Either format counts: the ``.sig`` tag (simple signing) or a Sigstore bundle referrer."""
    try:
        layers = await checks.registry.signature_layers(resolved.ref, resolved.digest)
        passed, detail = verify_simple_signing(layers, resolved.digest, checks.trusted_keys)
        if passed:
            return Check("signature", image, True, detail)
        reasons = [detail]
        for bundle in await checks.registry.sigstore_bundles(resolved.ref, resolved.digest):
            passed, bundle_detail = verify_sigstore_bundle(bundle, resolved.digest, checks.trusted_keys)
            if passed:
                return Check("signature", image, True, bundle_detail)
            reasons.append(bundle_detail)
    except FleetliftError as error:
        return Check("signature", image, False, error.detail)
    return Check("signature", image, False, "; ".join(reasons))


async def _scan_report(checks: ImageChecks, resolved: ResolvedImage) -> tuple[dict[str, Any] | None, str]:
    """A Trivy report: attached as a referrer, or inside a cosign vulnerability attestation (whose
    signature must verify when trusted keys are configured)."""
    report = await checks.registry.vulnerability_report(resolved.ref, resolved.digest)
    if report is not None:
        return report, "referrer"
    for envelope in await checks.registry.attestations(resolved.ref, resolved.digest):
        statement, _ = open_dsse(envelope, resolved.digest)
        if statement is None or statement.get("predicateType") != VULN_PREDICATE:
            continue
        assert isinstance(envelope, dict)
        if checks.trusted_keys and not dsse_signed_by(envelope, checks.trusted_keys):
            continue
        predicate = statement.get("predicate") or {}
        result = predicate.get("scanner", {}).get("result") if isinstance(predicate, dict) else None
        if isinstance(result, dict):
            finished = predicate.get("metadata", {}).get("scanFinishedOn")
            return {**result, "CreatedAt": result.get("CreatedAt") or finished}, "attestation"
    return None, ""


async def _vulnerability_check(checks: ImageChecks, image: str, resolved: ResolvedImage) -> Check:
    assert checks.vulnerability_policy is not None
    try:
        report, _source = await _scan_report(checks, resolved)
    except FleetliftError as error:
        return Check("vulnerabilities", image, False, error.detail)
    if report is None:
        return Check(
            "vulnerabilities", image, False, "no Trivy scan report or vulnerability attestation is attached"
        )
    created_at, findings = findings_from_trivy(report)
    passed, detail = judge(checks.vulnerability_policy, created_at, findings, utcnow())
    return Check("vulnerabilities", image, passed, detail)


async def validate_images(
    checks_with: ImageChecks, payloads: list[dict[str, Any]], architectures: Sequence[str]
) -> list[Check]:
    """Pin every container image to the digest its tag names now (in place) and check it offers
    a platform for each architecture of the release. A registry that cannot answer fails the
    check rather than the request: the verdict says why, and the release can be validated again."""
    checks: list[Check] = []
    for payload in payloads:
        if payload["type"] != "container":
            continue
        image = payload["image"]
        try:
            resolved = await checks_with.registry.resolve(parse_image_reference(image))
        except FleetliftError as error:
            checks.append(Check("image-resolves", image, False, error.detail))
            continue
        payload["image"] = str(resolved.ref)
        checks.append(Check("image-resolves", image, True, f"pinned to {resolved.digest}"))
        checks += platform_checks(image, resolved.platforms, architectures)
        if checks_with.trusted_keys:
            checks.append(await _signature_check(checks_with, image, resolved))
        if checks_with.vulnerability_policy is not None:
            checks.append(await _vulnerability_check(checks_with, image, resolved))
    return checks


async def create(
    *, sessions: sessionmaker[Session], image_checks: ImageChecks, caller: Caller, data: ReleaseCreate
) -> Release:
    """Publish a release: images are pinned to digests and checked, and the verdict is stored;
    a name and version pair exists once per tenant."""
    payloads: list[dict[str, Any]] = [payload.model_dump(mode="json") for payload in data.payloads]
    for payload in payloads:
        if payload["type"] == "file":  # stored resolved, so a device never has to guess
            payload["installer"] = payload["installer"] or ("ab-slot" if data.kind == "base" else "package")
            payload["target"] = payload["target"] or data.name
    checks = await validate_images(
        await _checks_for(sessions, image_checks, caller), payloads, data.architectures
    )
    return await anyio.to_thread.run_sync(partial(_create_rows, sessions, caller, data, payloads, checks))


def _create_rows(
    sessions: sessionmaker[Session],
    caller: Caller,
    data: ReleaseCreate,
    payloads: list[dict[str, Any]],
    checks: list[Check],
) -> Release:
    with transaction(sessions) as session:
        if repository.find_by_name_version(
            session, tenant_id=caller.tenant_id, name=data.name, version=data.version
        ):
            raise Conflict(f"release '{data.name}' version '{data.version}' already exists")
        return _insert(session, caller, data, payloads, checks)


def _insert(
    session: Session, caller: Caller, data: ReleaseCreate, payloads: list[dict[str, Any]], checks: list[Check]
) -> Release:
    now = utcnow()
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
        validation=verdict(checks, checked_at=now),
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
        details={
            "name": release.name,
            "version": release.version,
            "validation": release.validation["status"],
        },
    )
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


def _load_payloads(sessions: sessionmaker[Session], caller: Caller, release_id: str) -> Release:
    with sessions() as session:
        return get(session=session, caller=caller, release_id=release_id)


def _store_verdict(
    sessions: sessionmaker[Session],
    caller: Caller,
    release_id: str,
    payloads: list[dict[str, Any]],
    checks: list[Check],
) -> Release:
    with transaction(sessions) as session:
        release = get(session=session, caller=caller, release_id=release_id)
        now = utcnow()
        release.payloads = payloads
        release.validation = verdict(checks, checked_at=now)
        release.updated_at = now
        audit.record(
            session,
            caller=caller,
            action="releases.validate",
            resource_type="release",
            resource_id=release_id,
            details={"validation": release.validation["status"]},
        )
        return release


async def revalidate(
    *, sessions: sessionmaker[Session], image_checks: ImageChecks, caller: Caller, release_id: str
) -> Release:
    """Run the checks again (a registry that was down, a platform pushed since); a new verdict
    replaces the old one, override included."""
    release = await anyio.to_thread.run_sync(partial(_load_payloads, sessions, caller, release_id))
    payloads = [dict(payload) for payload in release.payloads]
    checks = await validate_images(
        await _checks_for(sessions, image_checks, caller), payloads, release.architectures
    )
    return await anyio.to_thread.run_sync(
        partial(_store_verdict, sessions, caller, release_id, payloads, checks)
    )


def override(
    *, session: Session, caller: Caller, release_id: str, reason: str, if_match: str | None
) -> Release:
    """Let a release that failed validation be deployed anyway, recording who decided and why."""
    release = get(session=session, caller=caller, release_id=release_id)
    check_if_match(if_match, release.row_version)
    if deploy_refusal(release.validation) is None:
        raise Conflict(f"release '{release_id}' may already be deployed: there is nothing to override")
    now = utcnow()
    release.validation = with_override(release.validation, by=caller.subject, reason=reason, at=now)
    release.updated_at = now
    audit.record(
        session,
        caller=caller,
        action="releases.override",
        resource_type="release",
        resource_id=release_id,
        details={"reason": reason},
    )
    session.commit()
    return release


def ensure_deployable(release: Release) -> None:
    """Refuse to deploy a release that failed validation and was not overridden."""
    refusal = deploy_refusal(release.validation)
    if refusal is not None:
        raise Conflict(
            f"release '{release.name}' {release.version} cannot be deployed: {refusal}; "
            "fix it and validate again, or have an admin override with a reason",
            extra={"release_id": release.id, "validation": release.validation},
        )
