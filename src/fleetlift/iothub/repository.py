"""All SQL of the IoT Hub slice: hubs, their leases and syncs, synced devices, configuration revisions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleetlift.deployments.models import Deployment
from fleetlift.devices.models import Device
from fleetlift.iothub.models import IotHub, IotHubConfiguration

# Revisions that may still exist in the hub, or are still to be published there.
LIVE_STATES = ("queued", "applied", "retiring", "failed")


# The deployment a configuration revision delivers.
_ITS_DEPLOYMENT = and_(
    Deployment.tenant_id == IotHubConfiguration.tenant_id,
    Deployment.id == IotHubConfiguration.deployment_id,
)


def get_hub(session: Session, *, tenant_id: str, hub_id: str) -> IotHub | None:
    return session.get(IotHub, (tenant_id, hub_id))


def hub_by_name(session: Session, *, tenant_id: str, name: str) -> IotHub | None:
    return session.scalars(select(IotHub).where(IotHub.tenant_id == tenant_id, IotHub.name == name)).first()


def add(session: Session, row: IotHub | IotHubConfiguration) -> None:
    session.add(row)


def list_hubs(session: Session, *, tenant_id: str, after: str | None, limit: int) -> Sequence[IotHub]:
    """A tenant's hubs by ID, one row more than the page."""
    query = select(IotHub).where(IotHub.tenant_id == tenant_id)
    if after is not None:
        query = query.where(IotHub.id > after)
    return session.scalars(query.order_by(IotHub.id).limit(limit + 1)).all()


def all_hub_keys(session: Session) -> list[tuple[str, str]]:
    """(tenant, hub) of every hub of every tenant, for the worker."""
    return [
        (row[0], row[1]) for row in session.execute(select(IotHub.tenant_id, IotHub.id).order_by(IotHub.id))
    ]


def delete_hub(session: Session, hub: IotHub) -> None:
    """Remove the hub and the record of its configurations (the hub itself is not touched)."""
    session.execute(
        delete(IotHubConfiguration).where(
            IotHubConfiguration.tenant_id == hub.tenant_id, IotHubConfiguration.hub_id == hub.id
        )
    )
    session.delete(hub)


def claim_hub(session: Session, *, tenant_id: str, hub_id: str, now: datetime, until: datetime) -> bool:
    """Take the hub's work lease unless another replica holds it; whether it was taken."""
    result = session.execute(
        update(IotHub)
        .where(
            IotHub.tenant_id == tenant_id,
            IotHub.id == hub_id,
            or_(IotHub.lease_until.is_(None), IotHub.lease_until < now),
        )
        .values(lease_until=until),
        execution_options={"synchronize_session": False},
    )
    return bool(getattr(result, "rowcount", 0))


def release_hub(session: Session, *, tenant_id: str, hub_id: str) -> None:
    session.execute(
        update(IotHub).where(IotHub.tenant_id == tenant_id, IotHub.id == hub_id).values(lease_until=None),
        execution_options={"synchronize_session": False},
    )


def record_sync(
    session: Session,
    *,
    tenant_id: str,
    hub_id: str,
    at: datetime,
    status: str,
    error: str | None,
    counts: Mapping[str, int],
) -> None:
    """Store how a sync went, without a new row version (the hub's ETag is about its settings)."""
    session.execute(
        update(IotHub)
        .where(IotHub.tenant_id == tenant_id, IotHub.id == hub_id)
        .values(
            last_sync_at=at, last_sync_status=status, last_sync_error=error, last_sync_counts=dict(counts)
        ),
        execution_options={"synchronize_session": False},
    )


