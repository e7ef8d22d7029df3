"""All SQL of rollouts: locking a deployment for one step, the per-wave counts, placing devices in
waves, and the set-based moves (release, time out, retry, join, roll back). Never commits; never a
loop over devices: every statement works on a whole wave, or a whole deployment, at once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    and_,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from fleetlift.deployments.models import Deployment, DeploymentDevice
from fleetlift.deployments.rules import (
    FAILURES,
    IN_FLIGHT,
    RETRYABLE,
    DeviceUpdateState,
    Phase,
)
from fleetlift.devices.models import Device
from fleetlift.events import repository as events
from fleetlift.sqljson import in_list

S = DeviceUpdateState
DEVICE_EVENT = "device.update_state"
# Marks a deployment's devices while activation places them in waves.
UNPLACED = -1


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _rowcount(result: Any) -> int:
    return cast("CursorResult[Any]", result).rowcount or 0


def _of(deployment: Deployment) -> ColumnElement[bool]:
    return and_(
        DeploymentDevice.tenant_id == deployment.tenant_id, DeploymentDevice.deployment_id == deployment.id
    )


def _values(states: frozenset[DeviceUpdateState] | Sequence[DeviceUpdateState]) -> list[str]:
    return sorted(state.value for state in states)


# -- locking -------------------------------------------------------------------------------------


def lock(session: Session, *, tenant_id: str, deployment_id: str, skip_locked: bool) -> Deployment | None:
    """The deployment, locked for this transaction, as last committed; ``None`` when it does not
    exist or (``skip_locked``) another transaction holds it.

    PostgreSQL: ``SELECT ... FOR UPDATE [SKIP LOCKED]`` on its row, so two replicas never step the
    same rollout at once and the second sees what the first committed. SQLite has one writer at a
    time: a no-op UPDATE of the row takes the database's write lock first, so a second process
    waits for it and then reads the committed state (a read first would risk a stale snapshot)."""
    where = and_(Deployment.tenant_id == tenant_id, Deployment.id == deployment_id)
    query = select(Deployment).where(where).execution_options(populate_existing=True)
    if _dialect(session) == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    else:
        session.execute(
            update(Deployment)
            .where(where)
            .values(rollout_state=Deployment.rollout_state)
            .execution_options(synchronize_session=False)
        )
    return session.scalars(query).first()


def candidates(
    session: Session, *, now: datetime, limit: int, after: tuple[str, str] | None = None
) -> list[tuple[str, str]]:
    """(tenant, deployment) of the rollouts that may have work: active, started, not deleted, and
    not finished (a finished dynamic rollout still takes in devices that match later); a page of
    ``limit`` in (tenant, ID) order, after ``after``."""
    query = select(Deployment.tenant_id, Deployment.id).where(
        Deployment.phase == Phase.ACTIVE.value,
        Deployment.deleted_at.is_(None),
        or_(Deployment.start_at.is_(None), Deployment.start_at <= now),
        or_(Deployment.rollout_state != "finished", Deployment.policy["dynamic"].as_boolean()),
    )
    if after is not None:
        query = query.where(
            or_(
                Deployment.tenant_id > after[0],
                and_(Deployment.tenant_id == after[0], Deployment.id > after[1]),
            )
        )
    query = query.order_by(Deployment.tenant_id, Deployment.id).limit(limit)
    return [(tenant, deployment) for tenant, deployment in session.execute(query)]


# -- counts --------------------------------------------------------------------------------------

WaveCounts = dict[int, dict[DeviceUpdateState, int]]


def wave_state_counts(
    session: Session, *, tenant_id: str, deployment_ids: Sequence[str]
) -> dict[str, WaveCounts]:
    """Devices per wave and state of several deployments, in one grouped query."""
    found: dict[str, WaveCounts] = defaultdict(lambda: defaultdict(dict))
    if not deployment_ids:
        return found
    rows = session.execute(
        select(DeploymentDevice.deployment_id, DeploymentDevice.wave, DeploymentDevice.state, func.count())
        .where(
            DeploymentDevice.tenant_id == tenant_id,
            in_list(DeploymentDevice.deployment_id, deployment_ids, _dialect(session)),
        )
        .group_by(DeploymentDevice.deployment_id, DeploymentDevice.wave, DeploymentDevice.state)
    )
    for deployment_id, wave, state, count in rows:
        found[deployment_id][wave][DeviceUpdateState(state)] = count
    return found


def wave_size(session: Session, *, deployment: Deployment, wave: int) -> int:
    """How many devices a wave holds."""
    query = (
        select(func.count())
        .select_from(DeploymentDevice)
        .where(_of(deployment), DeploymentDevice.wave == wave)
    )
    return session.scalar(query) or 0


# -- placing devices in waves --------------------------------------------------------------------


def _tag(key: str) -> ColumnElement[str]:
    """A device tag's value as text (NULL when the device has no such tag)."""
    return cast("ColumnElement[str]", Device.tags[key].as_string())


