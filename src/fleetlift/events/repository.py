"""All SQL of the event log. Events are written in the transaction that makes the change they
describe, so an event exists exactly when its change was committed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from fleetlift.events.models import Event, WebhookDelivery, WebhookSubscription
from fleetlift.events.rules import PRIVATE_PREFIX, TypeFilter, delivery_id, type_filter

# Marks a session that wrote events; hooks wake live streams after its commit.
EMITTED = "fleetlift.events_emitted"
# The tenants whose events it wrote (only their streams need to look).
EMITTED_TENANTS = "fleetlift.events_emitted_tenants"


def _mark(session: Session, tenant_id: str) -> None:
    session.info[EMITTED] = True
    session.info.setdefault(EMITTED_TENANTS, set()).add(tenant_id)


def emit(
    session: Session,
    *,
    tenant_id: str,
    type: str,
    now: datetime,
    deployment_id: str | None = None,
    device_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """Record one event in the current transaction; its seq."""
    seq = session.execute(
        insert(Event)
        .values(
            tenant_id=tenant_id,
            type=type,
            deployment_id=deployment_id,
            device_id=device_id,
            data=data or {},
            created_at=now,
        )
        .returning(Event.seq)
    ).scalar_one()
    _mark(session, tenant_id)
    return seq


def emit_for_devices(
    session: Session,
    *,
    tenant_id: str,
    type: str,
    deployment_id: str,
    device_ids: Select[Any],
    data: dict[str, Any],
    now: datetime,
) -> int:
    """One event per device that ``device_ids`` (a SELECT of one column) yields, in one
    INSERT ... SELECT: a wave of 100,000 devices is one statement, not 100,000."""
    source = device_ids.subquery()
    column = next(iter(source.c))
    rows = select(
        literal(tenant_id),
        literal(type),
        literal(deployment_id),
        column,
        literal(data, type_=Event.__table__.c.data.type),
        literal(now, type_=Event.__table__.c.created_at.type),
    ).select_from(source)
    result = session.execute(
        insert(Event).from_select(
            ["tenant_id", "type", "deployment_id", "device_id", "data", "created_at"], rows
        ),
        execution_options={"preserve_rowcount": True},
    )
    _mark(session, tenant_id)
    return cast("CursorResult[Any]", result).rowcount or 0


def emit_many(session: Session, events: Sequence[dict[str, Any]]) -> None:
    """Record many events (each the keyword arguments of ``emit``, ``now`` as ``created_at``) in
    one multi-row INSERT."""
    if not events:
        return
    # The table, not the mapped class: a plain multi-row INSERT, without the ORM's bulk bookkeeping.
    table = cast("Table", Event.__table__)
    session.execute(insert(table), [{"deployment_id": None, "device_id": None, **event} for event in events])
    for tenant_id in {event["tenant_id"] for event in events}:
        _mark(session, tenant_id)


# -- reading the log ---------------------------------------------------------------------------


def _type_condition(types: TypeFilter) -> ColumnElement[bool] | None:
    if types.everything:
        return None
    clauses: list[ColumnElement[bool]] = [Event.type.startswith(p, autoescape=True) for p in types.prefixes]
    if types.exact:
        clauses.append(Event.type.in_(types.exact))
    return or_(*clauses)


def list_events(
    session: Session,
    *,
    tenant_id: str,
    after: int,
    through: int | None = None,
    type_prefixes: Sequence[str] = (),
    deployment_id: str | None = None,
    device_id: str | None = None,
    limit: int,
) -> Sequence[Event]:
    """The tenant's events after seq ``after`` (up to ``through``), oldest first."""
    query = select(Event).where(Event.tenant_id == tenant_id, Event.seq > after)
    if through is not None:
        query = query.where(Event.seq <= through)
    condition = _type_condition(TypeFilter((), tuple(type_prefixes), everything=not type_prefixes))
    if condition is not None:
        query = query.where(condition)
    if deployment_id is not None:
        query = query.where(Event.deployment_id == deployment_id)
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    return session.scalars(query.order_by(Event.seq).limit(limit)).all()


def seqs_after(session: Session, *, after: int, limit: int) -> Sequence[int]:
    """Every tenant's event numbers after ``after``, in order: what readers check for gaps."""
    return session.scalars(select(Event.seq).where(Event.seq > after).order_by(Event.seq).limit(limit)).all()


def max_seq(session: Session) -> int:
    """The highest event number visible now (0 when the log is empty)."""
    return session.scalar(select(func.max(Event.seq))) or 0