def upsert_devices(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or refresh one page of synced devices in one statement; how many rows changed.

    New devices are inserted whole; existing ones get the hub's tags, reported properties, identity,
    type and architecture, and a new row version only when one of those differs. Their admission
    status and installed release stay as they are.
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert_of = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert_of(Device).values(list(rows))
    excluded = statement.excluded
    synced = ("tags", "reported", "identity", "device_type", "architecture")
    statement = statement.on_conflict_do_update(
        index_elements=[Device.tenant_id, Device.id],
        set_={
            **{name: excluded[name] for name in synced},
            "updated_at": excluded.updated_at,
            "row_version": Device.row_version + 1,
        },
        where=or_(*[getattr(Device, name).is_distinct_from(excluded[name]) for name in synced]),
    )
    result = session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


def count_hub_devices(session: Session, *, tenant_id: str, hub_id: str) -> int:
    """How many fleetlift devices came from this hub."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Device)
            .where(Device.tenant_id == tenant_id, Device.identity["iothub"].as_string() == hub_id)
        )
        or 0
    )


def hub_devices(
    session: Session, *, tenant_id: str, hub_id: str, device_ids: Sequence[str]
) -> dict[str, Device]:
    """The devices among ``device_ids`` that were synced from this hub, by ID."""
    found: dict[str, Device] = {}
    ids = list(dict.fromkeys(device_ids))
    for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 900]
        for device in session.scalars(
            select(Device).where(
                Device.tenant_id == tenant_id,
                Device.id.in_(chunk),
                Device.identity["iothub"].as_string() == hub_id,
            )
        ):
            found[device.id] = device
    return found


def deployment_with_deleted(session: Session, *, tenant_id: str, deployment_id: str) -> Deployment | None:
    """A deployment, deleted ones too: a delivery's record outlives it, like its per-device history."""
    return session.get(Deployment, (tenant_id, deployment_id))


def revisions_of(session: Session, *, tenant_id: str, deployment_id: str) -> list[IotHubConfiguration]:
    """Every revision of a deployment's delivery, oldest first."""
    return list(
        session.scalars(
            select(IotHubConfiguration)
            .where(
                IotHubConfiguration.tenant_id == tenant_id, IotHubConfiguration.deployment_id == deployment_id
            )
            .order_by(IotHubConfiguration.revision)
        )
    )


def hub_deliveries(
    session: Session, *, tenant_id: str, hub_id: str, states: Sequence[str] = LIVE_STATES
) -> list[tuple[IotHubConfiguration, Deployment]]:
    """The hub's revisions in ``states`` with their deployments, oldest first."""
    rows = session.execute(
        select(IotHubConfiguration, Deployment)
        .join(
            Deployment,
            _ITS_DEPLOYMENT,
        )
        .where(
            IotHubConfiguration.tenant_id == tenant_id,
            IotHubConfiguration.hub_id == hub_id,
            IotHubConfiguration.state.in_(list(states)),
        )
        .order_by(
            IotHubConfiguration.created_at, IotHubConfiguration.deployment_id, IotHubConfiguration.revision
        )
    ).all()
    return [(row[0], row[1]) for row in rows]


def latest_revisions(
    session: Session, *, tenant_id: str, hub_id: str, after: str | None, limit: int
) -> Sequence[IotHubConfiguration]:
    """The newest revision of each deployment delivered through the hub, by deployment ID."""
    newest = (
        select(
            IotHubConfiguration.deployment_id.label("deployment_id"),
            func.max(IotHubConfiguration.revision).label("revision"),
        )
        .where(IotHubConfiguration.tenant_id == tenant_id, IotHubConfiguration.hub_id == hub_id)
        .group_by(IotHubConfiguration.deployment_id)
        .subquery()
    )
    query = (
        select(IotHubConfiguration)
        .join(
            newest,
            and_(
                IotHubConfiguration.deployment_id == newest.c.deployment_id,
                IotHubConfiguration.revision == newest.c.revision,
            ),
        )
        .where(IotHubConfiguration.tenant_id == tenant_id, IotHubConfiguration.hub_id == hub_id)
    )
    if after is not None:
        query = query.where(IotHubConfiguration.deployment_id > after)
    return session.scalars(query.order_by(IotHubConfiguration.deployment_id).limit(limit + 1)).all()


def count_active_deliveries(session: Session, *, tenant_id: str, hub_id: str) -> int:
    """Revisions in the hub (or on their way) that belong to deployments not deleted or cancelled."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(IotHubConfiguration)
            .join(
                Deployment,
                _ITS_DEPLOYMENT,
            )
            .where(
                IotHubConfiguration.tenant_id == tenant_id,
                IotHubConfiguration.hub_id == hub_id,
                IotHubConfiguration.state.in_(["queued", "applied"]),
                Deployment.deleted_at.is_(None),
                Deployment.phase != "cancelled",
            )
        )
        or 0
    )


def queued_before(session: Session, *, tenant_id: str, hub_id: str, created_at: datetime) -> int:
    """Queued revisions of the hub created before ``created_at`` (ahead in its queue)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(IotHubConfiguration)
            .where(
                IotHubConfiguration.tenant_id == tenant_id,
                IotHubConfiguration.hub_id == hub_id,
                IotHubConfiguration.state == "queued",
                IotHubConfiguration.created_at < created_at,
            )
        )
        or 0
    )
