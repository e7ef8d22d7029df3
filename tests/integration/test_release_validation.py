"""Releases of container images against a real registry: tags pinned to digests, platforms
checked per architecture, and a release that fails cannot be deployed until overridden."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.images.rules import OCI_INDEX, OCI_MANIFEST, Platform
from fleetlift.images.signatures import dsse_pae, signature_tag
from fleetlift.images.vulnerabilities import TRIVY_REPORT
from fleetlift.migrate import upgrade

from ..oci_layout import BuiltImage, build_image, build_signature_image, simple_signing_payload
from ..registry import PASSWORD, USER, Registry, push_blob, push_manifest, run_registry, unavailable_reason
from ..unit.test_image_signatures import sigstore_bundle

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, BuiltImage]]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"registry leg skipped: {reason}")
    workdir = tmp_path_factory.mktemp("validation")
    with run_registry(workdir / "registry") as running:
        built = build_image(
            workdir / "image", "1.4.0", [Platform("linux", "amd64"), Platform("linux", "arm64", "v8")]
        )
        running.push(workdir / "image", "1.4.0", "acme/telemetry")
        yield running, built


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, log_level="WARNING")
    upgrade(settings.resolved_database_url)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as test_client:
        yield test_client


def _release(client: TestClient, image: str, architectures: list[str], version: str) -> dict[str, object]:
    response = client.post(
        "/api/v1/releases",
        json={
            "name": "telemetry",
            "version": version,
            "payloads": [{"type": "container", "name": "telemetry", "image": image}],
            "architectures": architectures,
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_tags_are_pinned_and_platforms_checked(
    registry: tuple[Registry, BuiltImage], client: TestClient
) -> None:
    running, built = registry
    image = f"{running.host}/acme/telemetry:1.4.0"
    release = _release(client, image, ["arm64", "x86_64"], "1")
    assert release["payloads"][0]["image"] == f"{image}@{built.index_digest}"  # type: ignore[index]
    validation = release["validation"]
    assert validation["status"] == "passed"  # type: ignore[index]
    assert [(c["name"], c["subject"], c["passed"]) for c in validation["checks"]] == [  # type: ignore[index]
        ("image-resolves", image, True),
        ("platform", f"{image} on arm64", True),
        ("platform", f"{image} on x86_64", True),
    ]
    client.post("/api/v1/devices", json={"id": "gw-1", "device_type": "gw", "architecture": "arm64"})
    assert client.post("/api/v1/devices/gw-1/update", json={"release_id": release["id"]}).status_code == 202


def test_a_missing_platform_blocks_deployment(
    registry: tuple[Registry, BuiltImage], client: TestClient
) -> None:
    running, _ = registry
    image = f"{running.host}/acme/telemetry:1.4.0"
    release = _release(client, image, ["arm64", "armv7"], "2")
    validation = release["validation"]
    assert validation["status"] == "failed"  # type: ignore[index]
    failed = [c for c in validation["checks"] if not c["passed"]]  # type: ignore[index]
    assert [c["subject"] for c in failed] == [f"{image} on armv7"]
    assert "offers no platform for armv7" in failed[0]["detail"]
    deployment = client.post(
        "/api/v1/deployments",
        json={"name": "to all", "release_id": release["id"], "target": {"condition": "*"}},
    )
    assert deployment.status_code == 409
    assert "platform" in deployment.json()["detail"] and "armv7" in deployment.json()["detail"]
    draft = client.post(
        "/api/v1/deployments",
        json={"name": "later", "release_id": release["id"], "target": {"condition": "*"}, "status": "draft"},
    )
    assert draft.status_code == 201  # drafting is allowed; starting is not


def test_a_tag_that_does_not_exist(registry: tuple[Registry, BuiltImage], client: TestClient) -> None:
    running, _ = registry
    release = _release(client, f"{running.host}/acme/telemetry:9.9.9", [], "3")
    check = release["validation"]["checks"][0]  # type: ignore[index]
    assert check["name"] == "image-resolves" and not check["passed"] and "does not exist" in check["detail"]
    assert release["payloads"][0]["image"].endswith(":9.9.9")  # type: ignore[index]  # nothing to pin


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def signed_images(
    registry: tuple[Registry, BuiltImage],
    signing_key: ec.EllipticCurvePrivateKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Tags signed by the trusted key (either format), signed by a stranger, and unsigned."""
    running, _ = registry
    workdir = tmp_path_factory.mktemp("signed")
    stranger = ec.generate_private_key(ec.SECP256R1())
    images = {}
    bundled = build_image(workdir / "bundled", "bundled", [Platform("linux", "arm64", "v8")], label="bundled")
    running.push(workdir / "bundled", "bundled", "acme/signed")
    bundled_digest = bundled.manifests["linux/arm64/v8"]
    bundle = json.dumps(sigstore_bundle(signing_key, bundled_digest)).encode()
    _attach_referrer(
        running,
        "acme/signed",
        bundled_digest,
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        bundle,
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    )
    images["bundled"] = f"{running.host}/acme/signed:bundled"
    for name, key in (("trusted", signing_key), ("stranger", stranger), ("unsigned", None)):
        built = build_image(workdir / name, name, [Platform("linux", "arm64", "v8")], label=name)
        running.push(workdir / name, name, "acme/signed")
        digest = built.manifests["linux/arm64/v8"]
        if key is not None:
            payload = simple_signing_payload(f"{running.host}/acme/signed", digest)
            signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
            tag = signature_tag(digest)
            build_signature_image(workdir / f"{name}-sig", tag, payload, signature)
            running.push(workdir / f"{name}-sig", tag, "acme/signed")
        images[name] = f"{running.host}/acme/signed:{name}"
    return images


