"""Releases of container images against a real registry: tags pinned to digests, platforms
checked per architecture, and a release that fails cannot be deployed until overridden."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.images.rules import Platform
from fleetlift.migrate import upgrade

from ..oci_layout import BuiltImage, build_image
from ..registry import Registry, run_registry, unavailable_reason

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
