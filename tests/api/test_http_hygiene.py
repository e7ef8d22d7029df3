"""Problem documents, size and media-type guards, request IDs, audit, health and metrics."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.testclient import TestClient

from fleetlift.app import create_app
from fleetlift.config import Settings

from .conftest import Api


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    missing = api.get("/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["request_id"] == missing.headers["X-Request-ID"]
    wrong_method = api.call("PATCH", "/deployments")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["status"] == 405


def test_oversized_body_is_413(api: Api) -> None:
    huge = {"id": "x", "device_type": "a", "architecture": "b", "tags": {"blob": "x" * 2_000_000}}
    response = api.post("/devices", json=huge)
    assert response.status_code == 413
    assert response.json()["title"] == "Request body too large"
    assert api.get("/devices/x").status_code == 404


def test_oversized_streamed_body_is_413(api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"id": "y", "device_type": "a", "architecture": "b", "tags": {"blob": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}}'

    response = api.post("/devices", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert api.get("/devices/y").status_code == 404


def test_non_json_body_is_415(api: Api) -> None:
    response = api.post(
        "/devices", content=b"id=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_malformed_json_is_400(api: Api) -> None:
    response = api.post("/devices", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["errors"]


def test_request_id_is_kept_or_made(api: Api) -> None:
    mine = api.get("/devices", headers={"X-Request-ID": "trace-123"})
    assert mine.headers["X-Request-ID"] == "trace-123"
    made = api.get("/devices", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["X-Request-ID"].startswith("req_")


def test_unexpected_errors_are_500_with_request_id_and_no_trace(sqlite_settings: Settings) -> None:
    app = create_app(sqlite_settings)  # an app of its own: the extra route must not leak into others
    router = APIRouter()

    @router.get("/api/v1/_boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/_boom")
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] and "secret internals" not in response.text and "Traceback" not in response.text


def test_every_change_and_refusal_is_audited(api: Api) -> None:
    release = api.release()
    api.device("au-1")
    api.call("POST", "/devices", role="viewer", json={"id": "au-2", "device_type": "a", "architecture": "b"})
    api.post(
        "/devices/au-1/update", json={"release_id": release["id"]}, headers={"X-Request-ID": "audit-req-1"}
    )
    api.post("/devices", json={"id": "au-1", "device_type": "a", "architecture": "b"})
    entries = api.get("/audit").json()["items"]
    summary = [(e["action"], e["outcome"], e["status_code"], e["resource_id"]) for e in entries]
    assert summary == [
        ("devices.register", "failed", 409, None),
        ("updates.trigger", "success", 202, "au-1"),
        ("devices.register", "denied", 403, None),
        ("devices.register", "success", 201, "au-1"),
        ("releases.create", "success", 201, release["id"]),
        ("artifacts.upload", "success", 201, release["payloads"][0]["artifact_id"]),
    ]
    trigger = entries[1]
    assert (
        trigger["actor"] == "admin-user"
        and trigger["roles"] == "admin"
        and trigger["request_id"] == "audit-req-1"
    )
    assert entries[2]["actor"] == "viewer-user" and entries[2]["roles"] == "viewer"
    only_denied = api.get("/audit", params={"outcome": "denied"}).json()["items"]
    assert [e["action"] for e in only_denied] == ["devices.register"]
    by_resource = api.get("/audit", params={"resource_type": "release"}).json()["items"]
    assert [e["resource_id"] for e in by_resource] == [release["id"]]
    assert api.get("/audit", role="developer").status_code == 403


def test_health_readiness_and_metrics(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    api.get("/devices")
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'fleetlift_http_requests_total{method="GET",route="/api/v1/devices",status="200"}' in metrics.text


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: object) -> None:
    settings = Settings(
        data_dir=tmp_path,  # type: ignore[arg-type]
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/nothing?connect_timeout=2",
        log_level="CRITICAL",
    )
    app = create_app(settings)
    client = TestClient(app)  # no lifespan: it would need the database
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["database"] == "unreachable"
    token_settings = client.get("/api/v1/devices")
    assert token_settings.status_code == 401