def test_images_must_be_signed_by_a_trusted_key(
    signed_images: dict[str, str], signing_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    key_file = tmp_path / "cosign.pub"
    key_file.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = Settings(data_dir=tmp_path / "data", log_level="WARNING", signature_key_files=[key_file])
    upgrade(settings.resolved_database_url)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        verdicts = {
            name: _release(client, image, ["arm64"], name)["validation"]
            for name, image in signed_images.items()
        }
    signature = {
        name: next(c for c in v["checks"] if c["name"] == "signature") for name, v in verdicts.items()
    }  # type: ignore[index]
    assert verdicts["trusted"]["status"] == "passed" and signature["trusted"]["passed"]  # type: ignore[index]
    assert verdicts["bundled"]["status"] == "passed"  # type: ignore[index]
    assert signature["bundled"]["detail"] == "a Sigstore bundle signed by a trusted key"
    assert verdicts["stranger"]["status"] == "failed"  # type: ignore[index]
    assert "does not verify with any trusted key" in signature["stranger"]["detail"]
    assert verdicts["unsigned"]["status"] == "failed"  # type: ignore[index]
    assert "no cosign signature" in signature["unsigned"]["detail"]


def _attach_referrer(
    running: Registry,
    repository: str,
    subject_digest: str,
    artifact_type: str,
    content: bytes,
    media_type: str,
) -> None:
    """Attach an artifact as an OCI 1.1 referrer of ``subject_digest``. This registry predates the
    referrers API, so the referrer is listed in the ``sha256-<hex>`` fallback tag, as ORAS and
    cosign do."""
    layer_digest = push_blob(running.host, repository, content)
    config_digest = push_blob(running.host, repository, b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
            "layers": [{"mediaType": media_type, "digest": layer_digest, "size": len(content)}],
            "subject": fetch_descriptor(running, repository, subject_digest),
        }
    ).encode()
    manifest_digest = push_manifest(
        running.host, repository, "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest, OCI_MANIFEST
    )
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "artifactType": artifact_type,
                }
            ],
        }
    ).encode()
    push_manifest(running.host, repository, subject_digest.replace(":", "-"), index, OCI_INDEX)


def _attach_trivy_report(
    running: Registry, repository: str, subject_digest: str, report: dict[str, object]
) -> None:
    _attach_referrer(
        running, repository, subject_digest, TRIVY_REPORT, json.dumps(report).encode(), "application/json"
    )


def fetch_descriptor(running: Registry, repository: str, digest: str) -> dict[str, object]:
    response = httpx.get(
        f"http://{running.host}/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
    )
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(response.content)}


