"""The IoT Hub emulator pinned to the hub's documented behaviour, driven with plain httpx requests.

Shared access signatures are computed here by hand (hmac, hashlib, base64, urllib), independently of both
the emulator and the adapter, so a broken signer and a broken verifier cannot agree by accident.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from ..contract.iothub_spec import spec_path
from ..iothub_emulator import API_VERSION, EDGE_AGENT, EDGE_HUB, ROUTES, IotHubEmulator

NOW = 1_750_000_000.0
SPEC = spec_path()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def sas(resource: str, key_b64: str, key_name: str, expiry: int) -> str:
    """The documented algorithm: HMAC-SHA256 of '<url-encoded resource>\\n<expiry>' with the decoded key."""
    encoded = quote_plus(resource)
    digest = hmac.new(base64.b64decode(key_b64), f"{encoded}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode()
    return f"SharedAccessSignature sr={encoded}&sig={quote_plus(signature)}&se={expiry}&skn={key_name}"


class Hub:
    """An emulator with a fake clock, and a way to send it requests as a client would."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.emulator = IotHubEmulator(clock=self.clock, **options)

    def auth(self, *, resource: str | None = None, ttl: int = 3600) -> str:
        hub = self.emulator
        return sas(resource or hub.host_name, hub.key, hub.key_name, int(self.clock.now) + ttl)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        authorization: str | None = "",
        api_version: str | None = API_VERSION,
    ) -> httpx.Response:
        query = dict(params or {})
        if api_version is not None:
            query["api-version"] = api_version
        sent = dict(headers or {})
        if authorization == "":
            authorization = self.auth()
        if authorization is not None:
            sent["Authorization"] = authorization

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=self.emulator.transport(), base_url=f"https://{self.emulator.host_name}"
            ) as client:
                return await client.request(
                    method, path, params=query, headers=sent, json=body if body is not None else None
                )

        return asyncio.run(go())


def error_code(response: httpx.Response) -> str:
    """The hub's code from the legacy body, checked against the iothub-errorcode header."""
    body = response.json()
    match = re.fullmatch(r"ErrorCode:([A-Za-z]+);.*", body["Message"], re.DOTALL)
    assert match, body
    assert re.fullmatch(
        r"Tracking ID:[0-9a-f]{32}-G:0-TimeStamp:\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", body["ExceptionMessage"]
    )
    assert response.headers["iothub-errorcode"] == match.group(1)
    return match.group(1)


