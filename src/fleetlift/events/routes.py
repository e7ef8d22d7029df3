"""HTTP routes of the event log (JSON pages and a Server-Sent Events stream) and of webhooks."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleetlift.api.common import Page
from fleetlift.api.deps import AuditIntent, IfMatch, PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.errors import FieldError, InvalidInput
from fleetlift.etags import etag_of
from fleetlift.events import service
from fleetlift.events.schemas import (
    DeliveryRead,
    DeliveryStatus,
    EventPage,
    EventRead,
    PingQueued,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookReplace,
)
from fleetlift.events.stream import StreamQuery, sse_stream

router = APIRouter(prefix="/events", tags=["events"])
webhooks = APIRouter(prefix="/webhooks", tags=["webhooks"])

EVENT_STREAM = "text/event-stream"
MAX_SEQ = 2**63 - 1
_SSE_EXAMPLE = (
    "retry: 2000\n: connected\n\n"
    "id: 4211\nevent: deployment.wave_opened\n"
    'data: {"seq":4211,"type":"deployment.wave_opened","deployment_id":"dep_01JD...",'
    '"device_id":null,"data":{"wave":1,"devices":120},"created_at":"2026-11-24T09:00:00Z"}\n\n'
    ": keep-alive\n\n"
)
TypeQuery = Annotated[
    list[str] | None,
    Query(
        alias="type",
        max_length=20,
        description="Type prefix, repeatable: `deployment.` or `deployment.*` (every deployment event), "
        "`device.update_state`.",
    ),
]


def _prefixes(values: list[str] | None) -> list[str]:
    prefixes = []
    for value in values or []:
        if len(value) > 64:
            raise InvalidInput(
                "a type prefix is at most 64 characters", errors=[FieldError("query.type", "too long")]
            )
        prefixes.append(value.removesuffix("*"))
    return [p for p in prefixes if p]


def _last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not value.strip().isdigit() or int(value.strip()) > MAX_SEQ:
        raise InvalidInput(
            "Last-Event-ID is the seq of an event",
            errors=[FieldError("header.Last-Event-ID", "not a number")],
        )
    return int(value.strip())


@router.get(
    "",
    response_model=EventPage,
    **operation(
        Permission.EVENTS_READ,
        summary="Read or follow the event log",
        description="Every state change of a deployment, a wave and a device, in `seq` order (oldest "
        "first). As JSON (`Accept: application/json`, the default): a page after `after` (or the "
        "`cursor`). As Server-Sent Events (`Accept: text/event-stream`): the events committed from now "
        "on (or after `after` / the `Last-Event-ID` header, to resume without loss or repeats), each "
        "as `id: <seq>`, `event: <type>` and `data: <the event as JSON>`, with a `: keep-alive` "
        "comment every 15 s while idle. Filters: `type` prefixes, `deployment_id`, `device_id`.",
        errors=(400,),
        responses={
            200: {
                "description": "A page of events (JSON), or the live stream (`text/event-stream`).",
                "content": {
                    EVENT_STREAM: {
                        "schema": {"type": "string", "description": "Server-Sent Events"},
                        "example": _SSE_EXAMPLE,
                    }
                },
            }
        },
    ),
)
async def list_events(
    request: Request,
    caller: Annotated[Caller, permit(Permission.EVENTS_READ)],
    page: PageDep,
    types: TypeQuery = None,
    deployment_id: Annotated[str | None, Query(max_length=64)] = None,
    device_id: Annotated[str | None, Query(max_length=128)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Only events with a greater seq.")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=20,
            description="The stream resumes after this seq (set by SSE clients).",
        ),
    ] = None,
) -> EventPage | StreamingResponse:
    prefixes = _prefixes(types)
    state = request.app.state
    if EVENT_STREAM in request.headers.get("accept", ""):
        resume = _last_event_id(last_event_id)
        query = StreamQuery(
            tenant_id=caller.tenant_id,
            after=resume if resume is not None else after,
            type_prefixes=prefixes,
            deployment_id=deployment_id,
            device_id=device_id,
        )
        body = sse_stream(
            request,
            sessions=state.sessions,
            hub=state.events.hub,
            query=query,
            gap_timeout=state.settings.events_gap_timeout_seconds,
        )
        return StreamingResponse(
            body, media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    def read() -> EventPage:
        with state.sessions() as session:
            result = service.list_events(
                session=session,
                caller=caller,
                page=page,
                after=after,
                type_prefixes=prefixes,
                deployment_id=deployment_id,
                device_id=device_id,
            )
            return EventPage(
                items=[EventRead.model_validate(e) for e in result.items], next_cursor=result.next_cursor
            )

    return await anyio.to_thread.run_sync(read)


def _admin(action: str) -> object:
    return permit(
        Permission.WEBHOOKS_WRITE,
        audit=AuditIntent(action=action, resource_type="webhook", resource_param="webhook_id"),
    )


@webhooks.get(
    "",
    response_model=Page[WebhookRead],
    **operation(
        Permission.WEBHOOKS_READ,
        summary="List webhooks",
        description="The tenant's webhook subscriptions, newest first, without their secrets.",
        errors=(400,),
    ),
)
def list_webhooks(
    session: SessionDep, caller: Annotated[Caller, permit(Permission.WEBHOOKS_READ)], page: PageDep
) -> Page[WebhookRead]:
    result = service.list_webhooks(session=session, caller=caller, page=page)
    return Page(items=[WebhookRead.model_validate(r) for r in result.items], next_cursor=result.next_cursor)


@webhooks.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    **operation(
        Permission.WEBHOOKS_WRITE,
        summary="Create a webhook",
        description="Events committed from now on whose type matches `event_types` (names, or "
        'prefixes such as `"deployment.*"`; empty: all) are POSTed to `url` as JSON, signed with '
        "HMAC-SHA256 (`X-Fleetlift-Signature`, see docs/events.md), and retried with exponential "
        "backoff until a 2xx answer or the attempt limit. The `secret` is made when omitted, answered "
        "only here, stored sealed and never logged.",
        errors=(400, 413, 415),
    ),
)
def create_webhook(
    data: WebhookCreate,
    request: Request,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, _admin("webhooks.create")],
) -> WebhookCreated:
    row, secret = service.create_webhook(
        session=session, box=request.app.state.secrets, caller=caller, data=data
    )
    response.headers["ETag"] = etag_of(row.row_version)
    response.headers["Location"] = f"/api/v1/webhooks/{row.id}"
    return WebhookCreated(**WebhookRead.model_validate(row).model_dump(), secret=secret)


@webhooks.get(
    "/{webhook_id}",
    response_model=WebhookRead,
    **operation(
        Permission.WEBHOOKS_READ,
        summary="Get a webhook",
        description="One webhook, without its secret.",
        errors=(404,),
    ),
)
def get_webhook(
    webhook_id: str,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.WEBHOOKS_READ)],
) -> WebhookRead:
    row = service.get_webhook(session=session, caller=caller, webhook_id=webhook_id)
    response.headers["ETag"] = etag_of(row.row_version)
    return WebhookRead.model_validate(row)


@webhooks.put(
    "/{webhook_id}",
    response_model=WebhookRead,
    **operation(
        Permission.WEBHOOKS_WRITE,
        summary="Replace a webhook",
        description="Replaces the URL, filter, description and `active` flag; the secret is replaced "
        "when given and kept otherwise. A webhook turned back on receives events from then on. "
        "Honors `If-Match`.",
        errors=(400, 404, 412, 413, 415),
    ),
)
def replace_webhook(
    webhook_id: str,
    data: WebhookReplace,
    request: Request,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, _admin("webhooks.update")],
    if_match: IfMatch = None,
) -> WebhookRead:
    row = service.replace_webhook(
        session=session,
        box=request.app.state.secrets,
        caller=caller,
        webhook_id=webhook_id,
        data=data,
        if_match=if_match,
    )
    response.headers["ETag"] = etag_of(row.row_version)
    return WebhookRead.model_validate(row)


@webhooks.delete(
    "/{webhook_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.WEBHOOKS_WRITE,
        summary="Delete a webhook",
        description="Deletes the subscription and its delivery log. Honors `If-Match`.",
        errors=(404, 412),
    ),
)
def delete_webhook(
    webhook_id: str,
    session: SessionDep,
    caller: Annotated[Caller, _admin("webhooks.delete")],
    if_match: IfMatch = None,
) -> Response:
    service.delete_webhook(session=session, caller=caller, webhook_id=webhook_id, if_match=if_match)
    return Response(status_code=204)


@webhooks.get(
    "/{webhook_id}/deliveries",
    response_model=Page[DeliveryRead],
    **operation(
        Permission.WEBHOOKS_READ,
        summary="A webhook's delivery log",
        description="Each event sent (or being sent) to the webhook, newest first: attempts, status "
        "(`pending`, `delivered`, `failed`), the last HTTP status or error, the next attempt.",
        errors=(400, 404),
    ),
)
def list_deliveries(
    webhook_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.WEBHOOKS_READ)],
    page: PageDep,
    status: DeliveryStatus | None = None,
) -> Page[DeliveryRead]:
    result = service.list_deliveries(
        session=session, caller=caller, webhook_id=webhook_id, status=status, page=page
    )
    return Page(items=[DeliveryRead.model_validate(d) for d in result.items], next_cursor=result.next_cursor)


@webhooks.post(
    "/{webhook_id}/ping",
    status_code=202,
    response_model=PingQueued,
    **operation(
        Permission.WEBHOOKS_WRITE,
        summary="Ping a webhook",
        description="Queues a `webhook.ping` event to this webhook only, to check its URL and "
        "signature verification; follow it in the delivery log.",
        errors=(404,),
    ),
)
def ping_webhook(
    webhook_id: str, session: SessionDep, caller: Annotated[Caller, _admin("webhooks.ping")]
) -> PingQueued:
    delivery, seq = service.ping(session=session, caller=caller, webhook_id=webhook_id)
    return PingQueued(delivery_id=delivery, event_seq=seq)
