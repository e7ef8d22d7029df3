"""Webhooks through the management API: create (the secret answered once), read without the
secret, replace and delete with If-Match, the delivery log, ping; secrets sealed and never logged."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from fleetlift.events.dispatcher import secret_context
from fleetlift.events.models import WebhookDelivery, WebhookSubscription

from ..fleetlift_logs import capture_fleetlift_logs
from .conftest import Api

SECRET = "my-very-own-webhook-secret-1234"


def _create(api: Api, **body: object) -> dict[str, object]:
    response = api.post("/webhooks", json={"url": "https://hooks.example.com/in", **body})
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/api/v1/webhooks/{response.json()['id']}"
    return response.json()  # type: ignore[no-any-return]


def test_create_answers_the_secret_once_and_reads_never_do(api: Api) -> None:
    made = _create(api, description="alerts", event_types=["deployment.*", "device.update_state"])
    assert (
        isinstance(made["secret"], str) and made["secret"].startswith("whsec_") and len(made["secret"]) > 40
    )
    assert made["event_types"] == ["deployment.*", "device.update_state"] and made["active"] is True
    assert made["created_by"] == "admin-user"
    given = _create(api, secret=SECRET)
    assert given["secret"] == SECRET

    one = api.get(f"/webhooks/{made['id']}")
    assert one.status_code == 200 and "secret" not in one.json()
    assert made["secret"] not in one.text
    listed = api.get("/webhooks")
    assert [w["id"] for w in listed.json()["items"]] == [given["id"], made["id"]]
    assert SECRET not in listed.text and str(made["secret"]) not in listed.text
    audit = api.get("/audit", params={"resource_type": "webhook"})
    assert {e["action"] for e in audit.json()["items"]} == {"webhooks.create"}
    assert SECRET not in audit.text

    # Sealed at rest, bound to its row.
    state = api.client.app.state  # type: ignore[attr-defined]
    with state.sessions() as session:
        row = session.get(WebhookSubscription, (api.tenant, given["id"]))
        assert row is not None and SECRET not in row.secret_encrypted
        assert state.secrets.open(row.secret_encrypted, context=secret_context(api.tenant, row.id)) == SECRET
        with pytest.raises(ValueError):
            state.secrets.open(row.secret_encrypted, context=secret_context(api.tenant, made["id"]))


def test_replace_and_delete_honour_if_match(api: Api) -> None:
    made = _create(api)
    etag = api.get(f"/webhooks/{made['id']}").headers["ETag"]
    body = {"url": "http://10.0.0.5:8080/hook", "description": "moved", "event_types": [], "active": False}
    stale = api.put(f"/webhooks/{made['id']}", json=body, headers={"If-Match": '"999"'})
    assert stale.status_code == 412
    replaced = api.put(f"/webhooks/{made['id']}", json=body, headers={"If-Match": etag})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["url"] == "http://10.0.0.5:8080/hook" and replaced.json()["active"] is False
    assert replaced.headers["ETag"] != etag and "secret" not in replaced.json()

    with_secret = api.put(f"/webhooks/{made['id']}", json=body | {"secret": SECRET})
    assert with_secret.status_code == 200 and SECRET not in with_secret.text
    state = api.client.app.state  # type: ignore[attr-defined]
    with state.sessions() as session:
        row = session.get(WebhookSubscription, (api.tenant, made["id"]))
        assert row is not None
        assert state.secrets.open(row.secret_encrypted, context=secret_context(api.tenant, row.id)) == SECRET

    assert api.delete(f"/webhooks/{made['id']}", headers={"If-Match": etag}).status_code == 412
    current = api.get(f"/webhooks/{made['id']}").headers["ETag"]
    assert api.delete(f"/webhooks/{made['id']}", headers={"If-Match": current}).status_code == 204
    assert api.get(f"/webhooks/{made['id']}").status_code == 404
    assert api.delete(f"/webhooks/{made['id']}").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://hooks.example.com/in"},
        {"url": "not a url"},
        {"url": "https://hooks.example.com/in", "event_types": ["Deployment started"]},
        {"url": "https://hooks.example.com/in", "event_types": ["deployment.*.x"]},
        {"url": "https://hooks.example.com/in", "secret": "short"},
        {"url": "https://hooks.example.com/in", "cursor_seq": 0},
    ],
)
def test_invalid_webhooks_are_refused(api: Api, body: dict[str, object]) -> None:
    response = api.post("/webhooks", json=body)
    assert response.status_code == 400, response.text
    assert "short" not in response.text or "secret" not in str(body)


def test_ping_queues_a_delivery_for_that_webhook_only(api: Api) -> None:
    target = _create(api, active=False)  # inactive: queued, not sent, so the log stays readable
    bystander = _create(api, active=False)
    response = api.post(f"/webhooks/{target['id']}/ping")
    assert response.status_code == 202, response.text
    queued = response.json()
    log = api.get(f"/webhooks/{target['id']}/deliveries").json()["items"]
    assert [(d["id"], d["event_seq"], d["event_type"], d["status"], d["attempts"]) for d in log] == [
        (queued["delivery_id"], queued["event_seq"], "webhook.ping", "pending", 0)
    ]
    assert api.get(f"/webhooks/{bystander['id']}/deliveries").json()["items"] == []
    assert (
        api.get(f"/webhooks/{target['id']}/deliveries", params={"status": "delivered"}).json()["items"] == []
    )
    assert api.post("/webhooks/whk_missing/ping").status_code == 404
    assert api.get("/webhooks/whk_missing/deliveries").status_code == 404


def test_the_delivery_log_pages_newest_first(api: Api) -> None:
    made = _create(api, active=False)
    queued = [api.post(f"/webhooks/{made['id']}/ping").json()["delivery_id"] for _ in range(3)]
    first = api.get(f"/webhooks/{made['id']}/deliveries", params={"limit": 2}).json()
    second = api.get(
        f"/webhooks/{made['id']}/deliveries", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [d["id"] for d in first["items"] + second["items"]] == queued[::-1]
    assert second["next_cursor"] is None


def test_webhooks_belong_to_their_tenant(api: Api) -> None:
    made = _create(api)
    other = Api(api.client, "default", api.mint)
    assert other.get(f"/webhooks/{made['id']}").status_code == 404
    assert made["id"] not in other.get("/webhooks").text


def test_secrets_never_reach_the_logs(
    api: Api, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_fleetlift_logs(caplog, monkeypatch)
    made = _create(api, secret=SECRET, active=False)
    generated = _create(api, active=False)
    api.put(f"/webhooks/{made['id']}", json={"url": "https://hooks.example.com/x", "secret": SECRET + "-2"})
    api.post(f"/webhooks/{made['id']}/ping")
    refused = api.post("/webhooks", json={"url": "ftp://nope", "secret": SECRET + "-3"})
    assert refused.status_code == 400 and SECRET not in refused.text
    too_short = api.post("/webhooks", json={"url": "https://a.example", "secret": "tiny-secret"})
    assert too_short.status_code == 400 and "tiny-secret" not in too_short.text
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert any(r.name == "fleetlift.access" for r in caplog.records), "expected the requests to be logged"
    for secret in (SECRET, SECRET + "-2", SECRET + "-3", str(generated["secret"])):
        assert secret not in text
    state = api.client.app.state  # type: ignore[attr-defined]
    with state.sessions() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.tenant_id == api.tenant)).all()
        assert rows and all(SECRET not in (row.last_error or "") for row in rows)


def test_a_rollout_reaches_a_webhook_signed_and_an_event_stream(api: Api) -> None:
    """End to end in the API's own server: a deployment created and started through the API is
    POSTed to a real receiver by the app's dispatcher, signed with the webhook's secret."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(
                (dict(self.headers.items()), self.rfile.read(int(self.headers["Content-Length"])))
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = _create(
            api, url=f"http://127.0.0.1:{server.server_address[1]}/in", event_types=["deployment.*"]
        )
        release = api.release()
        api.device("e2e-1")
        deployment = api.post(
            "/deployments",
            json={"name": "hooked", "release_id": release["id"], "target": {"device_ids": ["e2e-1"]}},
        ).json()
        deadline = time.monotonic() + 20
        while "deployment.wave_opened" not in {h["X-Fleetlift-Event"] for h, _ in received}:
            assert time.monotonic() < deadline, [h["X-Fleetlift-Event"] for h, _ in received]
            time.sleep(0.1)
    finally:
        server.shutdown()
        server.server_close()
    types = set()
    for headers, body in received:
        timestamp = headers["X-Fleetlift-Timestamp"]
        digest = hmac.new(str(hook["secret"]).encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        assert headers["X-Fleetlift-Signature"] == f"sha256={digest.hexdigest()}"
        event = json.loads(body)
        assert event["deployment_id"] == deployment["id"] and event["tenant_id"] == api.tenant
        types.add(event["type"])
    assert {"deployment.created", "deployment.wave_opened"} <= types
    assert all(t.startswith("deployment.") for t in types)
    deadline = time.monotonic() + 10
    while True:  # the outcome is recorded right after the receiver answered
        log = api.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]
        if "deployment.created" in {d["event_type"] for d in log if d["status"] == "delivered"}:
            break
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    listed = api.get("/events", params={"deployment_id": deployment["id"]}, role="viewer").json()["items"]
    assert {"deployment.created", "deployment.wave_opened"} <= {e["type"] for e in listed}
