"""Use cases of events and webhooks: read the log, manage subscriptions (secrets sealed), ping."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy.orm import Session

from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.errors import FieldError, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.events import repository
from fleetlift.events.dispatcher import secret_context
from fleetlift.events.models import Event, WebhookDelivery, WebhookSubscription
from fleetlift.events.schemas import WebhookCreate, WebhookReplace
from fleetlift.ids import new_id
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.secrets_box import SecretBox

SECRET_PREFIX = "whsec_"


def _position(page: PageRequest, after: int | None) -> int:
    if page.after:
        value = page.after[0]
        if not value.isdigit() or int(value) >= 2**63:
            raise InvalidInput(
                "the cursor is not valid", errors=[FieldError("query.cursor", "not an events cursor")]
            )
        return int(value)
    return after or 0


def list_events(
    *,
    session: Session,
    caller: Caller,
    page: PageRequest,
    after: int | None,
    type_prefixes: Sequence[str],
    deployment_id: str | None,
    device_id: str | None,
) -> Page[Event]:
    """The tenant's events after a seq, oldest first."""
    rows = repository.list_events(
        session,
        tenant_id=caller.tenant_id,
        after=_position(page, after),
        type_prefixes=type_prefixes,
        deployment_id=deployment_id,
        device_id=device_id,
        limit=page.limit + 1,
    )
    return page_of(rows, page, lambda event: [str(event.seq)])


def _unique(patterns: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(patterns))


def create_webhook(
    *, session: Session, box: SecretBox, caller: Caller, data: WebhookCreate
) -> tuple[WebhookSubscription, str]:
    """A new subscription, receiving events committed from now on; its secret, in clear, once."""
    secret = data.secret.get_secret_value() if data.secret else SECRET_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = WebhookSubscription(
        tenant_id=caller.tenant_id,
        id=new_id("whk_"),
        url=str(data.url),
        description=data.description,
        event_types=_unique(data.event_types),
        active=data.active,
        cursor_seq=repository.max_seq(session),
        created_by=caller.subject,
        created_at=now,
        updated_at=now,
    )
    row.secret_encrypted = box.seal(secret, context=secret_context(caller.tenant_id, row.id))
    session.add(row)
    audit.record(
        session,
        caller=caller,
        action="webhooks.create",
        resource_type="webhook",
        resource_id=row.id,
        status_code=201,
        details={"event_types": row.event_types, "active": row.active},  # never the secret
    )
    session.commit()
    return row, secret


def get_webhook(*, session: Session, caller: Caller, webhook_id: str) -> WebhookSubscription:
    row = repository.get_subscription(session, tenant_id=caller.tenant_id, subscription_id=webhook_id)
    if row is None:
        raise NotFound(f"no webhook '{webhook_id}' in this tenant")
    return row


def list_webhooks(*, session: Session, caller: Caller, page: PageRequest) -> Page[WebhookSubscription]:
    """The tenant's webhooks, newest first."""
    rows = repository.list_subscriptions(
        session, tenant_id=caller.tenant_id, after=page.after[0] if page.after else None, limit=page.limit
    )
    return page_of(rows, page, lambda row: [row.id])


def replace_webhook(
    *,
    session: Session,
    box: SecretBox,
    caller: Caller,
    webhook_id: str,
    data: WebhookReplace,
    if_match: str | None,
) -> WebhookSubscription:
    """Replace a subscription's URL, filter, description and state (and its secret when given).
    Turned back on, it receives events from now on, not the ones it missed."""
    row = get_webhook(session=session, caller=caller, webhook_id=webhook_id)
    check_if_match(if_match, row.row_version)
    if data.active and not row.active:
        row.cursor_seq = repository.max_seq(session)
    row.url = str(data.url)
    row.description = data.description
    row.event_types = _unique(data.event_types)
    row.active = data.active
    if data.secret is not None:
        row.secret_encrypted = box.seal(
            data.secret.get_secret_value(), context=secret_context(caller.tenant_id, row.id)
        )
    row.updated_at = utcnow()
    audit.record(
        session,
        caller=caller,
        action="webhooks.update",
        resource_type="webhook",
        resource_id=row.id,
        details={"active": row.active, "secret_replaced": data.secret is not None},
    )
    session.commit()
    return row


def delete_webhook(*, session: Session, caller: Caller, webhook_id: str, if_match: str | None) -> None:
    """Delete a subscription and its delivery log."""
    row = get_webhook(session=session, caller=caller, webhook_id=webhook_id)
    check_if_match(if_match, row.row_version)
    repository.delete_subscription(session, row)
    audit.record(
        session,
        caller=caller,
        action="webhooks.delete",
        resource_type="webhook",
        resource_id=webhook_id,
        status_code=204,
    )
    session.commit()


def list_deliveries(
    *, session: Session, caller: Caller, webhook_id: str, status: str | None, page: PageRequest
) -> Page[WebhookDelivery]:
    """A webhook's delivery log, newest event first."""
    get_webhook(session=session, caller=caller, webhook_id=webhook_id)
    rows = repository.list_deliveries(
        session,
        tenant_id=caller.tenant_id,
        subscription_id=webhook_id,
        status=status,
        after=page.after[0] if page.after else None,
        limit=page.limit,
    )
    return page_of(rows, page, lambda row: [row.id])


def ping(*, session: Session, caller: Caller, webhook_id: str) -> tuple[str, int]:
    """Queue a ``webhook.ping`` event to this webhook only (whether active or not, it is queued;
    an inactive webhook is not sent to until turned on)."""
    row = get_webhook(session=session, caller=caller, webhook_id=webhook_id)
    now = utcnow()
    seq = repository.emit(
        session,
        tenant_id=caller.tenant_id,
        type="webhook.ping",
        now=now,
        data={"webhook_id": row.id, "requested_by": caller.subject},
    )
    event = session.get_one(Event, seq)
    delivery = repository.add_delivery(
        session, tenant_id=caller.tenant_id, subscription_id=row.id, event=event, now=now
    )
    audit.record(
        session,
        caller=caller,
        action="webhooks.ping",
        resource_type="webhook",
        resource_id=row.id,
        status_code=202,
    )
    session.commit()
    return delivery, event.seq
