"""The reconciler against real databases: a rollout driven to the end by its loop on SQLite and
PostgreSQL, a step that dies before its commit, and two replicas (two engines, two reconcilers)
driving the same rollout on one PostgreSQL at once: no wave opened twice, no device released twice,
the concurrency limit held."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.auth import Role
from fleetlift.channels.memory import MemoryChannel
from fleetlift.context import Caller
from fleetlift.db import make_engine, make_session_factory, transaction
from fleetlift.deployments import service as deployments
from fleetlift.deployments.models import Deployment, DeploymentDevice
from fleetlift.deployments.rules import IN_FLIGHT, DeviceUpdateState
from fleetlift.deployments.schemas import DeploymentCreate
from fleetlift.devices.models import Device
from fleetlift.events.models import Event
from fleetlift.migrate import upgrade
from fleetlift.releases.models import Release
from fleetlift.rollouts import repository
from fleetlift.rollouts.reconciler import Reconciler
from fleetlift.tenants import repository as tenants

from ..conftest import migrated_schema
from ..fleetlift_logs import capture_fleetlift_logs

S = DeviceUpdateState
Factory = Callable[[str], "sessionmaker[Session]"]


@pytest.fixture(scope="module")
def pg_migrated(pg_url: str) -> Iterator[str]:
    """A schema of this module's own: the session's shared schema may have a server app running
    (the API tests'), whose reconciler would step these rollouts too."""
    with migrated_schema("rec") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleetlift.db'}"
        upgrade(url)
        yield url
    else:
        yield request.getfixturevalue("pg_migrated")


@pytest.fixture
def factory() -> Iterator[Callable[[str], sessionmaker[Session]]]:
    """Session factories on engines of their own (one per server process), disposed afterwards."""
    engines: list[Engine] = []

    def make(url: str) -> sessionmaker[Session]:
        engines.append(make_engine(url))
        return make_session_factory(engines[-1])

    yield make
    for engine in engines:
        engine.dispose()


def fleet(sessions: sessionmaker[Session], size: int) -> tuple[Caller, str]:
    """A tenant of its own with ``size`` accepted devices and a deployable release."""
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        tenants.ensure(session, tenant_id=tenant, name=tenant)
    with transaction(sessions) as session:
        release_id = f"rel_{uuid.uuid4().hex[:12]}"
        session.add(
            Release(
                tenant_id=tenant,
                id=release_id,
                name="fw",
                version="2",
                kind="base",
                payloads=[],
                device_types=[],
                architectures=[],
                validation={"status": "passed"},
                created_by="test",
                created_at=now,
                updated_at=now,
            )
        )
        session.execute(
            insert(Device),
            [
                {
                    "tenant_id": tenant,
                    "id": f"d-{index:04d}",
                    "name": f"d-{index:04d}",
                    "device_type": "gw",
                    "architecture": "arm64",
                    "tags": {"fleet": "sim"},
                    "reported": {},
                    "status": "accepted",
                    "identity": {},
                    "created_at": now,
                    "updated_at": now,
                    "row_version": 1,
                }
                for index in range(size)
            ],
        )
    caller = Caller.of(subject="test", roles=frozenset({Role.ADMIN}), tenant_id=tenant, request_id="req_test")
    return caller, release_id


def start(sessions: sessionmaker[Session], caller: Caller, release_id: str, policy: dict[str, Any]) -> str:
    data = DeploymentCreate.model_validate(
        {
            "name": "sim",
            "release_id": release_id,
            "target": {"condition": "tags.fleet = 'sim'"},
            "policy": policy,
        }
    )
    with sessions() as session:
        return deployments.create(session=session, caller=caller, data=data).deployment.id


def pending(sessions: sessionmaker[Session], tenant: str, deployment_id: str, limit: int = 50) -> list[str]:
    with sessions() as session:
        return list(
            session.scalars(
                select(DeploymentDevice.device_id)
                .where(
                    DeploymentDevice.tenant_id == tenant,
                    DeploymentDevice.deployment_id == deployment_id,
                    DeploymentDevice.state == S.PENDING.value,
                )
                .order_by(DeploymentDevice.device_id)
                .limit(limit)
            )
        )


def in_flight(sessions: sessionmaker[Session], tenant: str, deployment_id: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(DeploymentDevice)
                .where(
                    DeploymentDevice.tenant_id == tenant,
                    DeploymentDevice.deployment_id == deployment_id,
                    DeploymentDevice.state.in_([state.value for state in IN_FLIGHT]),
                )
            )
            or 0
        )


