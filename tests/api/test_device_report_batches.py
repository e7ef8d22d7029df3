"""Status reports through the fast path, recorded in batches (group commit): each report still
gets its own answer, a refused one is answered by the route with its problem document, many
reports arriving together share transactions, and the poll's own "notified" write goes the same
way. Every test runs on SQLite and on PostgreSQL (the ``api`` fixture)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from fleetlift.deployments.models import DeploymentDevice
from fleetlift.device_api.reports import ReportBatcher
from fleetlift.devices.models import Device
from fleetlift.events.models import Event

from .conftest import Api
from .test_device_poll_fast_path import deploy
from .test_device_protocol import admitted_device, poll


def batcher_of(api: Api) -> ReportBatcher:
    batcher: ReportBatcher = api.client.app.state.device_reports  # type: ignore[attr-defined]
    return batcher


def report(api: Api, headers: dict[str, str], deployment_id: str, body: Any) -> Any:
    path = f"/api/device/v1/deployments/{deployment_id}/status"
    if isinstance(body, bytes):
        return api.client.put(path, headers={**headers, "Content-Type": "application/json"}, content=body)
    return api.client.put(path, headers=headers, json=body)


def states(api: Api, deployment_id: str) -> dict[str, str]:
    sessions = api.client.app.state.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        rows = session.execute(
            select(DeploymentDevice.device_id, DeploymentDevice.state).where(
                DeploymentDevice.deployment_id == deployment_id
            )
        )
        return {device_id: state for device_id, state in rows}


def test_a_report_is_recorded_with_its_event_and_the_success_records_the_release(api: Api) -> None:
    device_id, headers = admitted_device(api, "RB-1")
    deployment = deploy(api, [device_id])
    assert poll(api, headers).json()["state"] == "notified"  # the poll's write, through the batcher
    before = batcher_of(api).recorded
    for state in ("downloading", "installing"):
        assert report(api, headers, deployment["id"], {"status": state}).status_code == 204
    done = report(api, headers, deployment["id"], {"status": "succeeded", "detail": "took 3 s"})
    assert done.status_code == 204 and done.content == b""
    assert batcher_of(api).recorded == before + 3  # the fast path recorded them, not the route
    assert states(api, deployment["id"]) == {device_id: "succeeded"}
    assert api.get(f"/devices/{device_id}").json()["release_id"] == deployment["release_id"]
    sessions = api.client.app.state.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        recorded = session.scalars(
            select(Event)
            .where(Event.deployment_id == deployment["id"], Event.device_id == device_id)
            .order_by(Event.seq)
        ).all()
    assert [event.data["state"] for event in recorded] == [
        "pending",  # released when the deployment was created
        "notified",
        "downloading",
        "installing",
        "succeeded",
    ]
    assert recorded[-1].data["detail"] == "took 3 s"
    # A duplicate and a late report change nothing and are still answered 204.
    assert report(api, headers, deployment["id"], {"status": "succeeded"}).status_code == 204
    assert report(api, headers, deployment["id"], {"status": "downloading"}).status_code == 204
    assert states(api, deployment["id"]) == {device_id: "succeeded"}


@pytest.mark.parametrize(
    ("body", "status", "title"),
    [
        ({"status": "finished"}, 400, "Invalid input"),
        ({"status": "installing", "extra": 1}, 400, "Invalid input"),
        ({"status": "installing", "detail": "x" * 2001}, 400, "Invalid input"),
        ({"status": "installing", "detail": 5}, 400, "Invalid input"),
        (b"{not json", 400, "Invalid input"),
        (b"[]", 400, "Invalid input"),
    ],
)
def test_bad_bodies_are_answered_by_the_route(api: Api, body: Any, status: int, title: str) -> None:
    device_id, headers = admitted_device(api, f"RB-2-{status}-{len(str(body))}")
    deployment = deploy(api, [device_id])
    poll(api, headers)
    answer = report(api, headers, deployment["id"], body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["title"] == title
    assert states(api, deployment["id"]) == {device_id: "notified"}  # nothing was recorded


def test_refused_reports_get_the_routes_problems_and_change_nothing(api: Api) -> None:
    device_id, headers = admitted_device(api, "RB-3")
    other_id, other_headers = admitted_device(api, "RB-3b")
    deployment = deploy(api, [device_id])
    poll(api, headers)
    # Not part of the deployment: 404.
    stranger = report(api, other_headers, deployment["id"], {"status": "downloading"})
    assert stranger.status_code == 404 and "is not part of deployment" in stranger.json()["detail"]
    # A success before anything was installed: 409, the state machine's reason.
    early = report(api, headers, deployment["id"], {"status": "rolled_back"})
    assert early.status_code == 409 and "cannot go from notified to rolled_back" in early.json()["detail"]
    # A token that is not a device token: 401.
    forged = report(api, {"Authorization": "Bearer not-a-token"}, deployment["id"], {"status": "downloading"})
    assert forged.status_code == 401
    # A device decommissioned after its token was cached: refused at once.
    assert report(api, headers, deployment["id"], {"status": "downloading"}).status_code == 204
    assert api.post(f"/devices/{device_id}/decommission").status_code == 200
    revoked = report(api, headers, deployment["id"], {"status": "installing"})
    assert revoked.status_code == 401, revoked.text
    assert states(api, deployment["id"])[device_id] != "installing"
    assert other_id not in states(api, deployment["id"])


def test_reports_arriving_together_share_transactions_and_each_gets_its_answer(api: Api) -> None:
    devices = [admitted_device(api, f"RB-4-{n}") for n in range(24)]
    deployment = deploy(api, [device_id for device_id, _ in devices])
    batcher = batcher_of(api)
    batches_before, recorded_before = batcher.batches, batcher.recorded

    def walk(device: tuple[str, dict[str, str]]) -> list[int]:
        _, headers = device
        codes = [poll(api, headers).status_code]
        for state in ("downloading", "downloaded", "installing", "succeeded"):
            codes.append(report(api, headers, deployment["id"], {"status": state}).status_code)
        # One impossible report among the good ones: only it is refused.
        codes.append(report(api, headers, deployment["id"], {"status": "rolled_back"}).status_code)
        return codes

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(walk, devices))
    assert all(codes == [200, 204, 204, 204, 204, 204] for codes in answers), answers
    assert set(states(api, deployment["id"]).values()) == {"succeeded"}
    recorded = batcher.recorded - recorded_before
    batches = batcher.batches - batches_before
    # 24 polls' "notified" and 24 x 5 reports (the late rolled_back is a harmless duplicate outcome).
    assert recorded == 24 * 6
    assert batches < recorded, "every report had a transaction of its own"
    assert api.get(f"/deployments/{deployment['id']}").json()["status"] == "completed"
    sessions = api.client.app.state.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        released = session.scalars(select(Device.release_id).where(Device.id.in_([d for d, _ in devices])))
        assert set(released) == {deployment["release_id"]}
