"""All SQL of deployments and their per-device states; fleet-sized work is set-based."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Engine,
    Insert,
    Select,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    except_,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from fleetlift.deployments.models import Deployment, DeploymentDevice
from fleetlift.deployments.rules import (
    CANCELLABLE,
    FAILURES,
    PHASES_FOR_STATUS,
    TERMINAL,
    DeploymentStatus,
    DeviceUpdateState,
    Phase,
)
from fleetlift.devices.models import Device
from fleetlift.devices.rules import DeviceStatus
from fleetlift.pagination import PageRequest
from fleetlift.releases.models import Release
from fleetlift.sqljson import in_list, json_key_equals

_TERMINAL = [state.value for state in TERMINAL]
# Rows added by one assignment above which the table's planner statistics are refreshed at once.
ANALYZE_AFTER_ROWS = 10_000
_FAILURES = [state.value for state in FAILURES]


@dataclass(frozen=True)
class DeploymentFilter:
    status: DeploymentStatus | None = None
    release_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Eligibility:
    """Which devices a release may be assigned to, as SQL over the device table."""

    release: Release
    explicit_ids: Sequence[str]
    condition: ColumnElement[bool] | None
    # What every targeted device must also be (an IoT Edge deployment: IoT Edge devices only).
    required: ColumnElement[bool] | None = None


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def get(session: Session, *, tenant_id: str, deployment_id: str) -> Deployment | None:
    """A deployment that has not been deleted."""
    deployment = session.get(Deployment, (tenant_id, deployment_id))
    if deployment is None or deployment.deleted_at is not None:
        return None
    return deployment


def add(session: Session, deployment: Deployment) -> None:
    session.add(deployment)


def _targets(session: Session, tenant_id: str, eligibility: Eligibility) -> ColumnElement[bool]:
    """Devices of the tenant matched by the explicit IDs or the condition."""
    parts: list[ColumnElement[bool]] = []
    if eligibility.explicit_ids:
        parts.append(in_list(Device.id, eligibility.explicit_ids, _dialect(session)))
    if eligibility.condition is not None:
        parts.append(eligibility.condition)
    targeted = and_(Device.tenant_id == tenant_id, or_(*parts) if parts else literal(False))
    return targeted if eligibility.required is None else and_(targeted, eligibility.required)


def _compatible(session: Session, release: Release) -> ColumnElement[bool]:
    """SQL twin of ``releases.rules.incompatibility`` returning None."""
    dialect = _dialect(session)
    clauses: list[ColumnElement[bool]] = [Device.status == DeviceStatus.ACCEPTED.value]
    if release.device_types:
        clauses.append(in_list(Device.device_type, release.device_types, dialect))
    if release.architectures:
        clauses.append(in_list(Device.architecture, release.architectures, dialect))
    return and_(*clauses)


def _not_on_release(release: Release) -> ColumnElement[bool]:
    return or_(Device.release_id.is_(None), Device.release_id != release.id)


def _assignment(
    session: Session,
    *,
    deployment: Deployment,
    eligibility: Eligibility,
    skip_already_installed: bool,
    now: datetime,
    initial: DeviceUpdateState,
    wave: int,
) -> Insert:
    """The INSERT ... SELECT that adds every eligible, not yet assigned device to the deployment."""
    release = eligibility.release
    where = and_(_targets(session, deployment.tenant_id, eligibility), _compatible(session, release))
    if skip_already_installed:
        where = and_(where, _not_on_release(release))
    # The devices to add are the targeted ones EXCEPT those the deployment has: a set operation
    # (hashed or sorted), never a per-device probe. A correlated NOT EXISTS was planned, on tables
    # without statistics, as a nested loop over an index of the deployment that this same INSERT
    # keeps filling: quadratic (10,000 devices took 2 s on PostgreSQL, 100,000 would take minutes);
    # NOT IN turns into such a loop once the set no longer fits in work_mem.
    new_ids = except_(
        select(Device.id).where(where),
        select(DeploymentDevice.device_id).where(
            DeploymentDevice.tenant_id == deployment.tenant_id,
            DeploymentDevice.deployment_id == deployment.id,
        ),
    )
    device = aliased(Device, name="newcomer")
    state: ColumnElement[str] = literal(initial.value)
    if not skip_already_installed:
        state = case(
            (device.release_id == release.id, literal(DeviceUpdateState.ALREADY_INSTALLED.value)),
            else_=literal(initial.value),
        )
    source = select(
        literal(deployment.tenant_id),
        literal(deployment.id),
        device.id,
        state,
        literal(0),
        literal(wave),
        literal(now, type_=DeploymentDevice.__table__.c.updated_at.type),
    ).where(device.tenant_id == deployment.tenant_id, device.id.in_(new_ids))
    return insert(DeploymentDevice).from_select(
        ["tenant_id", "deployment_id", "device_id", "state", "attempts", "wave", "updated_at"], source
    )


def assign_devices(
    session: Session,
    *,
    deployment: Deployment,
    eligibility: Eligibility,
    skip_already_installed: bool,
    now: datetime,
    initial: DeviceUpdateState = DeviceUpdateState.PENDING,
    wave: int = 0,
) -> int:
    """Add every eligible, not yet assigned device to the deployment in one INSERT ... SELECT, in
    state ``initial`` (``waiting`` for a rollout, whose waves release them) and wave ``wave``.

    Devices already on the release are either left out (update triggers) or recorded straight as
    ``already_installed`` (deployments, so their reports show the whole target)."""
    statement = _assignment(
        session,
        deployment=deployment,
        eligibility=eligibility,
        skip_already_installed=skip_already_installed,
        now=now,
        initial=initial,
        wave=wave,
    )
    result = session.execute(statement, execution_options={"preserve_rowcount": True})
    assigned = cast("CursorResult[Any]", result).rowcount or 0
    if assigned >= ANALYZE_AFTER_ROWS and _dialect(session) == "postgresql":
        # A deployment of a large fleet adds as many rows at once. Until the table's statistics
        # know them, PostgreSQL plans each report's update by primary key as a scan of the whole
        # deployment through another index (measured: 18 ms instead of 0.05 ms at 100,000 rows;
        # docs/benchmarks.md), and autovacuum may be off or a minute away: refresh them now, as
        # PostgreSQL advises after a bulk load.
        session.execute(text("ANALYZE deployment_devices"))
    return assigned


def join_devices(
    session: Session, *, deployment: Deployment, eligibility: Eligibility, now: datetime, wave: int
) -> list[tuple[str, str]]:
    """Add the eligible devices that are not assigned yet (a dynamic rollout's newcomers) as
    ``waiting`` in ``wave``, in one INSERT ... SELECT; their IDs and states."""
    statement = _assignment(
        session,
        deployment=deployment,
        eligibility=eligibility,
        skip_already_installed=False,
        now=now,
        initial=DeviceUpdateState.WAITING,
        wave=wave,
    ).returning(DeploymentDevice.device_id, DeploymentDevice.state)
    return [(device_id, state) for device_id, state in session.execute(statement)]


def count_eligible(session: Session, *, tenant_id: str, eligibility: Eligibility) -> int:
    """How many targeted devices an update trigger would accept."""
    query = (
        select(func.count())
        .select_from(Device)
        .where(
            _targets(session, tenant_id, eligibility),
            _compatible(session, eligibility.release),
            _not_on_release(eligibility.release),
        )
    )
    return session.scalar(query) or 0


def ineligible_devices(
    session: Session, *, tenant_id: str, eligibility: Eligibility, limit: int
) -> Sequence[Device]:
    """Targeted devices an update trigger would refuse, so each can be told why."""
    query = (
        select(Device)
        .where(
            _targets(session, tenant_id, eligibility),
            not_(and_(_compatible(session, eligibility.release), _not_on_release(eligibility.release))),
        )
        .order_by(Device.id)
        .limit(limit)
    )
    return session.scalars(query).all()


def _status_clause(status: DeploymentStatus, now: datetime) -> ColumnElement[bool]:
    """SQL twin of ``rules.deployment_status``: deployments that currently show ``status``."""
    devices = and_(
        DeploymentDevice.tenant_id == Deployment.tenant_id,
        DeploymentDevice.deployment_id == Deployment.id,
    )
    has_devices = exists().where(devices)
    has_open = exists().where(devices, DeploymentDevice.state.not_in(_TERMINAL))
    has_failure = exists().where(devices, DeploymentDevice.state.in_(_FAILURES))
    finished = and_(has_devices, not_(has_open))
    phases = Deployment.phase.in_([phase.value for phase in PHASES_FOR_STATUS[status]])
    started = or_(Deployment.start_at.is_(None), Deployment.start_at <= now)
    extra: dict[DeploymentStatus, ColumnElement[bool]] = {
        DeploymentStatus.DRAFT: true(),
        DeploymentStatus.CANCELLED: true(),
        DeploymentStatus.COMPLETED: and_(finished, not_(has_failure)),
        DeploymentStatus.FAILED: and_(finished, has_failure),
        DeploymentStatus.PAUSED: not_(finished),
        DeploymentStatus.SCHEDULED: and_(not_(finished), not_(started)),
        DeploymentStatus.ACTIVE: and_(not_(finished), started),
    }
    return and_(phases, extra[status])


def list_deployments(
    session: Session, *, tenant_id: str, filters: DeploymentFilter, page: PageRequest, now: datetime
) -> Sequence[Deployment]:
    """Deployments newest first, one row more than the page."""
    query = select(Deployment).where(Deployment.tenant_id == tenant_id, Deployment.deleted_at.is_(None))
    if filters.release_id is not None:
        query = query.where(Deployment.release_id == filters.release_id)
    if filters.status is not None:
        query = query.where(_status_clause(filters.status, now))
    if page.after:
        query = query.where(Deployment.id < page.after[0])
    for key, value in filters.labels.items():
        query = query.where(json_key_equals(Deployment.labels, key, value, _dialect(session)))
    return session.scalars(query.order_by(Deployment.id.desc()).limit(page.limit + 1)).all()


def list_deployment_devices(
    session: Session, *, tenant_id: str, deployment_id: str, state: str | None, page: PageRequest
) -> Sequence[DeploymentDevice]:
    """Per-device states of a deployment by device ID, one row more than the page."""
    query = select(DeploymentDevice).where(
        DeploymentDevice.tenant_id == tenant_id, DeploymentDevice.deployment_id == deployment_id
    )
    if state is not None:
        query = query.where(DeploymentDevice.state == state)
    if page.after:
        query = query.where(DeploymentDevice.device_id > page.after[0])
    query = query.order_by(DeploymentDevice.device_id).limit(page.limit + 1)
    return session.scalars(query).all()


def get_device_state(
    session: Session, *, tenant_id: str, deployment_id: str, device_id: str
) -> DeploymentDevice | None:
    return session.get(DeploymentDevice, (tenant_id, deployment_id, device_id))


def cancel_unstarted(session: Session, *, deployment: Deployment, now: datetime) -> list[tuple[str, int]]:
    """Cancel every device of the deployment that has not started installing; (device, wave) of each.
    Devices installing, rebooting or verifying finish what they started."""
    rows = session.execute(
        update(DeploymentDevice)
        .where(
            DeploymentDevice.tenant_id == deployment.tenant_id,
            DeploymentDevice.deployment_id == deployment.id,
            DeploymentDevice.state.in_(sorted(state.value for state in CANCELLABLE)),
        )
        .values(state=DeviceUpdateState.CANCELLED.value, detail="deployment cancelled", updated_at=now)
        .returning(DeploymentDevice.device_id, DeploymentDevice.wave)
        .execution_options(synchronize_session=False)
    )
    return [(device_id, wave) for device_id, wave in rows]


def device_history(
    session: Session, *, tenant_id: str, device_id: str, limit: int
) -> Sequence[tuple[DeploymentDevice, Deployment]]:
    """Every deployment that targeted the device, deleted ones included, newest first."""
    rows = session.execute(
        select(DeploymentDevice, Deployment)
        .join(
            Deployment,
            and_(
                Deployment.tenant_id == DeploymentDevice.tenant_id,
                Deployment.id == DeploymentDevice.deployment_id,
            ),
        )
        .where(DeploymentDevice.tenant_id == tenant_id, DeploymentDevice.device_id == device_id)
        .order_by(Deployment.id.desc())
        .limit(limit)
    )
    return [(row[0], row[1]) for row in rows]


@dataclass(frozen=True)
class PollRow:
    """What one device poll needs: the device's admission, when it was last seen, and the
    deployment it follows now (``None`` fields when there is none)."""

    status: str
    tokens_valid_after: datetime | None
    last_seen_at: datetime | None
    deployment_id: str | None
    state: str | None
    release_id: str | None
    release_row_version: int | None
    mode: str | None = None  # the rollout policy's mode: "forced" or "soft" (None: soft)


def _poll_statement() -> Select[Any]:
    """The device row, outer-joined to its unfinished, released deployment rows (never ``waiting``),
    the live ones among their deployments (active, started, not deleted) and their releases, best
    first, with the rollout's mode (forced or soft): the SQL twin of
    ``rules.effective_deployment`` (highest priority, newest among equals). A row whose deployment
    is not live has NULL deployment columns and sorts last. Built once: every poll runs the same
    cached statement.

    Plain left joins, not a nested join: SQLite materialises a parenthesised join (a scan of every
    deployment); this way each step is an index lookup: the device's primary key,
    ``ix_deployment_devices_device``, then the primary keys of deployments and releases."""
    devices, links = Device.__table__.c, DeploymentDevice.__table__.c
    deployments, releases = Deployment.__table__.c, Release.__table__.c
    now = bindparam("now", type_=Deployment.__table__.c.start_at.type)
    # Finished rows, and rows whose wave has not released them yet, are never offered.
    unoffered = sorted([*_TERMINAL, DeviceUpdateState.WAITING.value])
    terminal: list[ColumnElement[str]] = [literal_column(f"'{state}'") for state in unoffered]
    joined = (
        Device.__table__.outerjoin(
            DeploymentDevice.__table__,
            and_(
                links.tenant_id == devices.tenant_id,
                links.device_id == devices.id,
                links.state.not_in(terminal),
            ),
        )
        .outerjoin(
            Deployment.__table__,
            and_(
                deployments.tenant_id == links.tenant_id,
                deployments.id == links.deployment_id,
                deployments.phase == literal_column(f"'{Phase.ACTIVE.value}'"),
                deployments.deleted_at.is_(None),
                or_(deployments.start_at.is_(None), deployments.start_at <= now),
            ),
        )
        .outerjoin(
            Release.__table__,
            and_(releases.tenant_id == deployments.tenant_id, releases.id == deployments.release_id),
        )
    )
    return (
        select(
            devices.status,
            devices.tokens_valid_after,
            devices.last_seen_at,
            deployments.id,
            links.state,
            deployments.release_id,
            releases.row_version,
            Deployment.__table__.c.policy["mode"].as_string(),
        )
        .select_from(joined)
        .where(devices.tenant_id == bindparam("tenant_id"), devices.id == bindparam("device_id"))
        .order_by(
            deployments.id.is_(None),
            deployments.priority.desc(),
            deployments.created_at.desc(),
            deployments.id.desc(),
        )
        .limit(1)
    )


_POLL = _poll_statement()


def poll_row(session: Session, *, tenant_id: str, device_id: str, now: datetime) -> PollRow | None:
    """One indexed query for a device poll; ``None`` when the device does not exist."""
    row = session.execute(_POLL, {"tenant_id": tenant_id, "device_id": device_id, "now": now}).first()
    return None if row is None else PollRow(*row)


# Connections of the poll query's own pool on a network database; as many threads run polls.
POLL_QUERY_CONNECTIONS = 8


class PollQuery:
    """``poll_row`` for the hot path: the same statement, compiled once for an engine's dialect and
    run on the driver's own cursor.

    A poll is the request devices send most, and SQLAlchemy's work around each execution (cache
    key, session and transaction bookkeeping, parameter and row processing) cost several times
    the indexed query itself (docs/benchmarks.md). The SQL is still generated from the models;
    parameters and results still go through the column types' own processors, so values are
    exactly what ``poll_row`` returns (a test compares both)."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = _POLL.compile(dialect=dialect)
        self._own_engine = dialect.name != "sqlite"
        if self._own_engine:
            # A pool of its own, sized to the threads that poll (``POLL_QUERY_CONNECTIONS``), so
            # no connection is opened and closed under load (each is a new server process), and
            # without the ping before each checkout. The single SELECT runs in autocommit and no
            # rollback is sent when the connection goes back: either would be a second round
            # trip per poll. A connection that broke is invalidated and the poll fails once (the
            # route then answers it, on a fresh connection).
            engine = create_engine(
                engine.url,
                pool_size=POLL_QUERY_CONNECTIONS,
                max_overflow=0,
                pool_pre_ping=False,
                pool_reset_on_return=None,
                isolation_level="AUTOCOMMIT",
            )
        self._engine = engine
        # On PostgreSQL through psycopg the poll runs on the event loop (``run_async``).
        self.runs_on_loop = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._connect_args = dialect.create_connect_args(engine.url) if self.runs_on_loop else ([], {})
        self._loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary()
        )
        self._sql = compiled.string
        self._params = compiled.construct_params({"tenant_id": "", "device_id": "", "now": None})
        self._order = list(compiled.positiontup or ()) if compiled.positional else None
        self._bind: list[tuple[str, Callable[[Any], Any]]] = []
        for name in self._params:
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._bind.append((name, process))
        self._result = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in _POLL.selected_columns
        ]

    def _arguments(self, tenant_id: str, device_id: str, now: datetime) -> Any:
        params = {**self._params, "tenant_id": tenant_id, "device_id": device_id, "now": now}
        for name, process in self._bind:
            params[name] = process(params[name])
        return params if self._order is None else [params[name] for name in self._order]

    def _row(self, row: Sequence[Any] | None) -> PollRow | None:
        if row is None:
            return None
        values: list[Any] = [
            value if process is None or value is None else process(value)
            for value, process in zip(row, self._result, strict=True)
        ]
        return PollRow(*values)

    def run(self, *, tenant_id: str, device_id: str, now: datetime) -> PollRow | None:
        """``poll_row`` outside any session, on a pooled connection of its own."""
        arguments = self._arguments(tenant_id, device_id, now)
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, arguments)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self._engine.dialect.loaded_dbapi.Error:
            connection.invalidate()
            raise
        finally:
            connection.close()  # back to the pool
        return self._row(row)

    async def run_async(self, *, tenant_id: str, device_id: str, now: datetime) -> PollRow | None:
        """``run`` on the event loop, over psycopg's asynchronous connections (``runs_on_loop``):
        no hand-off to a worker thread and back, which on a network database cost more than the
        query. At most ``POLL_QUERY_CONNECTIONS`` per event loop; a poll waits for a free one."""
        arguments = self._arguments(tenant_id, device_id, now)
        loop = asyncio.get_running_loop()
        pool = self._loop_pools.get(loop)
        if pool is None:
            pool = self._loop_pools[loop] = _LoopConnections(self._connect, POLL_QUERY_CONNECTIONS)
        connection = await pool.acquire()
        try:
            cursor = connection.cursor()
            try:
                await cursor.execute(self._sql, arguments)
                row = await cursor.fetchone()
            finally:
                await cursor.close()
        except BaseException:
            await pool.discard(connection)  # broken, or left mid-query: never reused
            raise
        pool.release(connection)
        return self._row(row)

    async def _connect(self) -> Any:
        dbapi = self._engine.dialect.loaded_dbapi
        return await dbapi.AsyncConnection.connect(
            *self._connect_args[0], autocommit=True, **self._connect_args[1]
        )

    def close(self) -> None:
        """Close the connections of its own pool, if it has one (``aclose``: those of the loop)."""
        if self._own_engine:
            self._engine.dispose()

    async def aclose(self) -> None:
        """Close the asynchronous connections of the running event loop, and the pool's."""
        pool = self._loop_pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
        self.close()


