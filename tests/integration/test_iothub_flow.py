"""The IoT Hub slice end to end against the IoT Hub EMULATOR (tests/iothub_emulator.py), on SQLite and
PostgreSQL: register a hub, sync its devices, deliver an edge deployment as a configuration, read its
status back, update and delete it, and trigger devices one by one and in batches."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fleetlift.adapters.iothub import IotHubClient, SasTokenProvider
from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.db import transaction
from fleetlift.migrate import upgrade
from fleetlift.tenants import repository as tenants

from ..conftest import migrated_schema
from ..fleetlift_logs import capture_fleetlift_logs
from ..iothub_emulator import IotHubEmulator

DIGEST = "sha256:" + "a" * 64
IMAGE = f"registry.invalid/acme/telemetry:1.0@{DIGEST}"


@pytest.fixture(scope="module")
def sqlite_flow_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir: Path = tmp_path_factory.mktemp("iothub-sqlite")
    settings = Settings(
        data_dir=data_dir, log_level="WARNING", iothub_enabled=False, reconciler_enabled=False
    )
    upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="module")
def postgres_flow_settings(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Settings]:
    # A schema of its own: the session's other apps run IoT Hub workers under other secrets keys, and
    # on a shared schema they would lease these hubs (and fail to open them) between this test's passes.
    del pg_url  # only to start PostgreSQL when it is down
    with migrated_schema("iothub") as url:
        yield Settings(
            data_dir=tmp_path_factory.mktemp("iothub-pg"),
            database_url=url,
            log_level="WARNING",
            iothub_enabled=False,
            reconciler_enabled=False,
        )


@dataclass
class Flow:
    """An app of our own (worker driven by the test), a tenant, and an emulated hub."""

    client: TestClient
    tenant: str
    settings: Settings
    hub: IotHubEmulator
    sleeps: list[float] = field(default_factory=list)
    hub_id: str = ""

    def call(self, method: str, path: str, *, role: str = "admin", **kw: Any) -> httpx.Response:
        issuer = local_issuer(self.settings)
        token = issuer.issue(
            f"{role}-user", frozenset({Role(role)}), timedelta(minutes=10), tenant_id=self.tenant
        )
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        return self.client.request(method, f"/api/v1{path}", headers=headers, **kw)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        response = self.call(method, path, **kw)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def register(self) -> str:
        created = self.ok(
            "POST",
            "/iothub/hubs",
            201,
            json={
                "name": "emulated",
                "connection_string": self.hub.connection_string,
                "sync_interval_seconds": 0,
            },
        )
        self.hub_id = created["id"]
        return self.hub_id

    def sync(self) -> dict[str, Any]:
        result: dict[str, Any] = self.ok("POST", f"/iothub/hubs/{self.hub_id}/sync")
        return result

    def work(self, *, status_interval: float = 3600) -> None:
        """One worker pass over this test's hub (the app's worker loop is off)."""
        worker = self.client.app.state.iothub_worker  # type: ignore[attr-defined]
        run = partial(worker.run_hub, self.tenant, self.hub_id, status_interval=status_interval)
        assert self.client.portal is not None
        assert self.client.portal.call(run)

    def release(self, **payload: Any) -> dict[str, Any]:
        body = {
            "name": "edge-stack",
            "version": uuid.uuid4().hex[:8],
            "payloads": [
                {
                    "type": "container",
                    "name": "telemetry",
                    "image": IMAGE,
                    "env": {"LOG_LEVEL": "info"},
                    "ports": [{"container_port": 8080, "host_port": 80}],
                    "create_options": {"HostConfig": {"Privileged": False}},
                    "restart_policy": "on-failure",
                    **payload,
                }
            ],
        }
        release: dict[str, Any] = self.ok("POST", "/releases", 201, json=body)
        # registry.invalid cannot be reached to check the image, so an admin accepts the release.
        self.ok("POST", f"/releases/{release['id']}/override", json={"reason": "emulated hub test"})
        return release

    def deploy(self, release_id: str, condition: str, **extra: Any) -> dict[str, Any]:
        body = {
            "name": "edge",
            "release_id": release_id,
            "target": {"condition": condition},
            "iothub": {"hub_id": self.hub_id},
            **extra,
        }
        deployment: dict[str, Any] = self.ok("POST", "/deployments", 201, json=body)
        return deployment

    def delivery(self, deployment_id: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.ok("GET", f"/iothub/deployments/{deployment_id}", params=params)
        return result


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def flow(request: pytest.FixtureRequest) -> Iterator[Flow]:
    settings: Settings = request.getfixturevalue(f"{request.param}_flow_settings")
    app = create_app(settings)
    hub = IotHubEmulator(config_ops_per_minute=None)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    clients = app.state.iothub_clients
    clients.transport = hub.transport()
    clients.options.update(sleep=sleep)
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    with transaction(app.state.sessions) as session:
        tenants.ensure(session, tenant_id=tenant, name=tenant)
    with TestClient(app) as client:
        yield Flow(client, tenant, settings, hub, sleeps)


def _ids(page: dict[str, Any]) -> set[str]:
    return {item["id"] for item in page["items"]}


def test_sync_pages_devices_in_with_their_tags(flow: Flow) -> None:
    for n in range(250):
        flow.hub.add_device(
            f"dev-{n:03d}",
            tags={"env": "prod" if n % 2 else "dev", "site": {"city": "berlin" if n % 5 == 0 else "paris"}},
            reported={"architecture": "arm64", "fw": n},
            edge=n % 3 == 0,
        )
    flow.register()
    result = flow.sync()
    assert result == {"hub_id": flow.hub_id, "synced": 250, "pages": 3, "missing": 0}
    queries = [r for r in flow.hub.requests if r.path == "/devices/query"]
    assert len(queries) == 3  # 100 + 100 + 50, continued with x-ms-continuation

    condition = "tags.env = 'prod' AND tags.site.city = 'berlin'"
    fleet = flow.ok("GET", "/devices", params={"condition": condition, "limit": 1000})
    in_hub = {twin["deviceId"] for twin in flow.hub.query(f"SELECT * FROM devices WHERE {condition}")}
    assert _ids(fleet) == in_hub and len(in_hub) == 25

    device = flow.call("GET", "/devices/dev-003")
    body = device.json()
    assert body["status"] == "accepted" and body["architecture"] == "arm64"
    assert body["reported"] == {"architecture": "arm64", "fw": 3}  # no $metadata / $version
    assert body["tags"] == {"env": "prod", "site": {"city": "paris"}}

    # Unchanged twins leave the devices' ETags alone; a changed one moves; a removed one is "missing".
    flow.hub.set_reported("dev-004", {"fw": 400})
    flow.hub.remove_device("dev-249")
    assert flow.sync()["missing"] == 1
    assert flow.call("GET", "/devices/dev-003").headers["ETag"] == device.headers["ETag"]
    assert flow.ok("GET", "/devices/dev-004")["reported"]["fw"] == 400
    assert flow.ok("GET", "/devices/dev-249")["id"] == "dev-249"  # kept, not deleted
    hub = flow.ok("GET", f"/iothub/hubs/{flow.hub_id}")
    assert hub["last_sync"]["status"] == "ok" and hub["last_sync"]["counts"]["missing"] == 1


def _edge_fleet(flow: Flow) -> None:
    for name in ("gw-1", "gw-2", "gw-3"):
        flow.hub.add_device(name, tags={"env": "prod"}, edge=True)
    flow.hub.add_device("gw-dev", tags={"env": "dev"}, edge=True)
    flow.hub.add_device("sensor-1", tags={"env": "prod"})  # not an IoT Edge device
    flow.register()
    flow.sync()


def test_edge_deployment_create_status_update_delete(flow: Flow) -> None:
    _edge_fleet(flow)
    flow.ok(
        "PUT", "/registries/registry.invalid/credentials", json={"username": "puller", "password": "pw-123"}
    )
    release = flow.release()
    deployment = flow.deploy(release["id"], "tags.env = 'prod'", priority=10, labels={"team": "edge"})
    assert flow.delivery(deployment["id"])["state"] == "queued"

    flow.work()
    delivery = flow.delivery(deployment["id"])
    assert delivery["state"] == "applied", delivery
    configuration = flow.hub.configurations[delivery["configuration_id"]]
    agent = configuration["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]
    module = agent["modules"]["telemetry"]
    assert module["settings"]["image"] == f"registry.invalid/acme/telemetry@{DIGEST}"
    options = json.loads(module["settings"]["createOptions"])
    assert options["ExposedPorts"] == {"8080/tcp": {}} and options["HostConfig"]["Privileged"] is False
    assert module["env"] == {"LOG_LEVEL": {"value": "info"}} and module["restartPolicy"] == "on-failure"
    assert agent["runtime"]["settings"]["registryCredentials"] == {
        "registry_invalid": {"username": "puller", "password": "pw-123", "address": "registry.invalid"}
    }
    assert "capabilities.iotEdge = true" in configuration["targetCondition"]
    assert "tags.env = 'prod'" in configuration["targetCondition"]
    assert configuration["priority"] == 10
    assert configuration["labels"]["team"] == "edge"
    assert configuration["labels"]["fleetlift.deployment"] == deployment["id"]
    assert configuration["systemMetrics"]["results"]["targetedCount"] == 3

    # The devices' edge agents report: one runs the module, one refused the manifest, one is silent.
    flow.hub.report_edge_status("gw-1", 200)
    flow.hub.report_module("gw-1", "$edgeAgent", {"modules": {"telemetry": {"runtimeStatus": "running"}}})
    flow.hub.report_edge_status("gw-2", 400, "invalid createOptions")
    flow.work(status_interval=0)
    delivery = flow.delivery(deployment["id"])
    assert delivery["hub_counts"]["targeted"] == 3 and delivery["hub_counts"]["succeeded"] == 1
    assert delivery["hub_counts"]["failed"] == 1
    # sensor-1 matches the condition but is no IoT Edge device: neither the hub nor fleetlift targets it.
    assert delivery["device_counts"] == {"succeeded": 1, "failed": 1, "notified": 1}
    devices = flow.ok("GET", f"/deployments/{deployment['id']}/devices")["items"]
    by_id = {row["device_id"]: row for row in devices}
    assert by_id["gw-2"]["detail"] == "IoT Edge agent: 400 invalid createOptions"
    assert set(by_id) == {"gw-1", "gw-2", "gw-3"}  # IoT Edge devices only, as the hub

    # A change to what the configuration carries: a new revision, then the old one is deleted.
    current = flow.call("GET", f"/deployments/{deployment['id']}")
    replace = {
        "name": "edge",
        "release_id": release["id"],
        "target": {"condition": "tags.env = 'prod'"},
        "priority": 20,
        "labels": {"team": "edge"},
        "status": "active",
    }
    flow.ok(
        "PUT", f"/deployments/{deployment['id']}", json=replace, headers={"If-Match": current.headers["ETag"]}
    )
    flow.work()
    delivery = flow.delivery(deployment["id"])
    assert delivery["revision"] == 2 and delivery["state"] == "applied"
    assert [r["state"] for r in delivery["revisions"]] == ["applied", "retired"]
    old, new = delivery["revisions"][1]["configuration_id"], delivery["configuration_id"]
    assert old not in flow.hub.configurations and flow.hub.configurations[new]["priority"] == 20

    listed = flow.ok("GET", f"/iothub/hubs/{flow.hub_id}/deployments")["items"]
    assert [item["deployment_id"] for item in listed] == [deployment["id"]]

    # Deleting the deployment deletes its configuration.
    flow.ok("DELETE", f"/deployments/{deployment['id']}", 204, params={"force": "true"})
    flow.work()
    assert new not in flow.hub.configurations
    assert flow.delivery(deployment["id"])["state"] == "retired"
    assert flow.ok("DELETE", f"/iothub/hubs/{flow.hub_id}", 204) is None


def test_throttling_is_retried_and_recorded(flow: Flow) -> None:
    _edge_fleet(flow)
    flow.hub.throttle(2, retry_after=1, path_prefix="/devices/query")
    assert flow.sync()["synced"] == 5
    assert flow.sleeps[:2] == [1.0, 1.0]  # the hub's Retry-After, honoured

    release = flow.release()
    deployment = flow.deploy(release["id"], "tags.env = 'prod'")
    flow.hub.throttle(5, retry_after=0, path_prefix="/configurations")  # beyond the client's 4 retries
    flow.work()
    delivery = flow.delivery(deployment["id"])
    assert delivery["state"] == "queued" and delivery["attempts"] == 1
    assert delivery["last_error_code"] == "ThrottlingException"
    flow.work()  # retried by the next pass
    assert flow.delivery(deployment["id"])["state"] == "applied"


def test_configuration_limit_is_reported(flow: Flow) -> None:
    _edge_fleet(flow)

    async def fill() -> None:
        other = IotHubClient(
            flow.hub.host_name,
            SasTokenProvider.from_connection_string(flow.hub.connection_string),
            transport=flow.hub.transport(),
            config_ops_per_minute=100_000,
            config_ops_burst=1000,
        )
        async with other:
            for n in range(100):
                await other.put_configuration(
                    {
                        "id": f"someone-else-{n}",
                        "content": {"deviceContent": {"properties.desired.setting": n}},
                        "targetCondition": "tags.env = 'nowhere'",
                        "priority": 0,
                    }
                )

    assert flow.client.portal is not None
    flow.client.portal.call(fill)
    release = flow.release()
    deployment = flow.deploy(release["id"], "tags.env = 'prod'")
    flow.work()
    delivery = flow.delivery(deployment["id"])
    assert delivery["state"] == "failed"
    assert delivery["last_error_code"] == "ConfigurationCountLimitExceeded"
    assert "limit is 100" in delivery["last_error"]
    assert len(flow.hub.configurations) == 100


def test_a_revision_waiting_for_the_rate_limit_shows_its_place(flow: Flow) -> None:
    # One configuration operation a minute, two at once, and no waiting: the third call must queue.
    flow.client.app.state.iothub_clients.options.update(  # type: ignore[attr-defined]
        config_ops_per_minute=1, config_ops_burst=2, config_max_wait_seconds=0
    )
    _edge_fleet(flow)
    release = flow.release()
    first = flow.deploy(release["id"], "tags.env = 'prod'")
    second = flow.deploy(release["id"], "deviceId = 'gw-dev'")
    waiting = flow.delivery(second["id"])
    assert waiting["state"] == "queued" and waiting["queue_position"] == 2
    flow.work()  # counting the hub's configurations and creating the first use both operations
    assert flow.delivery(first["id"])["state"] == "applied"
    waiting = flow.delivery(second["id"])
    assert waiting["state"] == "queued" and waiting["queue_position"] == 1
    assert waiting["estimated_wait_seconds"] > 30 and waiting["last_error_code"] == "Throttled"
    states = {
        item["deployment_id"]: item["state"]
        for item in flow.ok("GET", f"/iothub/hubs/{flow.hub_id}/deployments")["items"]
    }
    assert states == {first["id"]: "applied", second["id"]: "queued"}


def test_single_apply_and_batch_triggers(flow: Flow) -> None:
    _edge_fleet(flow)
    flow.hub.add_device("agent-1")
    flow.hub.add_device("agent-2", online=False)
    flow.sync()
    calls: list[Any] = []

    def handler(payload: Any) -> tuple[int, Any]:
        calls.append(payload)
        return 200, {"accepted": True}

    flow.hub.on_method("agent-1", "fleetlift.update", handler)
    release = flow.release()
    draft = flow.deploy(release["id"], "tags.env = 'prod'", status="draft")

    applied = flow.ok(
        "POST", f"/iothub/hubs/{flow.hub_id}/devices/gw-dev/apply", json={"deployment_id": draft["id"]}
    )
    assert applied["applied"] is True
    desired = flow.hub.module_twin("gw-dev", "$edgeAgent")["properties"]["desired"]
    assert desired["modules"]["telemetry"]["settings"]["image"].endswith(DIGEST)
    refused = flow.call(
        "POST", f"/iothub/hubs/{flow.hub_id}/devices/sensor-1/apply", json={"deployment_id": draft["id"]}
    )
    assert refused.status_code == 409

    result = flow.ok(
        "POST",
        f"/iothub/hubs/{flow.hub_id}/devices/update",
        json={"deployment_id": draft["id"], "device_ids": ["agent-1", "agent-2", "stranger"]},
        role="operator",
    )
    outcomes = {item["device_id"]: item for item in result["results"]}
    assert outcomes["agent-1"]["outcome"] == "invoked" and outcomes["agent-1"]["status"] == 200
    assert calls == [
        {"version": 1, "action": "check", "deployment_id": draft["id"], "release_id": release["id"]}
    ]
    assert outcomes["agent-2"]["outcome"] == "desired_property"
    update = flow.hub.twin("agent-2")["properties"]["desired"]["fleetlift"]["update"]
    assert update["deployment_id"] == draft["id"] and update["sequence"] > 0
    assert outcomes["stranger"]["outcome"] == "failed"


def test_layered_deployment_sets_only_module_paths(flow: Flow) -> None:
    _edge_fleet(flow)
    release = flow.release()
    body = {"hub_id": flow.hub_id, "layered": True}
    deployment = flow.deploy(release["id"], "tags.env = 'prod'", iothub=body, priority=50)
    flow.work()
    delivery = flow.delivery(deployment["id"])
    assert delivery["state"] == "applied" and delivery["layered"] is True
    content = flow.hub.configurations[delivery["configuration_id"]]["content"]["modulesContent"]
    assert set(content["$edgeAgent"]) == {"properties.desired.modules.telemetry"}
    assert "properties.desired" not in content["$edgeAgent"]


def test_the_background_worker_syncs_due_hubs(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, log_level="WARNING", reconciler_enabled=False, iothub_worker_interval_seconds=0.1
    )
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    hub = IotHubEmulator(config_ops_per_minute=None)
    hub.add_device("gw-1", tags={"env": "prod"}, edge=True)
    app.state.iothub_clients.transport = hub.transport()
    with TestClient(app) as client:
        flow = Flow(client, settings.default_tenant, settings, hub)
        created = flow.ok(
            "POST",
            "/iothub/hubs",
            201,
            json={
                "name": "periodic",
                "connection_string": hub.connection_string,
                "sync_interval_seconds": 60,
            },
        )
        for _ in range(100):  # the worker's first pass syncs it: it was never synced
            if flow.ok("GET", f"/iothub/hubs/{created['id']}")["last_sync"]["status"] == "ok":
                break
            time.sleep(0.05)
        device = flow.ok("GET", "/devices/gw-1")
        assert device["status"] == "accepted" and device["tags"] == {"env": "prod"}
        assert app.state.iothub_worker.passes > 0


def test_a_hub_sealed_under_another_key_is_refused_clearly_and_said_once(
    flow: Flow, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = flow.ok(
        "POST",
        "/iothub/hubs",
        201,
        json={
            "name": "resealed",
            "connection_string": flow.hub.connection_string,
            "sync_interval_seconds": 60,
        },
    )
    hub_id = flow.hub_id = created["id"]  # never synced: due at the next pass
    flow.deploy(flow.release()["id"], "tags.env = 'prod'")  # a configuration waiting to be created
    # A second server on the same database with a secrets key of its own (a replaced data directory).
    other_settings = flow.settings.model_copy(
        update={"data_dir": tmp_path, "database_url": flow.settings.resolved_database_url}
    )
    other_app = create_app(other_settings)
    other_app.state.iothub_clients.transport = flow.hub.transport()
    with TestClient(other_app) as other_client:
        other = Flow(other_client, flow.tenant, other_settings, flow.hub, hub_id=hub_id)
        refused = other.call("POST", f"/iothub/hubs/{hub_id}/sync")
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "cannot be opened with this server's secrets key" in refused.json()["detail"]
        worker = other_app.state.iothub_worker
        assert other_client.portal is not None
        capture_fleetlift_logs(caplog, monkeypatch)
        for _ in range(3):
            other_client.portal.call(partial(worker.run_once, status_interval=3600))
        about_this_hub = [r for r in caplog.records if hub_id in r.getMessage()]
        # Three passes, said once, without a traceback (the sync's failure is on the hub, and the
        # refused sync above made it not due again before its interval).
        said = [r.getMessage().split(" for hub ")[0] for r in about_this_hub]
        assert said == ["iothub pass failed"], [r.getMessage() for r in about_this_hub]
        for record in about_this_hub:
            assert record.levelno == logging.WARNING and not record.exc_info
            assert "give it its connection string again" in record.getMessage()
        last_sync = other.ok("GET", f"/iothub/hubs/{hub_id}")["last_sync"]
        assert last_sync["status"] != "ok" and "connection string again" in last_sync["error"], last_sync
        # The remedy it names: the connection string again, sealed now under this server's key.
        other.ok("PATCH", f"/iothub/hubs/{hub_id}", json={"connection_string": flow.hub.connection_string})
        assert other.sync()["hub_id"] == hub_id


def test_a_rotated_key_reaches_every_replica(flow: Flow) -> None:
    hub_id = flow.register()
    flow.hub.add_device("gw-rot-1", tags={"env": "prod"})
    # A second replica on the same database and secrets key, with its own client cache.
    replica_app = create_app(flow.settings)
    replica_app.state.iothub_clients.transport = flow.hub.transport()
    with TestClient(replica_app) as replica_client:
        replica = Flow(replica_client, flow.tenant, flow.settings, flow.hub, hub_id=hub_id)
        assert flow.sync()["synced"] == 1 and replica.sync()["synced"] == 1  # both hold a client now

        flow.hub.key = base64.b64encode(b"regenerated in the portal, 32 b.").decode()
        refused = flow.call("POST", f"/iothub/hubs/{hub_id}/sync")
        assert refused.status_code >= 400 and flow.hub.key not in refused.text
        changed = flow.call(
            "PATCH", f"/iothub/hubs/{hub_id}", json={"connection_string": flow.hub.connection_string}
        )
        assert changed.status_code == 200, changed.text

        assert flow.sync()["synced"] == 1
        assert replica.sync()["synced"] == 1  # the replica made a new client from the new string
        assert flow.ok("GET", f"/iothub/hubs/{hub_id}")["last_sync"]["status"] == "ok"