def test_the_vulnerability_gate(registry: tuple[Registry, BuiltImage], tmp_path: Path) -> None:
    running, _ = registry
    workdir = tmp_path / "images"
    now = datetime.now(UTC).isoformat()
    reports = {
        "clean": {
            "CreatedAt": now,
            "Results": [
                {
                    "Target": "x",
                    "Vulnerabilities": [
                        {
                            "VulnerabilityID": "CVE-2026-0001",
                            "Severity": "MEDIUM",
                            "PkgName": "zlib",
                            "FixedVersion": "1.3",
                        }
                    ],
                }
            ],
        },
        "critical": {
            "CreatedAt": now,
            "Results": [
                {
                    "Target": "x",
                    "Vulnerabilities": [
                        {
                            "VulnerabilityID": "CVE-2026-0002",
                            "Severity": "CRITICAL",
                            "PkgName": "openssl",
                            "FixedVersion": "3.1",
                        }
                    ],
                }
            ],
        },
        "stale": {"CreatedAt": "2026-01-01T00:00:00Z", "Results": []},
    }
    images = {}
    for name in [*reports, "unscanned"]:
        built = build_image(workdir / name, name, [Platform("linux", "arm64", "v8")], label=f"scan-{name}")
        running.push(workdir / name, name, "acme/scanned")
        if name in reports:
            _attach_trivy_report(running, "acme/scanned", built.manifests["linux/arm64/v8"], reports[name])
        images[name] = f"{running.host}/acme/scanned:{name}"
    settings = Settings(
        data_dir=tmp_path / "data",
        log_level="WARNING",
        vulnerability_max_severity="HIGH",
        vulnerability_max_report_age_hours=24 * 7,
    )
    upgrade(settings.resolved_database_url)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        gate = {
            name: next(
                c
                for c in _release(client, image, ["arm64"], name)["validation"]["checks"]
                if c["name"] == "vulnerabilities"
            )  # type: ignore[index]
            for name, image in images.items()
        }
    assert gate["clean"]["passed"] and "1 finding(s)" in gate["clean"]["detail"]
    assert not gate["critical"]["passed"] and "CVE-2026-0002 (CRITICAL)" in gate["critical"]["detail"]
    assert not gate["stale"]["passed"] and "old" in gate["stale"]["detail"]
    assert (
        not gate["unscanned"]["passed"]
        and "no Trivy scan report or vulnerability attestation" in gate["unscanned"]["detail"]
    )