class _LoopConnections:
    """A few asynchronous connections of one event loop, opened on demand and kept."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], size: int) -> None:
        self._connect = connect
        self._free = asyncio.Semaphore(size)
        self._idle: list[Any] = []

    async def acquire(self) -> Any:
        await self._free.acquire()
        try:
            return self._idle.pop() if self._idle else await self._connect()
        except BaseException:
            self._free.release()
            raise

    def release(self, connection: Any) -> None:
        self._idle.append(connection)
        self._free.release()

    async def discard(self, connection: Any) -> None:
        self._free.release()
        with contextlib.suppress(Exception):
            await connection.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.close()


def advance_device_state(
    session: Session,
    *,
    tenant_id: str,
    deployment_id: str,
    device_id: str,
    current: DeviceUpdateState,
    new: DeviceUpdateState,
    now: datetime,
) -> int | None:
    """Move one device's state from ``current`` to ``new`` unless something else moved it first;
    the device's wave when it moved, ``None`` when it did not."""
    return session.scalar(
        update(DeploymentDevice)
        .where(
            DeploymentDevice.tenant_id == tenant_id,
            DeploymentDevice.deployment_id == deployment_id,
            DeploymentDevice.device_id == device_id,
            DeploymentDevice.state == current.value,
        )
        .values(state=new.value, updated_at=now)
        .returning(DeploymentDevice.wave)
        .execution_options(synchronize_session=False)
    )


