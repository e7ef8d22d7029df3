"""The management API against real databases: every test gets its own tenant, so tests stay
isolated on one migrated SQLite file and one migrated PostgreSQL schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.db import transaction
from fleetlift.migrate import upgrade
from fleetlift.tenants import repository as tenants


@pytest.fixture(scope="session")
def sqlite_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir: Path = tmp_path_factory.mktemp("fleetlift-sqlite")
    settings = Settings(data_dir=data_dir, log_level="WARNING")
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="session")
def postgres_settings(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Settings:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fleetlift-pg"), database_url=pg_url, log_level="WARNING"
    )
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """One app and client per database backend, shared by the whole session."""
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    with TestClient(create_app(settings)) as client:
        yield client


@dataclass
class Api:
    """A tenant of its own and a way to call the API as any role in it."""

    client: TestClient
    tenant: str
    mint: Callable[..., str]

    def token(self, *roles: str, subject: str = "tester", ttl: timedelta = timedelta(minutes=10)) -> str:
        return self.mint(subject, frozenset(Role(r) for r in roles), ttl, tenant_id=self.tenant)

    def call(
        self,
        method: str,
        path: str,
        *,
        role: str | None = "admin",
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if role is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token(role, subject=f'{role}-user')}")
        return self.client.request(method, f"/api/v1{path}", headers=all_headers, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.call("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.call("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.call("DELETE", path, **kw)

    # Builders for the common fixtures of a test.
    def release(self, **overrides: Any) -> dict[str, Any]:
        """A release of one file artifact: it validates without a registry, so it can be deployed."""
        version = uuid.uuid4().hex[:8]
        if "payloads" not in overrides:
            artifact = self.artifact(f"firmware {version}".encode(), name="fw.bin", version=version)
            overrides["payloads"] = [{"type": "file", "artifact_id": artifact["id"]}]
        body = {
            "name": "edge-stack",
            "version": version,
            "device_types": ["gw-x1"],
            "architectures": ["arm64"],
        }
        body.update(overrides)
        response = self.post("/releases", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def artifact(
        self, content: bytes, *, name: str = "firmware.bin", version: str = "1", **params: Any
    ) -> dict[str, Any]:
        response = self.post(
            "/artifacts",
            params={"name": name, "version": version, **params},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code in (200, 201), response.text
        return response.json()

    def device(self, device_id: str, **overrides: Any) -> dict[str, Any]:
        body = {"id": device_id, "device_type": "gw-x1", "architecture": "arm64", "tags": {}}
        body.update(overrides)
        response = self.post("/devices", json=body)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def api(backend_client: TestClient) -> Api:
    app = backend_client.app
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    with transaction(app.state.sessions) as session:  # type: ignore[attr-defined]
        tenants.ensure(session, tenant_id=tenant, name=tenant)
    issuer = local_issuer(app.state.settings)  # type: ignore[attr-defined]
    return Api(backend_client, tenant, issuer.issue)