def test_stored_credentials_open_a_private_registry(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if unavailable_reason():
        pytest.skip(f"registry leg skipped: {unavailable_reason()}")
    with run_registry(tmp_path / "private", auth="basic") as private:
        build_image(tmp_path / "image", "1.0", [Platform("linux", "arm64", "v8")], label="private")
        private.push(tmp_path / "image", "1.0", "acme/private")
        settings = Settings(data_dir=tmp_path / "data", log_level="WARNING")
        upgrade(settings.resolved_database_url)
        token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
        image = f"{private.host}/acme/private:1.0"
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
            anonymous = _release(client, image, ["arm64"], "anonymous")
            client.put(
                f"/api/v1/registries/{private.host}/credentials",
                json={"username": USER, "password": PASSWORD},
            )
            authorised = _release(client, image, ["arm64"], "authorised")
    assert anonymous["validation"]["status"] == "failed"  # type: ignore[index]
    assert "needs credentials" in anonymous["validation"]["checks"][0]["detail"]  # type: ignore[index]
    assert authorised["validation"]["status"] == "passed"  # type: ignore[index]
    assert "@sha256:" in authorised["payloads"][0]["image"]  # type: ignore[index]


def _attach_vulnerability_attestation(
    running: Registry,
    repository: str,
    digest: str,
    result: dict[str, object],
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """What `cosign attest --type vuln` leaves: a DSSE envelope layer under ``sha256-<hex>.att``."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [{"name": f"{running.host}/{repository}", "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": "https://cosign.sigstore.dev/attestation/vuln/v1",
        "predicate": {
            "scanner": {"uri": "pkg:github/aquasecurity/trivy", "version": "0.58.0", "result": result},
            "metadata": {
                "scanStartedOn": datetime.now(UTC).isoformat(),
                "scanFinishedOn": datetime.now(UTC).isoformat(),
            },
        },
    }
    payload = json.dumps(statement).encode()
    signature = key.sign(dsse_pae("application/vnd.in-toto+json", payload), ec.ECDSA(hashes.SHA256()))
    envelope = json.dumps(
        {
            "payloadType": "application/vnd.in-toto+json",
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}],
        }
    ).encode()
    layer = push_blob(running.host, repository, envelope)
    config = push_blob(running.host, repository, b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [
                {"mediaType": "application/vnd.dsse.envelope.v1+json", "digest": layer, "size": len(envelope)}
            ],
        }
    ).encode()
    push_manifest(running.host, repository, signature_tag(digest, "att"), manifest, OCI_MANIFEST)


def test_vulnerability_attestations_feed_the_gate(
    registry: tuple[Registry, BuiltImage], signing_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    running, _ = registry
    stranger = ec.generate_private_key(ec.SECP256R1())
    critical = {
        "Results": [
            {
                "Target": "x",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2026-0666",
                        "Severity": "CRITICAL",
                        "PkgName": "openssl",
                        "FixedVersion": "3.2",
                    }
                ],
            }
        ]
    }
    cases = {
        "attested-clean": ({"Results": []}, signing_key),
        "attested-critical": (critical, signing_key),
        "attested-by-stranger": ({"Results": []}, stranger),
    }
    images = {}
    for name, (result, key) in cases.items():
        built = build_image(tmp_path / name, name, [Platform("linux", "arm64", "v8")], label=name)
        running.push(tmp_path / name, name, "acme/attested")
        _attach_vulnerability_attestation(
            running, "acme/attested", built.manifests["linux/arm64/v8"], result, key
        )
        images[name] = f"{running.host}/acme/attested:{name}"
    key_file = tmp_path / "cosign.pub"
    key_file.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        log_level="WARNING",
        vulnerability_max_severity="HIGH",
        signature_key_files=[key_file],
    )
    upgrade(settings.resolved_database_url)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        gate = {
            name: next(
                c
                for c in _release(client, image, ["arm64"], name)["validation"]["checks"]
                if c["name"] == "vulnerabilities"
            )  # type: ignore[index]
            for name, image in images.items()
        }
    assert gate["attested-clean"]["passed"]
    assert not gate["attested-critical"]["passed"] and "CVE-2026-0666" in gate["attested-critical"]["detail"]
    assert not gate["attested-by-stranger"]["passed"]  # an unsigned-by-us attestation is not evidence


@pytest.fixture
def referrers_api(registry: tuple[Registry, BuiltImage]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The real registry behind a front that also answers the OCI 1.1 referrers API (Debian's
    docker-registry predates it): referrer indexes come from a dict, everything else is proxied."""
    running, _ = registry
    indexes: dict[str, bytes] = {}

    class Front(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if "/referrers/" in self.path:
                digest = self.path.rsplit("/", 1)[-1]
                body = indexes.get(
                    digest, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", OCI_INDEX)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            upstream = httpx.get(
                f"http://{running.host}{self.path}", headers={"Accept": self.headers.get("Accept", "*/*")}
            )
            self.send_response(upstream.status_code)
            for name in ("Content-Type", "Docker-Content-Digest"):
                if name in upstream.headers:
                    self.send_header(name, upstream.headers[name])
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", indexes
    server.shutdown()
    server.server_close()


def test_reports_found_through_the_referrers_api(
    registry: tuple[Registry, BuiltImage], referrers_api: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    running, _ = registry
    front, indexes = referrers_api
    built = build_image(tmp_path / "img", "api", [Platform("linux", "arm64", "v8")], label="referrers-api")
    running.push(tmp_path / "img", "api", "acme/api")
    digest = built.manifests["linux/arm64/v8"]
    report = json.dumps({"CreatedAt": datetime.now(UTC).isoformat(), "Results": []}).encode()
    layer = push_blob(running.host, "acme/api", report)
    config = push_blob(running.host, "acme/api", b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": TRIVY_REPORT,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/json", "digest": layer, "size": len(report)}],
        }
    ).encode()
    manifest_digest = push_manifest(
        running.host, "acme/api", "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest, OCI_MANIFEST
    )
    # Listed only by the referrers API, not by the fallback tag.
    indexes[digest] = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "artifactType": TRIVY_REPORT,
                }
            ],
        }
    ).encode()
    settings = Settings(data_dir=tmp_path / "data", log_level="WARNING", vulnerability_max_severity="HIGH")
    upgrade(settings.resolved_database_url)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        validation = _release(client, f"{front}/acme/api:api", ["arm64"], "api")["validation"]
    gate = next(c for c in validation["checks"] if c["name"] == "vulnerabilities")  # type: ignore[index]
    assert gate["passed"] and "0 finding(s)" in gate["detail"]
