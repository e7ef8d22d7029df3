"""Event retention against real databases: expired events go, in pages; events a webhook has not
been given yet, or a pending delivery still needs, stay whatever their age; finished deliveries of
that age go too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import make_engine, make_session_factory, transaction
from fleetlift.events import repository
from fleetlift.events.models import Event, WebhookDelivery, WebhookSubscription
from fleetlift.events.retention import EventPruner
from fleetlift.tenants import repository as tenants

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=30)


@pytest.fixture
def sessions(private_database: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(private_database)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        tenants.ensure(session, tenant_id="t1", name="t1")
    yield factory
    engine.dispose()


def emit(sessions: sessionmaker[Session], count: int, age: timedelta) -> list[int]:
    with transaction(sessions) as session:
        return [
            repository.emit(session, tenant_id="t1", type="device.update_state", now=NOW - age, data={"n": n})
            for n in range(count)
        ]


def remaining(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(Event.seq).order_by(Event.seq)))


def subscribe(sessions: sessionmaker[Session], cursor: int) -> None:
    with transaction(sessions) as session:
        session.add(
            WebhookSubscription(
                tenant_id="t1",
                id=f"whk_{cursor}",
                url="https://example.com/hook",
                description="",
                event_types=[],
                secret_encrypted="sealed",
                active=True,
                cursor_seq=cursor,
                created_by="test",
                created_at=NOW,
                updated_at=NOW,
            )
        )


def deliver(sessions: sessionmaker[Session], seq: int, status: str, age: timedelta) -> None:
    with transaction(sessions) as session:
        session.add(
            WebhookDelivery(
                tenant_id="t1",
                id=f"whd_{seq:012d}_{status}",
                subscription_id="whk_x",
                event_seq=seq,
                event_type="device.update_state",
                status=status,
                attempts=1,
                created_at=NOW - age,
            )
        )


def test_expired_events_are_deleted_page_by_page_and_recent_ones_kept(
    sessions: sessionmaker[Session],
) -> None:
    old = emit(sessions, 25, timedelta(days=31))
    recent = emit(sessions, 5, timedelta(days=29))
    pruner = EventPruner(sessions=sessions, retention=RETENTION, interval=3600, page=10)
    assert pruner.prune(NOW) == 25  # three pages of at most 10
    assert remaining(sessions) == recent
    assert old[-1] < recent[0]
    assert pruner.prune(NOW) == 0


def test_what_a_webhook_still_needs_is_kept_whatever_its_age(sessions: sessionmaker[Session]) -> None:
    old = emit(sessions, 10, timedelta(days=40))
    subscribe(sessions, cursor=old[5])  # given the first six; the other four not yet
    deliver(sessions, old[3], "pending", timedelta(days=40))  # still being retried
    deliver(sessions, old[0], "delivered", timedelta(days=40))
    deliver(sessions, old[1], "failed", timedelta(days=40))
    deliver(sessions, old[2], "delivered", timedelta(days=1))
    pruner = EventPruner(sessions=sessions, retention=RETENTION, interval=3600)
    assert pruner.prune(NOW) == 3  # old[0..2]: below both the pending delivery and the cursor
    assert remaining(sessions) == old[3:]
    with sessions() as session:
        statuses = sorted(session.scalars(select(WebhookDelivery.status)))
    assert statuses == ["delivered", "pending"]  # the recent delivery and the pending one
    # The delivery finishes and the webhook catches up: the rest can go.
    with transaction(sessions) as session:
        session.execute(update(WebhookDelivery).values(status="delivered"))
        session.execute(update(WebhookSubscription).values(cursor_seq=old[-1]))
    assert pruner.prune(NOW) == 7
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 0