def events_by_seq(session: Session, seqs: Iterable[int]) -> dict[int, Event]:
    return {e.seq: e for e in session.scalars(select(Event).where(Event.seq.in_(list(seqs)))).all()}


# -- webhook subscriptions ---------------------------------------------------------------------


def get_subscription(session: Session, *, tenant_id: str, subscription_id: str) -> WebhookSubscription | None:
    return session.get(WebhookSubscription, (tenant_id, subscription_id))


def list_subscriptions(
    session: Session, *, tenant_id: str, after: str | None, limit: int
) -> Sequence[WebhookSubscription]:
    """Newest first; one row more than the page."""
    query = select(WebhookSubscription).where(WebhookSubscription.tenant_id == tenant_id)
    if after is not None:
        query = query.where(WebhookSubscription.id < after)
    return session.scalars(query.order_by(WebhookSubscription.id.desc()).limit(limit + 1)).all()


def delete_subscription(session: Session, row: WebhookSubscription) -> None:
    """The subscription and its delivery log."""
    session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.tenant_id == row.tenant_id, WebhookDelivery.subscription_id == row.id
        )
    )
    session.delete(row)


def list_deliveries(
    session: Session,
    *,
    tenant_id: str,
    subscription_id: str,
    status: str | None,
    after: str | None,
    limit: int,
) -> Sequence[WebhookDelivery]:
    """Newest event first; one row more than the page."""
    query = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.subscription_id == subscription_id
    )
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if after is not None:
        query = query.where(WebhookDelivery.id < after)
    return session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)).all()


def add_delivery(
    session: Session, *, tenant_id: str, subscription_id: str, event: Event, now: datetime
) -> str:
    """Queue one event to one subscription (a ping)."""
    identifier = delivery_id(event.seq, subscription_id)
    session.add(
        WebhookDelivery(
            tenant_id=tenant_id,
            id=identifier,
            subscription_id=subscription_id,
            event_seq=event.seq,
            event_type=event.type,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return identifier


# -- dispatch ----------------------------------------------------------------------------------


def lock_active_subscriptions(session: Session, *, limit: int) -> Sequence[WebhookSubscription]:
    """Active subscriptions behind the log that this dispatcher may fan out to now. PostgreSQL:
    row locks that other replicas skip (each subscription's cursor moves in one replica at a
    time). SQLite: a write first, which takes the database's write lock, so a second process
    waits and then reads the cursor this one wrote."""
    newest = select(func.max(Event.seq)).scalar_subquery()
    query = (
        select(WebhookSubscription)
        .where(WebhookSubscription.active.is_(True), WebhookSubscription.cursor_seq < newest)
        .order_by(WebhookSubscription.cursor_seq, WebhookSubscription.tenant_id, WebhookSubscription.id)
        .limit(limit)
    )  # the furthest behind first: with more than ``limit``, each pass serves others
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    else:
        session.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.active.is_(True))
            .values(cursor_seq=WebhookSubscription.cursor_seq)
            .execution_options(synchronize_session=False)
        )
    return session.scalars(query.execution_options(populate_existing=True)).all()


def _padded_seq(session: Session, column: Any) -> ColumnElement[str]:
    if session.get_bind().dialect.name == "postgresql":
        return func.lpad(column.cast(Text), 12, "0")
    return func.printf("%012d", column)


def fan_out(
    session: Session, *, subscription: WebhookSubscription, through: int, batch: int, now: datetime
) -> int:
    """Create the subscription's deliveries of matching events after its cursor (at most
    ``batch``, up to seq ``through``) with one INSERT ... SELECT, and move the cursor. Returns how
    many deliveries were created."""
    cursor = subscription.cursor_seq
    if through <= cursor:
        return 0
    where = [
        Event.tenant_id == subscription.tenant_id,
        Event.seq > cursor,
        Event.seq <= through,
        ~Event.type.startswith(PRIVATE_PREFIX, autoescape=True),
    ]
    condition = _type_condition(type_filter(subscription.event_types))
    if condition is not None:
        where.append(condition)
    seqs = session.scalars(select(Event.seq).where(*where).order_by(Event.seq).limit(batch)).all()
    new_cursor = seqs[-1] if len(seqs) == batch else through
    created = 0
    if seqs:
        suffix = "_" + subscription.id.removeprefix("whk_")
        rows = select(
            literal(subscription.tenant_id),
            (literal("whd_") + _padded_seq(session, Event.seq) + literal(suffix)),
            literal(subscription.id),
            Event.seq,
            Event.type,
            literal("pending"),
            literal(0),
            literal(now, type_=WebhookDelivery.__table__.c.next_attempt_at.type),
            literal(now, type_=WebhookDelivery.__table__.c.created_at.type),
        ).where(*where, Event.seq <= new_cursor)
        result = session.execute(
            insert(WebhookDelivery).from_select(
                [
                    "tenant_id",
                    "id",
                    "subscription_id",
                    "event_seq",
                    "event_type",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "created_at",
                ],
                rows,
            ),
            execution_options={"preserve_rowcount": True},
        )
        created = cast("CursorResult[Any]", result).rowcount or 0
    session.execute(
        update(WebhookSubscription)
        .where(
            WebhookSubscription.tenant_id == subscription.tenant_id,
            WebhookSubscription.id == subscription.id,
        )
        .values(cursor_seq=new_cursor)
        .execution_options(synchronize_session=False)
    )
    return created