def _device_where(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """Rows whose device (same tenant) meets ``conditions``: a correlated lookup by primary key."""
    return exists().where(
        Device.tenant_id == DeploymentDevice.tenant_id, Device.id == DeploymentDevice.device_id, *conditions
    )


def tag_values(session: Session, *, deployment: Deployment, key: str) -> list[str]:
    """The distinct values of a device tag among the deployment's devices, sorted."""
    value = _tag(key)
    query = (
        select(value)
        .distinct()
        .select_from(DeploymentDevice)
        .join(
            Device,
            and_(Device.tenant_id == DeploymentDevice.tenant_id, Device.id == DeploymentDevice.device_id),
        )
        .where(_of(deployment), value.is_not(None))
    )
    return sorted(str(v) for v in session.scalars(query) if v is not None)


def _place(session: Session, deployment: Deployment, wave: int, *conditions: ColumnElement[bool]) -> int:
    result = session.execute(
        update(DeploymentDevice)
        .where(_of(deployment), DeploymentDevice.wave == UNPLACED, *conditions)
        .values(wave=wave)
        .execution_options(synchronize_session=False, preserve_rowcount=True)
    )
    return _rowcount(result)


def place_by_ids(session: Session, *, deployment: Deployment, wave: int, device_ids: Sequence[str]) -> int:
    """Put the unplaced devices named in ``device_ids`` in ``wave``; how many."""
    return _place(
        session, deployment, wave, in_list(DeploymentDevice.device_id, device_ids, _dialect(session))
    )


def place_by_tag(session: Session, *, deployment: Deployment, wave: int, key: str, value: str) -> int:
    """Put the unplaced devices whose tag ``key`` is ``value`` in ``wave``; how many."""
    return _place(session, deployment, wave, _device_where(_tag(key) == value))


def place_first(session: Session, *, deployment: Deployment, wave: int, count: int) -> int:
    """Put the first ``count`` unplaced devices, in device-ID order, in ``wave``; how many."""
    if count <= 0:
        return 0
    unplaced = [_of(deployment), DeploymentDevice.wave == UNPLACED]
    last = _kth_device(session, unplaced, count)
    return _place(session, deployment, wave, *([] if last is None else [DeploymentDevice.device_id <= last]))


def _kth_device(session: Session, where: Sequence[ColumnElement[bool]], k: int) -> str | None:
    """The ``k``-th device ID (in ID order) among the rows ``where`` selects; ``None`` when fewer.

    Taking "the first k" as "every ID up to the k-th" turns the UPDATE into a range on the primary
    key: an ``IN (SELECT ... ORDER BY ... LIMIT k)`` was planned as a join of the whole deployment
    against the subquery, quadratic on a freshly filled table without statistics (20,000 devices:
    seconds per statement on PostgreSQL). Callers hold the deployment's lock, so the rows cannot
    change between the two statements."""
    query = (
        select(DeploymentDevice.device_id)
        .where(*where)
        .order_by(DeploymentDevice.device_id)
        .offset(k - 1)
        .limit(1)
    )
    return session.scalar(query)


def place_rest(session: Session, *, deployment: Deployment, wave: int) -> int:
    """Put every device not placed yet in ``wave``; how many."""
    return _place(session, deployment, wave)


def count_unplaced(session: Session, *, deployment: Deployment) -> int:
    query = (
        select(func.count())
        .select_from(DeploymentDevice)
        .where(_of(deployment), DeploymentDevice.wave == UNPLACED)
    )
    return session.scalar(query) or 0


# -- set-based moves -----------------------------------------------------------------------------


def _moved(session: Session, statement: Any) -> list[tuple[str, int]]:
    rows = session.execute(statement.returning(DeploymentDevice.device_id, DeploymentDevice.wave))
    return [(device_id, wave) for device_id, wave in rows]


def _window_filter(tag: str | None, open_values: Sequence[str] | None) -> list[ColumnElement[bool]]:
    """Rows whose device's window tag is one of ``open_values`` (or that have none)."""
    if tag is None or open_values is None:
        return []
    value = _tag(tag)
    allowed: ColumnElement[bool] = value.is_(None)
    if open_values:
        allowed = or_(allowed, value.in_(list(open_values)))
    return [_device_where(allowed)]


def waiting_window_values(session: Session, *, deployment: Deployment, wave: int, tag: str) -> list[str]:
    """The distinct window texts (tag ``tag``) among the devices waiting in ``wave`` or an earlier
    (opened) wave."""
    value = _tag(tag)
    query = (
        select(value)
        .distinct()
        .select_from(DeploymentDevice)
        .join(
            Device,
            and_(Device.tenant_id == DeploymentDevice.tenant_id, Device.id == DeploymentDevice.device_id),
        )
        .where(_of(deployment), DeploymentDevice.wave <= wave, DeploymentDevice.state == S.WAITING.value)
    )
    return [str(v) for v in session.scalars(query) if v is not None]


def release(
    session: Session,
    *,
    deployment: Deployment,
    wave: int,
    limit: int | None,
    now: datetime,
    window_tag: str | None = None,
    open_windows: Sequence[str] | None = None,
) -> list[tuple[str, int]]:
    """Release waiting devices of ``wave`` and earlier (opened) waves, where retried devices queue
    (waiting -> pending): at most ``limit``, first by device ID, and with ``window_tag`` only those
    whose window text is among ``open_windows`` (devices without the tag have no window). One
    UPDATE; (device, wave) of each it released."""
    if limit is not None and limit <= 0:
        return []
    where = [
        _of(deployment),
        DeploymentDevice.wave <= wave,
        DeploymentDevice.state == S.WAITING.value,
        *_window_filter(window_tag, open_windows),
    ]
    if limit is not None:
        last = _kth_device(session, where, limit)
        if last is not None:
            where.append(DeploymentDevice.device_id <= last)
    statement = (
        update(DeploymentDevice)
        .where(*where)
        .values(state=S.PENDING.value, released_at=now, updated_at=now, detail=None)
        .execution_options(synchronize_session=False)
    )
    return _moved(session, statement)


def time_out(
    session: Session, *, deployment: Deployment, before: datetime, now: datetime, detail: str
) -> list[tuple[str, int]]:
    """Released devices whose last change is older than ``before`` become ``timed_out``."""
    statement = (
        update(DeploymentDevice)
        .where(
            _of(deployment),
            DeploymentDevice.state.in_(_values(IN_FLIGHT)),
            DeploymentDevice.updated_at < before,
        )
        .values(state=S.TIMED_OUT.value, detail=detail, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _moved(session, statement)


def retry(
    session: Session, *, deployment: Deployment, now: datetime, queue: bool = False
) -> list[tuple[str, int]]:
    """Failed, rolled back and timed out devices get one more attempt each: back to pending, or
    with ``queue`` to waiting, where the reconciler releases them within the concurrency limit."""
    statement = (
        update(DeploymentDevice)
        .where(_of(deployment), DeploymentDevice.state.in_(_values(RETRYABLE)))
        .values(
            state=(S.WAITING if queue else S.PENDING).value,
            detail=None,
            attempts=DeploymentDevice.attempts + 1,
            released_at=None if queue else now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return _moved(session, statement)


def device_waves(
    session: Session, *, deployment: Deployment, device_ids: Sequence[str]
) -> list[tuple[str, int]]:
    """(device, wave) of the named devices of a deployment."""
    if not device_ids:
        return []
    query = select(DeploymentDevice.device_id, DeploymentDevice.wave).where(
        _of(deployment), in_list(DeploymentDevice.device_id, device_ids, _dialect(session))
    )
    return [(device_id, wave) for device_id, wave in session.execute(query)]


# -- rollback ------------------------------------------------------------------------------------


def add_rollback_devices(
    session: Session, *, parent: Deployment, rollback: Deployment, only_failed: bool, now: datetime
) -> list[tuple[str, str]]:
    """Copy the parent's failed (or all released) devices into the rollback deployment, released at
    once, in one INSERT ... SELECT; (device, state) of each. Every one is asked (``pending``), even
    one the server records on the rollback release: a failed device's state is what it reports,
    and a device that is on that release answers ``already_installed`` itself."""
    which = (
        DeploymentDevice.state.in_(_values(FAILURES))
        if only_failed
        else DeploymentDevice.released_at.is_not(None)
    )
    moment = DeploymentDevice.__table__.c.updated_at.type
    source = (
        select(
            literal(rollback.tenant_id),
            literal(rollback.id),
            DeploymentDevice.device_id,
            literal(S.PENDING.value),
            literal(0),
            literal(0),
            literal(now, type_=moment),
            literal(now, type_=moment),
        )
        .select_from(DeploymentDevice)
        .where(_of(parent), which)
    )
    statement = (
        insert(DeploymentDevice)
        .from_select(
            [
                "tenant_id",
                "deployment_id",
                "device_id",
                "state",
                "attempts",
                "wave",
                "released_at",
                "updated_at",
            ],
            source,
        )
        .returning(DeploymentDevice.device_id, DeploymentDevice.state)
    )
    return [(device_id, state) for device_id, state in session.execute(statement)]


# -- events --------------------------------------------------------------------------------------


def emit_device_states(
    session: Session,
    *,
    deployment: Deployment,
    moved: Sequence[tuple[str, int]],
    state: DeviceUpdateState,
    now: datetime,
    detail: str | None = None,
) -> int:
    """One ``device.update_state`` event per moved device, one INSERT ... SELECT per wave touched
    (a few), never one per device."""
    by_wave: dict[int, list[str]] = defaultdict(list)
    for device_id, wave in moved:
        by_wave[wave].append(device_id)
    written = 0
    for wave, device_ids in sorted(by_wave.items()):
        data: dict[str, Any] = {"state": state.value, "wave": wave}
        if detail is not None:
            data["detail"] = detail
        written += events.emit_for_devices(
            session,
            tenant_id=deployment.tenant_id,
            type=DEVICE_EVENT,
            deployment_id=deployment.id,
            device_ids=_named(session, deployment, device_ids),
            data=data,
            now=now,
        )
    return written


def _named(session: Session, deployment: Deployment, device_ids: Sequence[str]) -> Select[Any]:
    return select(DeploymentDevice.device_id).where(
        _of(deployment), in_list(DeploymentDevice.device_id, device_ids, _dialect(session))
    )


def emit(
    session: Session, *, deployment: Deployment, type: str, now: datetime, data: dict[str, Any] | None = None
) -> None:
    """One deployment event."""
    events.emit(
        session, tenant_id=deployment.tenant_id, type=type, now=now, deployment_id=deployment.id, data=data
    )