def succeed(sessions: sessionmaker[Session], tenant: str, deployment_id: str, device_id: str) -> None:
    for state in (S.INSTALLING, S.SUCCEEDED):
        with sessions() as session:
            deployments.record_device_report(
                session=session,
                tenant_id=tenant,
                deployment_id=deployment_id,
                device_id=device_id,
                state=state,
            )


def rollout_state(sessions: sessionmaker[Session], tenant: str, deployment_id: str) -> str:
    with sessions() as session:
        deployment = session.get(Deployment, (tenant, deployment_id))
        assert deployment is not None
        return deployment.rollout_state


def event_counts(
    sessions: sessionmaker[Session], tenant: str, deployment_id: str
) -> tuple[Counter[Any], Counter[str], Counter[str]]:
    """(wave_opened per wave, pending events per device, deployment event types)."""
    with sessions() as session:
        rows = session.scalars(
            select(Event).where(Event.tenant_id == tenant, Event.deployment_id == deployment_id)
        ).all()
        opened = Counter(e.data["wave"] for e in rows if e.type == "deployment.wave_opened")
        released = Counter(
            str(e.device_id) for e in rows if e.type == "device.update_state" and e.data["state"] == "pending"
        )
        kinds = Counter(e.type for e in rows if e.type.startswith("deployment."))
        return opened, released, kinds


POLICY = {"waves": [{"count": 5}, {"percent": 30}], "max_concurrent": 12}


def test_the_reconciler_loop_drives_a_rollout_to_the_end(database: str, factory: Factory) -> None:
    sessions = factory(database)
    caller, release_id = fleet(sessions, 40)
    tenant = caller.tenant_id
    deployment_id = start(sessions, caller, release_id, POLICY)
    channel = MemoryChannel()
    reconciler = Reconciler(sessions=sessions, channel=channel, interval=0.05, min_gap=0.01)
    first_wave = pending(sessions, tenant, deployment_id)  # released by the create itself
    most = 0

    async def drive() -> None:
        nonlocal most
        loop = asyncio.create_task(reconciler.run())
        deadline = time.monotonic() + 60
        try:
            while rollout_state(sessions, tenant, deployment_id) != "finished":
                assert time.monotonic() < deadline, "the rollout did not finish"
                most = max(most, in_flight(sessions, tenant, deployment_id))
                for device_id in pending(sessions, tenant, deployment_id, limit=5):
                    await asyncio.to_thread(succeed, sessions, tenant, deployment_id, device_id)
                reconciler.wake()
                await asyncio.sleep(0.01)
        finally:
            reconciler.stop()
            await asyncio.wait_for(loop, 30)

    asyncio.run(drive())
    assert 0 < most <= 12
    opened, released, kinds = event_counts(sessions, tenant, deployment_id)
    assert opened == {0: 1, 1: 1, 2: 1}
    assert len(released) == 40 and set(released.values()) == {1}
    assert kinds["deployment.completed"] == 1 and kinds["deployment.started"] == 1
    assert reconciler.passes > 0
    # every device the loop released was told through the channel, once, after its commit
    assert sorted(channel.devices(tenant)) == sorted(set(released) - set(first_wave))