def edge_content(modules: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A minimal base deployment: $edgeAgent with one module per name -> image, and $edgeHub."""
    return {
        "modulesContent": {
            EDGE_AGENT: {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "runtime": {"type": "docker", "settings": {}},
                    "systemModules": {},
                    "modules": {
                        name: {"type": "docker", "status": "running", "settings": {"image": image}}
                        for name, image in (modules or {"app": "registry/app@sha256:" + "a" * 64}).items()
                    },
                }
            },
            EDGE_HUB: {"properties.desired": {"schemaVersion": "1.1", "routes": {}}},
        }
    }


def configuration(
    cid: str,
    content: dict[str, Any] | None = None,
    *,
    condition: str = "tags.env = 'prod'",
    priority: int = 1,
) -> dict[str, Any]:
    return {
        "id": cid,
        "content": content or edge_content(),
        "targetCondition": condition,
        "priority": priority,
        "labels": {"fleetlift": "yes"},
    }


def metrics(hub: Hub, cid: str) -> dict[str, int]:
    response = hub.call("GET", f"/configurations/{cid}")
    assert response.status_code == 200
    return dict(response.json()["systemMetrics"]["results"])


@pytest.fixture
def hub() -> Hub:
    return Hub()


# ----- authentication and api-version ---------------------------------------------------------------


def test_connection_string_names_the_host_policy_and_key(hub: Hub) -> None:
    emulator = hub.emulator
    assert emulator.connection_string == (
        f"HostName={emulator.host_name};SharedAccessKeyName=iothubowner;SharedAccessKey={emulator.key}"
    )
    assert len(base64.b64decode(emulator.key)) == 32


def test_a_signature_computed_by_hand_is_accepted(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    assert hub.call("GET", "/twins/gw-1").status_code == 200


def test_the_worked_example_matches_an_independent_computation() -> None:
    # A fixed key, resource and expiry; the signature was computed once with the documented steps
    # (base64(HMAC-SHA256(key, b"myhub.azure-devices.net\n1700000000"))) and is written out here.
    key = "ZmxlZXRsaWZ0LWVtdWxhdG9yLXdvcmtlZC1leGFtcGxl"  # base64 of b"fleetlift-emulator-worked-example"
    token = sas("myhub.azure-devices.net", key, "iothubowner", 1_700_000_000)
    assert token == (
        "SharedAccessSignature sr=myhub.azure-devices.net"
        "&sig=P3COqRIQpznU9Va30TKAOV0uYhJCL7GPcrh2u8VUxRg%3D&se=1700000000&skn=iothubowner"
    )
    emulator = IotHubEmulator("myhub.azure-devices.net", key=key, clock=lambda: 1_699_999_000.0)
    emulator.add_device("gw-1")

    async def go() -> int:
        async with httpx.AsyncClient(
            transport=emulator.transport(), base_url="https://myhub.azure-devices.net"
        ) as c:
            response = await c.get(
                "/twins/gw-1", params={"api-version": API_VERSION}, headers={"Authorization": token}
            )
            return response.status_code

    assert asyncio.run(go()) == 200


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "expired",
        "wrong key",
        "wrong policy",
        "other hub",
        "tampered expiry",
        "basic",
        "bearer unset",
    ],
)
def test_requests_without_a_valid_signature_are_refused_with_401(hub: Hub, case: str) -> None:
    emulator = hub.emulator
    emulator.add_device("gw-1")
    later = int(hub.clock.now) + 3600
    other_key = base64.b64encode(b"x" * 32).decode()
    authorization = {
        "missing": None,
        "expired": sas(emulator.host_name, emulator.key, "iothubowner", int(hub.clock.now) - 1),
        "wrong key": sas(emulator.host_name, other_key, "iothubowner", later),
        "wrong policy": sas(emulator.host_name, emulator.key, "registryRead", later),
        "other hub": sas("otherhub.azure-devices.net", emulator.key, "iothubowner", later),
        "tampered expiry": hub.auth().replace(f"se={later}", f"se={later + 1}"),
        "basic": "Basic dXNlcjpwYXNz",
        "bearer unset": "Bearer some-token",
    }[case]
    response = hub.call("GET", "/twins/gw-1", authorization=authorization)
    assert response.status_code == 401
    assert error_code(response) == "IotHubUnauthorizedAccess"


def test_a_signature_must_be_url_encoded_in_the_token(hub: Hub) -> None:
    emulator = hub.emulator
    emulator.add_device("gw-1")
    # Find an expiry whose signature contains '+', which only survives the token when URL-encoded.
    expiry = int(hub.clock.now) + 3600
    while True:
        digest = hmac.new(
            base64.b64decode(emulator.key), f"{emulator.host_name}\n{expiry}".encode(), hashlib.sha256
        ).digest()
        signature = base64.b64encode(digest).decode()
        if "+" in signature:
            break
        expiry += 1
    raw = f"SharedAccessSignature sr={emulator.host_name}&sig={signature}&se={expiry}&skn=iothubowner"
    assert hub.call("GET", "/twins/gw-1", authorization=raw).status_code == 401
    encoded = raw.replace(f"sig={signature}", f"sig={quote_plus(signature)}")
    assert hub.call("GET", "/twins/gw-1", authorization=encoded).status_code == 200


def test_a_resource_with_a_path_covers_only_what_is_under_it(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    scoped = hub.auth(resource=f"{hub.emulator.host_name}/twins")
    assert hub.call("GET", "/twins/gw-1", authorization=scoped).status_code == 200
    assert hub.call("GET", "/configurations", authorization=scoped).status_code == 401


def test_a_bearer_token_is_accepted_when_configured() -> None:
    hub = Hub(bearer_token="entra-token")
    hub.emulator.add_device("gw-1")
    assert hub.call("GET", "/twins/gw-1", authorization="Bearer entra-token").status_code == 200
    assert hub.call("GET", "/twins/gw-1", authorization="Bearer other").status_code == 401


@pytest.mark.parametrize("version", [None, "2020-03-13", ""])
def test_api_version_2021_04_12_is_required(hub: Hub, version: str | None) -> None:
    hub.emulator.add_device("gw-1")
    response = hub.call("GET", "/twins/gw-1", api_version=version)
    assert response.status_code == 400
    assert error_code(response) == "InvalidProtocolVersion"


def test_unknown_routes_and_methods_answer_in_the_hubs_error_shape(hub: Hub) -> None:
    assert hub.call("GET", "/nothing/here").status_code == 404
    response = hub.call("DELETE", "/twins/gw-1")
    assert response.status_code == 405
    assert error_code(response) == "MethodNotAllowed"


# ----- twins ----------------------------------------------------------------------------------------


def test_a_device_twin_has_the_documented_shape(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", tags={"env": "prod"}, reported={"arch": "arm64"}, edge=True)
    response = hub.call("GET", "/twins/gw-1")
    twin = response.json()
    assert response.headers["etag"] == '"AAAAAAAAAAE="'
    assert twin["deviceId"] == "gw-1"
    assert twin["etag"] == "AAAAAAAAAAE="
    assert twin["version"] == 1
    assert twin["tags"] == {"env": "prod"}
    assert twin["capabilities"] == {"iotEdge": True}
    assert twin["connectionState"] == "Connected"
    assert twin["properties"]["reported"]["arch"] == "arm64"
    assert twin["properties"]["reported"]["$version"] == 1
    assert twin["properties"]["desired"]["$version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", twin["lastActivityTime"])


def test_a_twin_without_tags_has_no_tags_member(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    assert "tags" not in hub.call("GET", "/twins/gw-1").json()


def test_unknown_devices_and_modules_are_404_with_the_hubs_codes(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", edge=True)
    assert error_code(hub.call("GET", "/twins/nope")) == "DeviceNotFound"
    assert error_code(hub.call("GET", "/twins/gw-1/modules/nope")) == "ModuleNotFound"
    assert hub.call("GET", "/twins/nope").status_code == 404


def test_patch_merges_tags_and_desired_and_moves_the_versions(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", tags={"env": "dev", "site": {"name": "a", "floor": 2}})
    patch = {
        "tags": {"env": "prod", "site": {"floor": None}},
        "properties": {"desired": {"fleetlift": {"x": 1}}},
    }
    response = hub.call("PATCH", "/twins/gw-1", patch)
    twin = response.json()
    assert response.status_code == 200
    assert twin["tags"] == {"env": "prod", "site": {"name": "a"}}
    assert twin["properties"]["desired"]["fleetlift"] == {"x": 1}
    assert twin["version"] == 2
    assert twin["etag"] == "AAAAAAAAAAI="
    assert twin["properties"]["desired"]["$version"] == 2
    assert twin["properties"]["reported"]["$version"] == 1
    # Tags alone move the twin's version, not the desired $version.
    twin = hub.call("PATCH", "/twins/gw-1", {"tags": {"ring": 1}}).json()
    assert (twin["version"], twin["properties"]["desired"]["$version"]) == (3, 2)
    # A patch that changes nothing moves nothing.
    assert hub.call("PATCH", "/twins/gw-1", {"tags": {"ring": 1}}).json()["version"] == 3


def test_if_match_on_a_twin_is_honoured(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    first = hub.call("PATCH", "/twins/gw-1", {"tags": {"a": 1}}, headers={"If-Match": '"AAAAAAAAAAE="'})
    assert first.status_code == 200
    response = hub.call("PATCH", "/twins/gw-1", {"tags": {"a": 2}}, headers={"If-Match": '"AAAAAAAAAAE="'})
    assert response.status_code == 412
    assert error_code(response) == "PreconditionFailed"
    assert hub.call("GET", "/twins/gw-1").json()["tags"] == {"a": 1}
    current = hub.call("GET", "/twins/gw-1").json()["etag"]
    assert hub.call(
        "PATCH", "/twins/gw-1", {"tags": {"a": 3}}, headers={"If-Match": f'"{current}"'}
    ).is_success
    assert hub.call("PATCH", "/twins/gw-1", {"tags": {"a": 4}}, headers={"If-Match": "*"}).is_success
    # Azure's C# SDK sends the wildcard quoted.
    assert hub.call("PATCH", "/twins/gw-1", {"tags": {"a": 5}}, headers={"If-Match": '"*"'}).is_success


def test_an_unquoted_if_match_is_ignored(hub: Hub) -> None:
    # The emulator's choice (see its docstring): not an entity-tag, so no precondition; on a configuration
    # update that makes the PUT a create of an existing id, 409, as a real hub answered the Python SDK.
    hub.emulator.add_device("gw-1")
    patched = hub.call("PATCH", "/twins/gw-1", {"tags": {"a": 1}}, headers={"If-Match": "stale"})
    assert patched.status_code == 200
    etag = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()["etag"]
    update = hub.call(
        "PUT", "/configurations/deploy-1", configuration("deploy-1"), headers={"If-Match": etag}
    )
    assert update.status_code == 409


def test_device_reports_do_not_move_the_twin_etag(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    before = hub.call("GET", "/twins/gw-1").json()
    hub.emulator.set_reported("gw-1", {"fleetlift": {"state": "installing"}})
    after = hub.call("GET", "/twins/gw-1").json()
    assert after["etag"] == before["etag"]
    assert after["properties"]["reported"]["$version"] == 2
    assert after["properties"]["reported"]["fleetlift"] == {"state": "installing"}


@pytest.mark.parametrize(
    "patch",
    [
        {"properties": {"reported": {"x": 1}}},
        {"tags": {"a.b": 1}},
        {"tags": {"a b": 1}},
        {"properties": {"desired": {"$x": 1}}},
        {"tags": "prod"},
        {"deviceId": "someone-else"},
        ["not", "an", "object"],
    ],
)
def test_invalid_twin_patches_are_400(hub: Hub, patch: Any) -> None:
    hub.emulator.add_device("gw-1")
    response = hub.call("PATCH", "/twins/gw-1", patch)
    assert response.status_code == 400
    assert error_code(response) == "ArgumentInvalid"


def test_a_twin_read_back_can_be_sent_as_a_patch(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", desired={"a": 1})
    twin = hub.call("GET", "/twins/gw-1").json()
    patch = {"tags": {"x": "y"}, "properties": {"desired": twin["properties"]["desired"]}}
    assert hub.call("PATCH", "/twins/gw-1", patch).json()["properties"]["desired"]["$version"] == 1


@pytest.mark.parametrize("module_path", ["%24edgeAgent", "$edgeAgent"])
def test_module_twins_of_edge_devices(hub: Hub, module_path: str) -> None:
    hub.emulator.add_device("gw-1", edge=True)
    response = hub.call("GET", f"/twins/gw-1/modules/{module_path}")
    assert response.status_code == 200
    twin = response.json()
    assert (twin["deviceId"], twin["moduleId"]) == ("gw-1", EDGE_AGENT)
    assert hub.call("GET", "/twins/gw-1/modules/%24edgeHub").json()["moduleId"] == EDGE_HUB


def test_module_twin_patch_honours_if_match(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", edge=True)
    hub.emulator.report_module("gw-1", "sensor", {"temp": 20})
    etag = hub.call("GET", "/twins/gw-1/modules/sensor").json()["etag"]
    ok = hub.call(
        "PATCH",
        "/twins/gw-1/modules/sensor",
        {"properties": {"desired": {"rate": 5}}},
        headers={"If-Match": f'"{etag}"'},
    )
    assert ok.json()["properties"]["desired"]["rate"] == 5
    stale = hub.call(
        "PATCH",
        "/twins/gw-1/modules/sensor",
        {"properties": {"desired": {"rate": 6}}},
        headers={"If-Match": f'"{etag}"'},
    )
    assert stale.status_code == 412


# ----- queries --------------------------------------------------------------------------------------


def query(hub: Hub, text: str, **headers: str) -> httpx.Response:
    return hub.call("POST", "/devices/query", {"query": text}, headers=headers)


def test_query_pages_with_continuation_tokens(hub: Hub) -> None:
    for n in range(7):
        hub.emulator.add_device(f"gw-{n}", tags={"env": "prod"})
    seen: list[str] = []
    pages = []
    continuation: str | None = None
    while True:
        headers = {"x-ms-max-item-count": "3"}
        if continuation:
            headers["x-ms-continuation"] = continuation
        response = query(hub, "SELECT * FROM devices WHERE tags.env = 'prod'", **headers)
        assert response.status_code == 200
        assert response.headers["x-ms-item-type"] == "Twin"
        pages.append(len(response.json()))
        seen += [twin["deviceId"] for twin in response.json()]
        continuation = response.headers.get("x-ms-continuation")
        if continuation is None:
            break
    assert pages == [3, 3, 1]
    assert seen == [f"gw-{n}" for n in range(7)]


def test_a_continuation_token_belongs_to_its_query(hub: Hub) -> None:
    for n in range(3):
        hub.emulator.add_device(f"gw-{n}")
    first = query(hub, "SELECT * FROM devices", **{"x-ms-max-item-count": "1"})
    token = first.headers["x-ms-continuation"]
    other = query(hub, "SELECT * FROM devices.modules", **{"x-ms-continuation": token})
    assert other.status_code == 400
    garbage = query(hub, "SELECT * FROM devices", **{"x-ms-continuation": "not-a-token"})
    assert error_code(garbage) == "ArgumentInvalid"


def test_the_page_size_defaults_to_100(hub: Hub) -> None:
    for n in range(101):
        hub.emulator.add_device(f"gw-{n:03d}")
    response = query(hub, "SELECT * FROM devices")
    assert len(response.json()) == 100
    assert "x-ms-continuation" in response.headers
    assert query(hub, "SELECT * FROM devices", **{"x-ms-max-item-count": "0"}).status_code == 400


@pytest.fixture
def fleet(hub: Hub) -> Hub:
    emulator = hub.emulator
    emulator.add_device(
        "gw-a",
        tags={"env": "prod", "ring": 1, "site": {"name": "oslo"}, "weird-key": "w"},
        reported={"arch": "arm64", "mem": 512.5},
        desired={"mode": "fast"},
        edge=True,
    )
    emulator.add_device(
        "gw-b", tags={"env": "prod", "ring": 2, "site": {"name": "it's"}}, reported={"arch": "amd64"}
    )
    emulator.add_device(
        "gw-c", tags={"env": "dev", "ring": 3, "beta": True}, reported={"arch": "arm64"}, edge=True
    )
    emulator.add_device("gw-d", tags={"ring": "3", "note": None})
    return hub


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("tags.env = 'prod'", ["gw-a", "gw-b"]),
        ("tags.env != 'prod'", ["gw-c"]),
        ("tags.env <> 'prod'", ["gw-c"]),
        ("tags.ring < 2", ["gw-a"]),
        ("tags.ring <= 2", ["gw-a", "gw-b"]),
        ("tags.ring > 1", ["gw-b", "gw-c"]),
        ("tags.ring >= 3", ["gw-c"]),
        ("tags.ring = 3", ["gw-c"]),
        ("tags.ring = '3'", ["gw-d"]),
        ("tags.ring = 3.0", ["gw-c"]),
        ("tags.ring = 0x3", ["gw-c"]),
        ("tags.ring > -1", ["gw-a", "gw-b", "gw-c"]),
        ("tags.env = 'prod' AND properties.reported.arch = 'arm64'", ["gw-a"]),
        ("tags.env = 'dev' OR properties.reported.arch = 'amd64'", ["gw-b", "gw-c"]),
        ("tags.env = 'prod' AND (tags.ring = 2 OR tags.ring = 3)", ["gw-b"]),
        ("NOT tags.env = 'prod'", ["gw-c"]),
        ("NOT (tags.env = 'prod' OR tags.ring = 3)", []),
        ("NOT IS_DEFINED(tags.env)", ["gw-d"]),
        ("IS_DEFINED(tags.beta)", ["gw-c"]),
        ("tags.beta = true", ["gw-c"]),
        ("tags.beta", ["gw-c"]),
        ("tags.beta = false", []),
        ("tags.site.name = 'oslo'", ["gw-a"]),
        ("tags.site.name = 'it\\'s'", ["gw-b"]),
        ('tags.site.name = "it\'s"', ["gw-b"]),
        ("tags.site.name = 'osl\\u006f'", ["gw-a"]),
        ("tags.[[weird-key]] = 'w'", ["gw-a"]),
        ("tags.env IN ['dev', 'test']", ["gw-c"]),
        ("tags.ring IN [1, 2]", ["gw-a", "gw-b"]),
        ("tags.env NIN ['dev']", ["gw-a", "gw-b"]),
        ("deviceId IN ['gw-a', 'gw-d']", ["gw-a", "gw-d"]),
        ("deviceId = 'gw-b'", ["gw-b"]),
        ("properties.reported.mem > 512", ["gw-a"]),
        ("properties.desired.mode = 'fast'", ["gw-a"]),
        ("properties.desired.$version = 1", ["gw-a", "gw-b", "gw-c", "gw-d"]),
        ("capabilities.iotEdge = true", ["gw-a", "gw-c"]),
        ("capabilities.iotEdge = false AND tags.env = 'prod'", ["gw-b"]),
        ("tags.site = 'oslo'", []),
        ("tags.ring < 'z'", ["gw-d"]),
        ("select_me = 1 or TAGS.env = 'prod'", []),
        ("tags.env = 'prod' or tags.env = 'dev'", ["gw-a", "gw-b", "gw-c"]),
    ],
)
def test_query_conditions(fleet: Hub, where: str, expected: list[str]) -> None:
    response = query(fleet, f"SELECT * FROM devices WHERE {where}")
    assert response.status_code == 200, response.text
    assert [twin["deviceId"] for twin in response.json()] == expected


def test_comparisons_on_missing_or_mismatched_values_are_undefined(fleet: Hub) -> None:
    # gw-d has no tags.env: neither 'prod' nor not 'prod', and NOT keeps it undefined.
    ids = [t["deviceId"] for t in query(fleet, "SELECT * FROM devices WHERE NOT tags.env != 'prod'").json()]
    assert ids == ["gw-a", "gw-b"]
    # A number is never equal nor unequal to a string.
    assert query(fleet, "SELECT * FROM devices WHERE tags.ring != '1' AND deviceId = 'gw-a'").json() == []


def test_module_queries_projections_count_and_top(fleet: Hub) -> None:
    emulator = fleet.emulator
    emulator.report_module("gw-a", EDGE_AGENT, {"lastDesiredStatus": {"code": 200}})
    rows = query(
        fleet,
        f"SELECT * FROM devices.modules WHERE moduleId = '{EDGE_AGENT}'"
        " AND properties.reported.lastDesiredStatus.code = 200",
    ).json()
    assert [(row["deviceId"], row["moduleId"]) for row in rows] == [("gw-a", EDGE_AGENT)]
    modules = query(fleet, "SELECT * FROM devices.modules").json()
    assert [(row["deviceId"], row["moduleId"]) for row in modules] == [
        ("gw-a", EDGE_AGENT),
        ("gw-a", EDGE_HUB),
        ("gw-c", EDGE_AGENT),
        ("gw-c", EDGE_HUB),
    ]
    projected = query(fleet, "SELECT deviceId, tags.env AS env FROM devices WHERE tags.ring >= 2")
    assert projected.headers["x-ms-item-type"] == "JSON"
    assert projected.json() == [{"deviceId": "gw-b", "env": "prod"}, {"deviceId": "gw-c", "env": "dev"}]
    assert query(fleet, "SELECT COUNT() AS n FROM devices WHERE tags.env = 'prod'").json() == [{"n": 2}]
    assert [t["deviceId"] for t in query(fleet, "select top 2 * from devices").json()] == ["gw-a", "gw-b"]


@pytest.mark.parametrize(
    "text",
    [
        "SELECT * FROM devices WHERE",
        "SELECT * FROM jobs",
        "SELECT * FROM devices.jobs",
        "FROM devices",
        "SELECT * FROM devices WHERE tags.env NOT IN ['a']",
        "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'gw')",
        "SELECT * FROM devices WHERE tags.env = 'unterminated",
        "SELECT * FROM devices WHERE tags.env = 'bad \\x escape'",
        "SELECT * FROM devices WHERE tags.env = 'prod' GROUP BY tags.env",
        "SELECT * FROM devices WHERE (tags.env = 'prod'",
        "SELECT * FROM devices WHERE tags.env = 'prod' extra",
        "SELECT * FROM devices WHERE tags.env == 'prod'",
    ],
)
def test_queries_outside_the_subset_are_400(fleet: Hub, text: str) -> None:
    response = query(fleet, text)
    assert response.status_code == 400
    assert error_code(response) == "ArgumentInvalid"


def test_the_query_helper_answers_like_the_api(fleet: Hub) -> None:
    assert [
        row["deviceId"] for row in fleet.emulator.query("SELECT deviceId FROM devices WHERE tags.ring = 3")
    ] == ["gw-c"]


# ----- configurations -------------------------------------------------------------------------------


def test_create_then_get_and_list_configurations(hub: Hub) -> None:
    created = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    assert created.status_code == 201
    body = created.json()
    assert created.headers["etag"] == f'"{body["etag"]}"'
    assert body["id"] == "deploy-1"
    assert body["priority"] == 1
    assert body["labels"] == {"fleetlift": "yes"}
    assert body["content"] == edge_content()
    assert body["schemaVersion"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", body["createdTimeUtc"])
    assert body["createdTimeUtc"] == body["lastUpdatedTimeUtc"]
    assert hub.call("GET", "/configurations/deploy-1").json() == body
    hub.call("PUT", "/configurations/deploy-2", configuration("deploy-2"))
    listed = hub.call("GET", "/configurations").json()
    assert [c["id"] for c in listed] == ["deploy-1", "deploy-2"]
    assert [c["id"] for c in hub.call("GET", "/configurations", params={"top": "1"}).json()] == ["deploy-1"]
    assert hub.call("GET", "/configurations", params={"top": "many"}).status_code == 400
    assert set(hub.emulator.configurations) == {"deploy-1", "deploy-2"}


def test_a_missing_configuration_is_404(hub: Hub) -> None:
    response = hub.call("GET", "/configurations/nope")
    assert response.status_code == 404
    assert error_code(response) == "ConfigurationNotFound"
    assert hub.call("DELETE", "/configurations/nope").status_code == 404


def test_put_on_an_existing_id_without_if_match_is_409(hub: Hub) -> None:
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    response = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    assert response.status_code == 409
    assert error_code(response) == "ConfigurationAlreadyExists"


def test_updates_need_the_current_etag_or_star(hub: Hub) -> None:
    first = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()
    hub.clock.now += 10
    update = configuration("deploy-1", priority=5, condition="tags.env = 'dev'")
    update["labels"] = {"fleetlift": "updated"}
    response = hub.call("PUT", "/configurations/deploy-1", update, headers={"If-Match": f'"{first["etag"]}"'})
    assert response.status_code == 200
    second = response.json()
    assert (second["priority"], second["targetCondition"], second["labels"]) == (
        5,
        "tags.env = 'dev'",
        {"fleetlift": "updated"},
    )
    assert second["etag"] != first["etag"]
    assert second["createdTimeUtc"] == first["createdTimeUtc"]
    assert second["lastUpdatedTimeUtc"] > first["lastUpdatedTimeUtc"]
    stale = hub.call("PUT", "/configurations/deploy-1", update, headers={"If-Match": f'"{first["etag"]}"'})
    assert stale.status_code == 412
    assert error_code(stale) == "PreconditionFailed"
    assert hub.call("PUT", "/configurations/deploy-1", update, headers={"If-Match": "*"}).status_code == 200
    missing = hub.call(
        "PUT", "/configurations/deploy-2", configuration("deploy-2"), headers={"If-Match": "*"}
    )
    assert missing.status_code == 412


def test_configuration_content_cannot_change(hub: Hub) -> None:
    first = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()
    changed = configuration("deploy-1", edge_content({"app": "registry/app@sha256:" + "b" * 64}))
    response = hub.call(
        "PUT", "/configurations/deploy-1", changed, headers={"If-Match": f'"{first["etag"]}"'}
    )
    assert response.status_code == 400
    assert error_code(response) == "InvalidConfigurationContent"
    assert hub.call("GET", "/configurations/deploy-1").json()["content"] == edge_content()


@pytest.mark.parametrize(
    ("cid", "status"),
    [
        ("deploy-1", 201),
        ("a-b:c+d%e_f#g*h?i!j(k)l,m=n@o;p'q", 201),
        ("x" * 128, 201),
        ("x" * 129, 400),
        ("Deploy-1", 400),
        ("deploy.1", 400),
        ("deploy$1", 400),
    ],
)
def test_configuration_id_rules(hub: Hub, cid: str, status: int) -> None:
    path = "/configurations/" + "".join(c if c.isalnum() or c in "-_" else f"%{ord(c):02X}" for c in cid)
    response = hub.call("PUT", path, configuration(cid))
    assert response.status_code == status, response.text
    if status == 201:
        assert hub.call("GET", path).json()["id"] == cid


def test_at_most_100_configurations_per_hub() -> None:
    hub = Hub(config_ops_per_minute=None)
    for n in range(100):
        assert hub.call("PUT", f"/configurations/c{n}", configuration(f"c{n}")).status_code == 201
    response = hub.call("PUT", "/configurations/c100", configuration("c100"))
    assert response.status_code == 413
    assert error_code(response) == "ConfigurationCountLimitExceeded"
    assert hub.call("DELETE", "/configurations/c0").status_code == 204
    assert hub.call("PUT", "/configurations/c100", configuration("c100")).status_code == 201


def test_delete_honours_if_match(hub: Hub) -> None:
    etag = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()["etag"]
    stale = hub.call("DELETE", "/configurations/deploy-1", headers={"If-Match": '"bm9wZQ=="'})
    assert stale.status_code == 412
    response = hub.call("DELETE", "/configurations/deploy-1", headers={"If-Match": f'"{etag}"'})
    assert response.status_code == 204
    assert response.content == b""
    assert hub.call("GET", "/configurations/deploy-1").status_code == 404


def test_a_recreated_configuration_gets_a_new_etag(hub: Hub) -> None:
    first = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()["etag"]
    hub.call("DELETE", "/configurations/deploy-1")
    again = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()["etag"]
    assert again != first


@pytest.mark.parametrize(
    "body",
    [
        configuration("deploy-1", {"modulesContent": {EDGE_AGENT: {"properties.desired": {}}}}),
        configuration(
            "deploy-1", {"modulesContent": {EDGE_AGENT: {"tags": {}}, EDGE_HUB: {"properties.desired": {}}}}
        ),
        configuration("deploy-1", {"deviceContent": {"tags.x": 1}}),
        {**configuration("deploy-1"), "content": {}},
        {
            **configuration("deploy-1"),
            "content": {**edge_content(), "deviceContent": {"properties.desired.x": 1}},
        },
        configuration("deploy-1", condition="tags.env = "),
        configuration("deploy-1", priority=-1),
        {**configuration("deploy-1"), "id": "deploy-2"},
        {**configuration("deploy-1"), "labels": {"n": 1}},
        {**configuration("deploy-1"), "metrics": {"queries": {"bad": "SELECT"}}},
    ],
)
def test_invalid_configurations_are_400(hub: Hub, body: dict[str, Any]) -> None:
    response = hub.call("PUT", "/configurations/deploy-1", body)
    assert response.status_code == 400, response.text
    assert error_code(response) in {"ArgumentInvalid", "InvalidConfigurationContent"}


def test_configuration_operations_are_rate_limited() -> None:
    hub = Hub(config_ops_per_minute=3)
    hub.emulator.add_device("gw-1")
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    hub.call("GET", "/configurations/deploy-1")
    hub.clock.now += 30
    hub.call("GET", "/configurations")
    response = hub.call("GET", "/configurations")
    assert response.status_code == 429
    assert error_code(response) == "ThrottlingException"
    assert response.headers["retry-after"] == "30"
    # Other operations are not configuration operations.
    assert hub.call("GET", "/twins/gw-1").status_code == 200
    hub.clock.now += 30
    assert hub.call("GET", "/configurations").status_code == 200
    hub.emulator.config_ops_per_minute = None
    assert all(hub.call("GET", "/configurations").status_code == 200 for _ in range(5))


def test_test_queries_reports_errors(hub: Hub) -> None:
    body = {
        "targetCondition": "tags.env = ",
        "customMetricQueries": {"ok": "SELECT deviceId FROM devices", "bad": "x"},
    }
    answer = hub.call("POST", "/configurations/testQueries", body).json()
    assert answer["targetConditionError"]
    assert set(answer["customMetricQueryErrors"]) == {"bad"}


# ----- what applies, and metrics --------------------------------------------------------------------


@pytest.fixture
def edge_fleet(hub: Hub) -> Hub:
    emulator = hub.emulator
    for name in ("gw-1", "gw-2", "gw-3"):
        emulator.add_device(name, tags={"env": "prod"}, edge=True)
    emulator.add_device("plain", tags={"env": "prod"})
    emulator.add_device("gw-dev", tags={"env": "dev"}, edge=True)
    return hub


def test_an_edge_deployment_applies_to_targeted_edge_devices(edge_fleet: Hub) -> None:
    hub = edge_fleet
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    agent = hub.call("GET", "/twins/gw-1/modules/%24edgeAgent").json()
    expected = edge_content()["modulesContent"][EDGE_AGENT]["properties.desired"]
    assert {k: v for k, v in agent["properties"]["desired"].items() if not k.startswith("$")} == expected
    assert agent["properties"]["desired"]["$version"] == 2
    assert agent["configurations"] == {"deploy-1": {"status": "Applied"}}
    edge_hub = hub.call("GET", "/twins/gw-1/modules/%24edgeHub").json()
    assert edge_hub["properties"]["desired"]["routes"] == {}
    assert "configurations" not in hub.call("GET", "/twins/gw-dev/modules/%24edgeAgent").json()
    assert metrics(hub, "deploy-1") == {
        "targetedCount": 3,
        "appliedCount": 3,
        "reportedSuccessfulCount": 0,
        "reportedFailedCount": 0,
    }


def test_reported_counts_come_from_edge_agent_twins(edge_fleet: Hub) -> None:
    hub = edge_fleet
    emulator = hub.emulator
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    emulator.report_edge_status("gw-1", 200)
    emulator.report_edge_status("gw-2", 500, "image pull failed")
    # gw-3 still reports on the previous desired version: neither success nor failure of this deployment.
    emulator.report_edge_status("gw-3", 200, version=1)
    results = metrics(hub, "deploy-1")
    assert (results["reportedSuccessfulCount"], results["reportedFailedCount"]) == (1, 1)
    emulator.report_edge_status("gw-3", 406, "offline")
    assert metrics(hub, "deploy-1")["reportedFailedCount"] == 2
    system = hub.call("GET", "/configurations/deploy-1").json()["systemMetrics"]["queries"]
    assert "lastDesiredVersion" in system["reportedSuccessfulCount"]
    assert "lastDesiredStatus.code = 200" in system["reportedSuccessfulCount"]


def test_the_highest_priority_applies_and_ties_go_to_the_newest(edge_fleet: Hub) -> None:
    hub = edge_fleet
    hub.call("PUT", "/configurations/base", configuration("base", priority=1))
    newer = edge_content({"app": "registry/app@sha256:" + "c" * 64})
    hub.call(
        "PUT",
        "/configurations/canary",
        configuration("canary", newer, condition="deviceId = 'gw-1'", priority=2),
    )
    agent = hub.call("GET", "/twins/gw-1/modules/%24edgeAgent").json()
    assert agent["configurations"] == {"base": {"status": "Targeted"}, "canary": {"status": "Applied"}}
    image = agent["properties"]["desired"]["modules"]["app"]["settings"]["image"]
    assert image.endswith("c" * 64)
    assert metrics(hub, "base")["appliedCount"] == 2
    assert metrics(hub, "canary") == {
        "targetedCount": 1,
        "appliedCount": 1,
        "reportedSuccessfulCount": 0,
        "reportedFailedCount": 0,
    }
    # Same priority as base, created later: the newest wins everywhere it targets.
    tie = edge_content({"app": "registry/app@sha256:" + "d" * 64})
    hub.call("PUT", "/configurations/tie", configuration("tie", tie, priority=1))
    assert metrics(hub, "base")["appliedCount"] == 0
    assert metrics(hub, "tie")["appliedCount"] == 2


def test_layered_deployments_add_to_the_base_when_their_priority_is_higher(edge_fleet: Hub) -> None:
    hub = edge_fleet
    hub.call("PUT", "/configurations/base", configuration("base", priority=10))
    layer = {
        "modulesContent": {
            EDGE_AGENT: {
                "properties.desired.modules.extra": {
                    "type": "docker",
                    "settings": {"image": "extra@sha256:" + "e" * 64},
                }
            }
        }
    }
    hub.call(
        "PUT",
        "/configurations/layer",
        configuration("layer", layer, condition="deviceId = 'gw-1'", priority=20),
    )
    hub.call(
        "PUT", "/configurations/weak", configuration("weak", layer, condition="deviceId = 'gw-2'", priority=5)
    )
    modules = hub.emulator.module_twin("gw-1", EDGE_AGENT)["properties"]["desired"]["modules"]
    assert set(modules) == {"app", "extra"}
    assert hub.emulator.module_twin("gw-1", EDGE_AGENT)["configurations"] == {
        "base": {"status": "Applied"},
        "layer": {"status": "Applied"},
    }
    assert set(hub.emulator.module_twin("gw-2", EDGE_AGENT)["properties"]["desired"]["modules"]) == {"app"}
    assert hub.emulator.module_twin("gw-2", EDGE_AGENT)["configurations"]["weak"] == {"status": "Targeted"}
    # Without a base, a layered deployment does not apply.
    hub.call("PUT", "/configurations/orphan", configuration("orphan", layer, condition="deviceId = 'gw-dev'"))
    assert metrics(hub, "orphan")["appliedCount"] == 0


def test_deleting_a_deployment_leaves_the_modules(edge_fleet: Hub) -> None:
    hub = edge_fleet
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    before = hub.emulator.module_twin("gw-1", EDGE_AGENT)["properties"]["desired"]
    assert hub.call("DELETE", "/configurations/deploy-1").status_code == 204
    after = hub.emulator.module_twin("gw-1", EDGE_AGENT)
    assert after["properties"]["desired"] == before
    assert "configurations" not in after


def test_retargeting_through_an_update(edge_fleet: Hub) -> None:
    hub = edge_fleet
    etag = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).json()["etag"]
    update = configuration("deploy-1", condition="tags.env = 'dev'")
    hub.call("PUT", "/configurations/deploy-1", update, headers={"If-Match": f'"{etag}"'})
    assert metrics(hub, "deploy-1")["targetedCount"] == 1
    assert hub.emulator.module_twin("gw-dev", EDGE_AGENT)["configurations"] == {
        "deploy-1": {"status": "Applied"}
    }
    # Tags changed through the API retarget too.
    hub.call("PATCH", "/twins/gw-1", {"tags": {"env": "dev"}})
    assert metrics(hub, "deploy-1")["targetedCount"] == 2


def test_device_configurations_write_desired_properties(hub: Hub) -> None:
    hub.emulator.add_device("sensor-1", tags={"env": "prod"})
    hub.emulator.add_device("sensor-2", tags={"env": "dev"})
    content = {"deviceContent": {"properties.desired.fleetlift.update": {"release": "r1"}}}
    body = configuration("cfg-1", content)
    body["metrics"] = {
        "queries": {"done": "SELECT deviceId FROM devices WHERE properties.reported.fleetlift.done = true"}
    }
    created = hub.call("PUT", "/configurations/cfg-1", body).json()
    assert set(created["systemMetrics"]["results"]) == {"targetedCount", "appliedCount"}
    twin = hub.emulator.twin("sensor-1")
    assert twin["properties"]["desired"]["fleetlift"] == {"update": {"release": "r1"}}
    assert twin["configurations"] == {"cfg-1": {"status": "Applied"}}
    assert "fleetlift" not in hub.emulator.twin("sensor-2")["properties"]["desired"]
    hub.emulator.set_reported("sensor-1", {"fleetlift": {"done": True}})
    configuration_now = hub.call("GET", "/configurations/cfg-1").json()
    assert configuration_now["metrics"]["results"] == {"done": 1}
    assert configuration_now["systemMetrics"]["results"] == {"targetedCount": 1, "appliedCount": 1}


def test_edge_deployments_do_not_target_plain_devices(hub: Hub) -> None:
    hub.emulator.add_device("plain", tags={"env": "prod"})
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1", condition="*"))
    assert metrics(hub, "deploy-1")["targetedCount"] == 0


# ----- applyConfigurationContent --------------------------------------------------------------------


def test_apply_configuration_content_sets_the_modules_of_one_edge_device(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", edge=True)
    hub.emulator.add_device("plain")
    response = hub.call("POST", "/devices/gw-1/applyConfigurationContent", edge_content())
    assert response.status_code == 204
    agent = hub.emulator.module_twin("gw-1", EDGE_AGENT)
    assert agent["properties"]["desired"]["modules"]["app"]["type"] == "docker"
    assert agent["properties"]["desired"]["$version"] == 2
    plain = hub.call("POST", "/devices/plain/applyConfigurationContent", edge_content())
    assert plain.status_code == 400
    device_content = hub.call(
        "POST", "/devices/gw-1/applyConfigurationContent", {"deviceContent": {"properties.desired.x": 1}}
    )
    assert error_code(device_content) == "InvalidConfigurationContent"
    assert (
        error_code(hub.call("POST", "/devices/nope/applyConfigurationContent", edge_content()))
        == "DeviceNotFound"
    )


# ----- direct methods -------------------------------------------------------------------------------


def invoke(hub: Hub, device_id: str, name: str, payload: Any = None, **timeouts: int) -> httpx.Response:
    body = {"methodName": name, "payload": payload, **timeouts}
    return hub.call("POST", f"/twins/{device_id}/methods", body)


def test_an_online_device_answers_a_direct_method(hub: Hub) -> None:
    emulator = hub.emulator
    emulator.add_device("gw-1")
    emulator.on_method("gw-1", "fleetlift.update", lambda payload: (200, {"accepted": payload["deployment"]}))

    async def slow(payload: Any) -> tuple[int, Any]:
        await asyncio.sleep(0)
        return 202, "later"

    emulator.on_method("gw-1", "slow", slow)
    response = invoke(hub, "gw-1", "fleetlift.update", {"deployment": "d1"}, responseTimeoutInSeconds=30)
    assert response.status_code == 200
    assert response.json() == {"status": 200, "payload": {"accepted": "d1"}}
    assert invoke(hub, "gw-1", "slow").json() == {"status": 202, "payload": "later"}
    assert invoke(hub, "gw-1", "unknown").json() == {"status": 501, "payload": None}
    call = emulator.method_calls[0]
    assert (call.device_id, call.method_name, call.payload, call.delivered) == (
        "gw-1",
        "fleetlift.update",
        {"deployment": "d1"},
        True,
    )


def test_an_offline_device_is_404103_device_not_online(hub: Hub) -> None:
    emulator = hub.emulator
    emulator.add_device("gw-1", online=False)
    emulator.on_method("gw-1", "fleetlift.update", lambda payload: (200, None))
    response = invoke(hub, "gw-1", "fleetlift.update", {"deployment": "d1"}, connectTimeoutInSeconds=0)
    assert response.status_code == 404
    assert response.headers["iothub-errorcode"] == "DeviceNotOnline"
    body = response.json()
    assert body["errorCode"] == 404103
    assert re.fullmatch(r"[0-9a-f]{32}", body["trackingId"])
    assert body["message"]
    assert body["timestampUtc"].endswith("Z")
    assert emulator.method_calls[-1].delivered is False
    emulator.set_online("gw-1", True)
    assert invoke(hub, "gw-1", "fleetlift.update").status_code == 200


def test_an_online_device_without_method_handlers_is_not_online_for_methods(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    response = invoke(hub, "gw-1", "fleetlift.update")
    assert response.status_code == 404
    assert response.json()["errorCode"] == 404103


def test_method_errors_can_nest_their_json_in_message() -> None:
    hub = Hub(method_error_body="nested")
    hub.emulator.add_device("gw-1", online=False)
    body = invoke(hub, "gw-1", "x").json()
    assert body["ExceptionMessage"] == ""
    assert json.loads(body["Message"])["errorCode"] == 404103


def test_method_timeouts_and_unknown_devices(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")

    def never(payload: Any) -> tuple[int, Any]:
        raise TimeoutError

    hub.emulator.on_method("gw-1", "never", never)
    assert invoke(hub, "gw-1", "never", responseTimeoutInSeconds=4).status_code == 400
    assert invoke(hub, "gw-1", "never", responseTimeoutInSeconds=301).status_code == 400
    assert invoke(hub, "gw-1", "never", connectTimeoutInSeconds=-1).status_code == 400
    timed_out = invoke(hub, "gw-1", "never", responseTimeoutInSeconds=5)
    assert timed_out.status_code == 504
    assert timed_out.json()["errorCode"] == 504101
    unknown = invoke(hub, "nope", "x")
    assert (unknown.status_code, unknown.json()["errorCode"]) == (404, 404001)


# ----- fault injection and the request log ----------------------------------------------------------


def test_throttle_answers_429_with_retry_after(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    hub.emulator.throttle(2, retry_after=3)
    for _ in range(2):
        response = hub.call("GET", "/twins/gw-1")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert error_code(response) == "ThrottlingException"
    assert hub.call("GET", "/twins/gw-1").status_code == 200


def test_faults_can_aim_at_a_path_and_a_method(hub: Hub) -> None:
    hub.emulator.add_device("gw-1")
    hub.emulator.fail(1, 503, path_prefix="/configurations", method="PUT")
    hub.emulator.fail(1, 500, path_prefix="/twins")
    assert error_code(hub.call("GET", "/twins/gw-1")) == "ServerError"
    assert hub.call("GET", "/twins/gw-1").status_code == 200
    assert hub.call("GET", "/configurations").status_code == 200
    response = hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    assert (response.status_code, error_code(response)) == (503, "ServiceUnavailable")
    assert hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1")).status_code == 201


def test_every_request_is_logged_without_its_secret(hub: Hub) -> None:
    hub.emulator.add_device("gw-1", edge=True)
    authorization = hub.auth()
    hub.call("GET", "/twins/gw-1/modules/%24edgeAgent", authorization=authorization)
    hub.call(
        "POST", "/devices/query", {"query": "SELECT * FROM devices"}, headers={"x-ms-max-item-count": "5"}
    )
    module, queried = hub.emulator.requests
    assert (module.method, module.path, module.raw_path) == (
        "GET",
        "/twins/gw-1/modules/$edgeAgent",
        "/twins/gw-1/modules/%24edgeAgent",
    )
    assert module.query == {"api-version": API_VERSION}
    assert module.status == 200
    assert module.headers["authorization"] == "SharedAccessSignature <redacted>"
    assert "sig=" not in repr(hub.emulator.requests)
    assert queried.body == {"query": "SELECT * FROM devices"}
    assert queried.headers["x-ms-max-item-count"] == "5"


# ----- the emulator serves only what the official description declares ------------------------------


@pytest.fixture(scope="module")
def spec() -> Iterator[dict[str, Any]]:
    if not SPEC.exists():
        pytest.skip(f"the IoT Hub API description is not at {SPEC} (set FLEETLIFT_IOTHUB_SPEC)")
    yield json.loads(SPEC.read_text())


def test_every_route_is_declared_in_the_official_description(spec: dict[str, Any]) -> None:
    for method, template in ROUTES:
        assert template in spec["paths"], template
        assert method.lower() in spec["paths"][template], (method, template)
    assert spec["parameters"]["api-version"]["default"] == API_VERSION
    assert spec["info"]["version"] == API_VERSION


def test_every_request_the_emulator_answered_matches_a_declared_path(
    spec: dict[str, Any], edge_fleet: Hub
) -> None:
    hub = edge_fleet
    hub.call("PUT", "/configurations/deploy-1", configuration("deploy-1"))
    hub.call("GET", "/configurations", params={"top": "5"})
    hub.call("POST", "/devices/gw-1/applyConfigurationContent", edge_content())
    hub.call("PATCH", "/twins/gw-1", {"tags": {"a": 1}})
    hub.call("GET", "/twins/gw-1/modules/%24edgeAgent")
    hub.call("POST", "/twins/gw-1/methods", {"methodName": "x"})
    hub.call("POST", "/devices/query", {"query": "SELECT * FROM devices"})
    hub.call("DELETE", "/configurations/deploy-1")
    patterns = [
        (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"), template)
        for template in spec["paths"]
    ]
    for recorded in hub.emulator.requests:
        method = recorded.method.lower()
        templates = [
            t for pattern, t in patterns if pattern.match(recorded.raw_path) and method in spec["paths"][t]
        ]
        assert templates, recorded
        declared = {p.get("name") for t in templates for p in spec["paths"][t][method]["parameters"]}
        assert set(recorded.query) - {"api-version"} <= declared, recorded.query