# -- device reports, recorded in batches --------------------------------------------------------

ReportKey = tuple[str, str, str]  # (tenant, deployment, device)


@dataclass(frozen=True)
class ReportRow:
    """What recording a report needs: the device's state in the deployment, and its admission."""

    state: str
    wave: int
    release_id: str
    device_status: str
    tokens_valid_after: datetime | None


def lock_report_rows(session: Session, keys: Sequence[ReportKey]) -> dict[ReportKey, ReportRow]:
    """The per-device rows of these (tenant, deployment, device) keys, locked for this transaction,
    with their device's admission, in one statement; keys with no row are absent.

    PostgreSQL: ``FOR UPDATE OF deployment_devices`` in key order, so two batches (or a batch and
    a single report) take their locks in the same order and never deadlock each other. SQLite has
    one writer at a time: a write that changes nothing takes the database's write lock first, so
    what is read is what the batch then changes (a read first could be overtaken by another
    process's commit)."""
    if not keys:
        return {}
    ordered = sorted(set(keys))
    dialect = _dialect(session)
    if dialect != "postgresql":
        session.execute(
            update(DeploymentDevice)
            .where(false())
            .values(state=DeploymentDevice.state)
            .execution_options(synchronize_session=False)
        )
    # The tables, not the mapped classes: no ORM compile and row bookkeeping.
    rows, deployments, devices = (
        cast("Table", model.__table__) for model in (DeploymentDevice, Deployment, Device)
    )
    row, deployment, device = rows.c, deployments.c, devices.c
    query = (
        select(
            row.tenant_id,
            row.deployment_id,
            row.device_id,
            row.state,
            row.wave,
            deployment.release_id,
            device.status,
            device.tokens_valid_after,
        )
        .select_from(
            rows.join(
                deployments, and_(deployment.tenant_id == row.tenant_id, deployment.id == row.deployment_id)
            ).join(devices, and_(device.tenant_id == row.tenant_id, device.id == row.device_id))
        )
        .where(tuple_(row.tenant_id, row.deployment_id, row.device_id).in_(ordered))
        .order_by(row.tenant_id, row.deployment_id, row.device_id)
    )
    if dialect == "postgresql":
        query = query.with_for_update(of=rows)
    return {
        (tenant_id, deployment_id, device_id): ReportRow(*found)
        for tenant_id, deployment_id, device_id, *found in session.execute(query)
    }