def test_a_step_that_dies_before_its_commit_leaves_nothing_behind(
    database: str, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = factory(database)
    caller, release_id = fleet(sessions, 10)
    tenant = caller.tenant_id
    deployment_id = start(sessions, caller, release_id, {"waves": [{"count": 4}]})
    for device_id in pending(sessions, tenant, deployment_id):
        succeed(sessions, tenant, deployment_id, device_id)
    reconciler = Reconciler(sessions=sessions)
    real = repository.emit_device_states

    def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("killed mid-step")

    monkeypatch.setattr(repository, "emit_device_states", crash)
    with pytest.raises(RuntimeError):
        reconciler.step(tenant, deployment_id)  # opened wave 1 and released its devices, then died
    assert pending(sessions, tenant, deployment_id) == []  # rolled back: nothing released
    monkeypatch.setattr(repository, "emit_device_states", real)
    assert reconciler.step(tenant, deployment_id) == [f"d-{index:04d}" for index in range(4, 10)]
    assert reconciler.step(tenant, deployment_id) == []  # again: nothing more to do
    opened, released, _ = event_counts(sessions, tenant, deployment_id)
    assert opened == {0: 1, 1: 1} and set(released.values()) == {1} and len(released) == 10


@pytest.mark.postgres
def test_two_replicas_drive_one_rollout_without_opening_a_wave_or_releasing_a_device_twice(
    pg_migrated: str, factory: Factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_fleetlift_logs(caplog, monkeypatch)
    replicas = [factory(pg_migrated), factory(pg_migrated)]  # two engines: two server processes
    fleet_sessions = factory(pg_migrated)
    caller, release_id = fleet(fleet_sessions, 120)
    tenant = caller.tenant_id
    policy = {"waves": [{"count": 10}, {"percent": 25}, {"count": 30}], "max_concurrent": 15}
    deployment_id = start(fleet_sessions, caller, release_id, policy)
    reconcilers = [Reconciler(sessions=sessions) for sessions in replicas]
    stop = threading.Event()
    errors: list[BaseException] = []
    released_by = Counter[int]()
    counting = threading.Lock()

    def replica(index: int) -> None:
        try:
            while not stop.is_set():
                for ids in reconcilers[index].run_once().values():
                    with counting:
                        released_by[index] += len(ids)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=replica, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    most = 0
    deadline = time.monotonic() + 120
    try:
        while rollout_state(fleet_sessions, tenant, deployment_id) != "finished":
            assert time.monotonic() < deadline, "the rollout did not finish"
            assert not errors, errors
            most = max(most, in_flight(fleet_sessions, tenant, deployment_id))
            for device_id in pending(fleet_sessions, tenant, deployment_id, limit=8):
                succeed(fleet_sessions, tenant, deployment_id, device_id)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    # No step failed (other loggers are other tests' apps, alive in this process meanwhile).
    stepping = "fleetlift.rollouts"
    assert not [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(stepping)
    ]
    assert 0 < most <= 15
    opened, released, kinds = event_counts(fleet_sessions, tenant, deployment_id)
    assert opened == {0: 1, 1: 1, 2: 1, 3: 1}  # canary 10, 25% = 30, 30, the remainder 50
    assert len(released) == 120 and set(released.values()) == {1}
    assert kinds["deployment.completed"] == 1 and kinds["deployment.started"] == 1
    assert sum(released_by.values()) == 120 - 10  # the first wave was released by the create
    assert released_by[0] > 0 and released_by[1] > 0  # both replicas did part of the work
    with fleet_sessions() as session:
        states = Counter(
            session.scalars(
                select(DeploymentDevice.state).where(
                    DeploymentDevice.tenant_id == tenant, DeploymentDevice.deployment_id == deployment_id
                )
            )
        )
    assert states == {"succeeded": 120}


def test_a_pass_steps_every_rollout_page_by_page(database: str, factory: Factory) -> None:
    sessions = factory(database)
    caller, release_id = fleet(sessions, 6)
    tenant = caller.tenant_id
    first = start(sessions, caller, release_id, {"waves": [{"count": 1}]})
    second = start(sessions, caller, release_id, {"waves": [{"count": 2}]})
    for deployment_id in (first, second):
        for device_id in pending(sessions, tenant, deployment_id):
            succeed(sessions, tenant, deployment_id, device_id)
    released = Reconciler(sessions=sessions, batch=1).run_once()
    assert len(released[tenant]) == 5 + 4  # the next wave of each, found one per page


@pytest.mark.postgres
def test_a_large_assignment_refreshes_the_planner_statistics(
    pg_migrated: str, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without statistics for the rows a deployment just added, PostgreSQL planned each report's
    update by primary key as a scan of the whole deployment (docs/benchmarks.md): an assignment of
    at least ANALYZE_AFTER_ROWS rows analyzes the table in its own transaction."""
    from fleetlift.deployments import repository as deployment_rows

    sessions = factory(pg_migrated)
    schema = pg_migrated.rsplit("%3D", 1)[1]

    def last_analyzed() -> Any:
        with sessions() as session:
            return session.scalar(
                text(
                    "SELECT last_analyze FROM pg_stat_user_tables "
                    "WHERE schemaname = :schema AND relname = 'deployment_devices'"
                ),
                {"schema": schema},
            )

    caller, release_id = fleet(sessions, 30)
    before = last_analyzed()
    monkeypatch.setattr(deployment_rows, "ANALYZE_AFTER_ROWS", 31)
    start(sessions, caller, release_id, {})  # 30 rows: below the threshold
    assert last_analyzed() == before
    caller, release_id = fleet(sessions, 40)
    start(sessions, caller, release_id, {})
    deadline = time.monotonic() + 10
    while last_analyzed() == before:  # statistics are flushed to the view within a second or so
        assert time.monotonic() < deadline, "deployment_devices was not analyzed"
        time.sleep(0.2)