def due_subscriptions(session: Session, *, now: datetime, limit: int) -> Sequence[tuple[str, str]]:
    """(tenant, subscription) pairs of active subscriptions with deliveries due now."""
    query = (
        select(WebhookDelivery.tenant_id, WebhookDelivery.subscription_id)
        .join(
            WebhookSubscription,
            and_(
                WebhookSubscription.tenant_id == WebhookDelivery.tenant_id,
                WebhookSubscription.id == WebhookDelivery.subscription_id,
            ),
        )
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookSubscription.active.is_(True),
        )
        .distinct()
        .limit(limit)
    )
    return [(row[0], row[1]) for row in session.execute(query).all()]


def claim_deliveries(
    session: Session,
    *,
    tenant_id: str,
    subscription_id: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
) -> Sequence[tuple[str, int, int]]:
    """Take up to ``limit`` due deliveries of one subscription: count the attempt and push their
    next attempt to ``lease_until``, so no other replica takes them meanwhile (and one that dies
    mid-attempt leaves them to be retried when the lease ends). PostgreSQL skips rows another
    replica is claiming. Returns (delivery id, event seq, attempt number)."""
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.subscription_id == subscription_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.id.in_(due.scalar_subquery()))
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=lease_until)
        .returning(WebhookDelivery.id, WebhookDelivery.event_seq, WebhookDelivery.attempts)
        .execution_options(synchronize_session=False)
    )
    return [(row[0], row[1], row[2]) for row in result.all()]


def record_attempt(
    session: Session,
    *,
    tenant_id: str,
    delivery: str,
    attempt: int,
    status: str,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
    delivered_at: datetime | None,
) -> bool:
    """Write the outcome of an attempt, unless another replica took the delivery since (its lease
    ran out): then this attempt's outcome is stale and dropped."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.id == delivery,
            WebhookDelivery.attempts == attempt,
            WebhookDelivery.status == "pending",
        )
        .values(
            status=status,
            last_status_code=status_code,
            last_error=error,
            next_attempt_at=next_attempt_at,
            delivered_at=delivered_at,
        )
        .execution_options(synchronize_session=False)
    )
    return (cast("CursorResult[Any]", result).rowcount or 0) > 0


def subscriptions_behind(session: Session) -> bool:
    """Whether any active subscription's cursor is behind the log (a cheap check before locking)."""
    newest = select(func.max(Event.seq)).scalar_subquery()
    query = select(WebhookSubscription.id).where(
        WebhookSubscription.active.is_(True), WebhookSubscription.cursor_seq < newest
    )
    return session.scalar(query.limit(1)) is not None


# -- retention -----------------------------------------------------------------------------------


def prune(session: Session, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events created before ``before`` that every active
    webhook has been given and no pending delivery still needs, and finished deliveries of that age;
    how many events it deleted."""
    horizon = session.scalar(
        select(func.min(WebhookSubscription.cursor_seq)).where(WebhookSubscription.active.is_(True))
    )
    pending = session.scalar(
        select(func.min(WebhookDelivery.event_seq)).where(WebhookDelivery.status == "pending")
    )
    oldest = select(Event.seq).where(Event.created_at < before)
    if horizon is not None:
        oldest = oldest.where(Event.seq <= horizon)
    if pending is not None:
        oldest = oldest.where(Event.seq < pending)
    # A page of the oldest, by key, so a large backlog goes in bounded transactions.
    page = oldest.order_by(Event.seq).limit(limit).subquery()
    result = session.execute(
        delete(Event).where(Event.seq.in_(select(page.c.seq))),
        execution_options={"synchronize_session": False, "preserve_rowcount": True},
    )
    session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status != "pending", WebhookDelivery.created_at < before
        ),
        execution_options={"synchronize_session": False},
    )
    return cast("CursorResult[Any]", result).rowcount or 0