@dataclass(frozen=True)
class StateChange:
    """A device's new state in a deployment, from one of its reports."""

    key: ReportKey
    state: str
    detail: str | None


def write_device_states(session: Session, changes: Sequence[StateChange], now: datetime) -> None:
    """Write the new states of many (locked) rows in one executemany UPDATE by primary key."""
    if not changes:
        return
    table = cast("Table", DeploymentDevice.__table__)
    session.execute(
        update(table)
        .where(
            table.c.tenant_id == bindparam("k_tenant"),
            table.c.deployment_id == bindparam("k_deployment"),
            table.c.device_id == bindparam("k_device"),
        )
        .values(state=bindparam("v_state"), detail=bindparam("v_detail"), updated_at=bindparam("v_at")),
        [
            {
                "k_tenant": change.key[0],
                "k_deployment": change.key[1],
                "k_device": change.key[2],
                "v_state": change.state,
                "v_detail": change.detail,
                "v_at": now,
            }
            for change in changes
        ],
    )


def record_installed_releases(
    session: Session, installed: Sequence[tuple[str, str, str]], now: datetime
) -> None:
    """(tenant, device, release) of devices that now run a release, in one executemany UPDATE
    (the row version moves, as any change to a device does)."""
    if not installed:
        return
    table = cast("Table", Device.__table__)
    session.execute(
        update(table)
        .where(table.c.tenant_id == bindparam("k_tenant"), table.c.id == bindparam("k_device"))
        .values(
            release_id=bindparam("v_release"),
            updated_at=bindparam("v_at"),
            row_version=table.c.row_version + 1,
        ),
        [
            {"k_tenant": tenant, "k_device": device, "v_release": release, "v_at": now}
            for tenant, device, release in installed
        ],
    )
