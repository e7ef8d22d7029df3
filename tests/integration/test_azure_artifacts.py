"""The management API with artifacts in Azure Blob Storage (Azurite): upload, resumed download
through fleetlift checked byte for byte, and SAS links straight to the blob."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.migrate import upgrade

from ..azurite import azurite, unavailable_reason


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"Azure Blob leg skipped: {reason}")
    (tmp_path / "azurite").mkdir()
    with azurite(tmp_path / "azurite") as connection:
        settings = Settings(
            data_dir=tmp_path / "data",
            artifact_store="azure_blob",
            azure_blob_connection_string=connection,
            azure_blob_container="artifacts",
            log_level="WARNING",
        )
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as test_client:
            yield test_client


def test_upload_resume_and_sas_link(client: TestClient) -> None:
    content = os.urandom(6 * 1024 * 1024 + 99)
    uploaded = client.post(
        "/api/v1/artifacts",
        params={"name": "fw.bin", "version": "1", "sha256": hashlib.sha256(content).hexdigest()},
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code == 201, uploaded.text
    artifact = uploaded.json()
    path = f"/api/v1/artifacts/{artifact['id']}/download"

    first_part = client.get(path, headers={"Range": "bytes=0-2999999"})
    assert first_part.status_code == 206
    rest = client.get(path, headers={"Range": "bytes=3000000-", "If-Range": first_part.headers["ETag"]})
    assert rest.status_code == 206
    assert first_part.content + rest.content == content  # byte for byte

    link = client.post(f"/api/v1/artifacts/{artifact['id']}/link").json()
    assert link["url"].startswith("http://127.0.0.1:") and "sig=" in link["url"]  # SAS, not through us
    direct = httpx.get(link["url"], headers={"Range": "bytes=5000000-"})
    assert direct.status_code == 206 and direct.content == content[5_000_000:]

    assert client.delete(f"/api/v1/artifacts/{artifact['id']}").status_code == 204
    assert httpx.get(link["url"]).status_code == 404  # the blob is gone with its last artifact
