"""Every request the IoT Hub client sends is one the official API description allows.

Each client method runs against a mock transport that records the requests and answers plausibly; the
recorded requests are then checked by :mod:`tests.contract.iothub_spec`. The negative tests prove the
checker refuses what the description does not allow, so a passing contract means something.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from fleetlift.adapters.iothub import API_VERSION, IotHubClient, MethodResult

from .iothub_spec import IotHubSpec, SpecViolation, spec_path

HOST = "contract-hub.azure-devices.net"


@pytest.fixture(scope="module")
def spec() -> IotHubSpec:
    path = spec_path()
    if not path.is_file():
        pytest.skip(f"IoT Hub API description not found at {path} (set FLEETLIFT_IOTHUB_SPEC)")
    return IotHubSpec.load(path)


class StaticAuth:
    async def authorization(self) -> str:
        return "SharedAccessSignature sr=contract-hub.azure-devices.net&sig=c2lnbmF0dXJl&se=4102444800&skn=t"


def _twin(device_id: str, module_id: str | None = None) -> dict[str, Any]:
    twin: dict[str, Any] = {
        "deviceId": device_id,
        "etag": "AAAAAAAAAAE=",
        "version": 2,
        "tags": {"site": {"name": "plant-1"}},
        "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}},
    }
    if module_id:
        twin["moduleId"] = module_id
    return twin


def _configuration(configuration_id: str) -> dict[str, Any]:
    return {
        "id": configuration_id,
        "schemaVersion": "1.0",
        "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}}},
        "targetCondition": "tags.env = 'prod'",
        "priority": 10,
        "labels": {"fleetlift": "true"},
        "etag": "MQ==",
        "systemMetrics": {"results": {"targetedCount": 2, "appliedCount": 1}, "queries": {}},
        "metrics": {"results": {}, "queries": {}},
        "createdTimeUtc": "2026-11-28T05:00:00Z",
        "lastUpdatedTimeUtc": "2026-11-28T05:00:00Z",
    }


class Recorder:
    """A mock hub that records every request and answers the way the real one would, shape-wise."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        segments = path.strip("/").split("/")
        if path == "/devices/query":
            # Two pages: the first hands out a continuation token, the second (which sends it) ends.
            if "x-ms-continuation" not in request.headers:
                return httpx.Response(
                    200, json=[_twin("gw-1"), _twin("gw-2")], headers={"x-ms-continuation": "page-2"}
                )
            return httpx.Response(200, json=[_twin("gw-3")])
        if segments[0] == "twins" and segments[-1] == "methods":
            return httpx.Response(200, json={"status": 200, "payload": {"accepted": True}})
        if segments[0] == "twins":
            return httpx.Response(200, json=_twin(segments[1], segments[3] if len(segments) > 3 else None))
        if path.endswith("/applyConfigurationContent"):
            return httpx.Response(204)
        if path == "/configurations":
            return httpx.Response(200, json=[_configuration("a"), _configuration("b")])
        if segments[0] == "configurations":
            if request.method == "DELETE":
                return httpx.Response(204)
            status = 201 if request.method == "PUT" and "if-match" not in request.headers else 200
            body = json.loads(request.content) if request.content else _configuration(segments[1])
            return httpx.Response(status, json={**_configuration(segments[1]), **body})
        return httpx.Response(404, json={"Message": "ErrorCode:NotFound;unexpected", "ExceptionMessage": ""})


EDGE_CONFIGURATION: dict[str, Any] = {
    "id": "fl-dep-01hx-r1",
    "schemaVersion": "1.0",
    "labels": {"fleetlift.deployment": "01hx", "fleetlift.revision": "1"},
    "content": {
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "runtime": {
                        "type": "docker",
                        "settings": {
                            "registryCredentials": {
                                "acr": {"username": "u", "password": "p", "address": "acr.example.io"}
                            }
                        },
                    },
                    "systemModules": {},
                    "modules": {
                        "web": {
                            "version": "1.0",
                            "type": "docker",
                            "status": "running",
                            "restartPolicy": "always",
                            "settings": {
                                "image": "acr.example.io/web@sha256:" + "a" * 64,
                                "createOptions": "{}",
                            },
                        }
                    },
                }
            },
            "$edgeHub": {
                "properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /* INTO $upstream"}}
            },
        }
    },
    "targetCondition": "tags.env = 'prod' AND deviceId IN ['gw-1', 'gw-2']",
    "priority": 20,
    "metrics": {"queries": {"running": "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent'"}},
}

LAYERED_CONTENT: dict[str, Any] = {
    "modulesContent": {
        "$edgeAgent": {"properties.desired.modules.web": {"version": "1.0", "type": "docker"}},
    }
}


Scenario = Callable[[IotHubClient], Awaitable[Any]]


async def _query(client: IotHubClient) -> Any:
    return [twin["deviceId"] async for twin in client.query_twins("SELECT * FROM devices", page_size=2)]


SCENARIOS: dict[str, list[tuple[str, Scenario]]] = {
    "query_twins": [("paged query", _query)],
    "get_twin": [("device twin", lambda c: c.get_twin("gw-1"))],
    "update_twin": [
        (
            "desired properties, conditional",
            lambda c: c.update_twin(
                "gw-1",
                {"properties": {"desired": {"fleetlift": {"deployment": "01hx"}}}},
                etag="AAAAAAAAAAE=",
            ),
        ),
        ("tags, unconditional", lambda c: c.update_twin("gw:1#a", {"tags": {"site": {"name": "plant-2"}}})),
    ],
    "get_module_twin": [("$edgeAgent", lambda c: c.get_module_twin("gw-1", "$edgeAgent"))],
    "get_configuration": [("one", lambda c: c.get_configuration("fl-dep-01hx-r1"))],
    "list_configurations": [
        ("all", lambda c: c.list_configurations()),
        ("top", lambda c: c.list_configurations(top=20)),
    ],
    "put_configuration": [
        ("create edge deployment", lambda c: c.put_configuration(EDGE_CONFIGURATION)),
        (
            "update priority, conditional",
            lambda c: c.put_configuration({**EDGE_CONFIGURATION, "priority": 30}, etag="MQ=="),
        ),
    ],
    "delete_configuration": [
        ("unconditional", lambda c: c.delete_configuration("fl-dep-01hx-r1")),
        ("conditional", lambda c: c.delete_configuration("fl-dep-01hx-r1", etag="MQ==")),
    ],
    "apply_configuration_content": [
        ("full content", lambda c: c.apply_configuration_content("gw-1", EDGE_CONFIGURATION["content"])),
        ("layered content", lambda c: c.apply_configuration_content("gw-1", LAYERED_CONTENT)),
    ],
    "invoke_method": [
        (
            "fleetlift.update",
            lambda c: c.invoke_method(
                "gw-1", "fleetlift.update", {"deployment": "01hx"}, response_timeout=60, connect_timeout=10
            ),
        ),
    ],
}

CASES = [(method, label, scenario) for method, rows in SCENARIOS.items() for label, scenario in rows]


def _run(scenario: Scenario) -> tuple[Any, list[httpx.Request]]:
    recorder = Recorder()

    async def main() -> Any:
        limiter_free = {"config_ops_per_minute": 6000, "config_ops_burst": 100}
        async with IotHubClient(
            HOST, StaticAuth(), transport=httpx.MockTransport(recorder), **limiter_free
        ) as c:
            return await scenario(c)

    return asyncio.run(main()), recorder.requests


def test_every_public_client_method_has_a_contract_scenario() -> None:
    public = {
        name
        for name, member in inspect.getmembers(IotHubClient)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
        and name != "aclose"
    }
    assert public == set(SCENARIOS)


@pytest.mark.parametrize(("method", "label", "scenario"), CASES, ids=[f"{m}-{lbl}" for m, lbl, _ in CASES])
def test_requests_match_the_official_description(
    spec: IotHubSpec, method: str, label: str, scenario: Scenario
) -> None:
    _, requests = _run(scenario)
    assert requests, f"{method} ({label}) sent nothing"
    for request in requests:
        checked = spec.validate(request)
        assert request.url.params["api-version"] == API_VERSION == spec.version
        assert checked.operation.operation_id


def test_the_recorded_requests_are_the_expected_operations(spec: IotHubSpec) -> None:
    expected = {
        "query_twins": ["Query_GetTwins", "Query_GetTwins"],
        "get_twin": ["Devices_GetTwin"],
        "update_twin": ["Devices_UpdateTwin"],
        "get_module_twin": ["Modules_GetTwin"],
        "get_configuration": ["Configuration_Get"],
        "list_configurations": ["Configuration_GetConfigurations"],
        "put_configuration": ["Configuration_CreateOrUpdate"],
        "delete_configuration": ["Configuration_Delete"],
        "apply_configuration_content": ["Configuration_ApplyOnEdgeDevice"],
        "invoke_method": ["Devices_InvokeMethod"],
    }
    for method, rows in SCENARIOS.items():
        _, requests = _run(rows[0][1])
        assert [spec.validate(r).operation.operation_id for r in requests] == expected[method], method


def test_paging_sends_the_continuation_back(spec: IotHubSpec) -> None:
    result, requests = _run(_query)
    assert result == ["gw-1", "gw-2", "gw-3"]
    assert "x-ms-continuation" not in requests[0].headers
    assert requests[1].headers["x-ms-continuation"] == "page-2"
    assert all(r.headers["x-ms-max-item-count"] == "2" for r in requests)


def test_module_and_device_ids_are_escaped_and_decode_back(spec: IotHubSpec) -> None:
    _, requests = _run(lambda c: c.get_module_twin("gw:1#a?b", "$edgeAgent"))
    assert b"%24edgeAgent" in requests[0].url.raw_path
    checked = spec.validate(requests[0])
    assert checked.path_parameters == {"id": "gw:1#a?b", "mid": "$edgeAgent"}


def test_method_result_and_conditional_headers(spec: IotHubSpec) -> None:
    result, requests = _run(SCENARIOS["invoke_method"][0][1])
    assert result == MethodResult(status=200, payload={"accepted": True})
    assert spec.validate(requests[0]).body == {
        "methodName": "fleetlift.update",
        "payload": {"deployment": "01hx"},
        "responseTimeoutInSeconds": 60,
        "connectTimeoutInSeconds": 10,
    }
    _, requests = _run(SCENARIOS["delete_configuration"][0][1])
    assert requests[0].headers["If-Match"] == "*"
    _, requests = _run(SCENARIOS["put_configuration"][1][1])
    assert requests[0].headers["If-Match"] == '"MQ=="'  # the hub ignores an unquoted entity tag
    _, requests = _run(SCENARIOS["put_configuration"][0][1])
    assert "If-Match" not in requests[0].headers


# ---------------------------------------------------------------------- the checker refuses


def _request(method: str, path: str, body: Any = None, **headers: str) -> httpx.Request:
    content = None if body is None else json.dumps(body).encode()
    if content is not None:
        headers.setdefault("content-type", "application/json")
    return httpx.Request(method, f"https://{HOST}{path}", content=content, headers=headers)


GOOD_METHOD = {"methodName": "m", "payload": {}, "responseTimeoutInSeconds": 30}


@pytest.mark.parametrize(
    ("request_", "complaint"),
    [
        (_request("GET", "/twin/gw-1?api-version=2021-04-12"), "no path template matches"),
        (_request("GET", "/twins/gw-1/extra/deep?api-version=2021-04-12"), "no path template matches"),
        (_request("DELETE", "/twins/gw-1?api-version=2021-04-12"), "DELETE is not declared"),
        (_request("GET", "/devices/query?api-version=2021-04-12"), "GET is not declared for /devices/query"),
        (_request("GET", "/twins/gw-1"), "required query parameter 'api-version' is missing"),
        (_request("GET", "/twins/gw-1?api-version=2020-09-30"), "api-version is '2020-09-30'"),
        (_request("GET", "/twins/gw-1?api-version=2021-04-12&expand=all"), "'expand' is not declared"),
        (_request("GET", "/configurations?api-version=2021-04-12&top=many"), "'top' is not an integer"),
        (
            _request("GET", "/twins/gw-1?api-version=2021-04-12&api-version=2021-04-12"),
            "'api-version' is repeated",
        ),
        (_request("GET", "/twins/gw-1?api-version=2021-04-12", {"tags": {}}), "declares no body"),
        (_request("POST", "/twins/gw-1/methods?api-version=2021-04-12"), "requires a body"),
        (
            _request("POST", "/twins/gw-1/methods?api-version=2021-04-12", {**GOOD_METHOD, "methodName": 5}),
            "body['methodName']: 5 is not of type 'string'",
        ),
        (
            _request(
                "POST", "/twins/gw-1/methods?api-version=2021-04-12", {**GOOD_METHOD, "payload": "text"}
            ),
            "body['payload']: 'text' is not of type 'object'",
        ),
        (
            _request(
                "POST",
                "/twins/gw-1/methods?api-version=2021-04-12",
                {**GOOD_METHOD, "responseTimeoutInSeconds": 2**40},
            ),
            "is not a 'int32'",
        ),
        (
            _request("PUT", "/configurations/c1?api-version=2021-04-12", {"id": "c1", "labels": {"a": 1}}),
            "body['labels']['a']: 1 is not of type 'string'",
        ),
        (
            _request(
                "PUT",
                "/configurations/c1?api-version=2021-04-12",
                {"id": "c1", "content": {"modulesContent": {"$edgeAgent": {"properties.desired": "x"}}}},
            ),
            "is not of type 'object'",
        ),
        (
            _request(
                "POST",
                "/devices/query?api-version=2021-04-12",
                {"query": "SELECT *"},
                **{"content-type": "text/plain"},
            ),
            "content type 'text/plain'",
        ),
        (
            _request("POST", "/devices/query?api-version=2021-04-12", None, **{"x-ms-max-item-count": "1"}),
            "requires a body",
        ),
    ],
)
def test_the_checker_refuses_what_the_description_does_not_allow(
    spec: IotHubSpec, request_: httpx.Request, complaint: str
) -> None:
    problems = spec.violations(request_)
    assert any(complaint in problem for problem in problems), problems
    with pytest.raises(SpecViolation):
        spec.validate(request_)


def test_the_checker_accepts_a_hand_made_valid_request(spec: IotHubSpec) -> None:
    request = _request("POST", "/twins/gw-1/methods?api-version=2021-04-12", GOOD_METHOD)
    assert spec.violations(request) == []


def test_a_client_that_breaks_the_contract_is_caught(
    spec: IotHubSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliberately wrong client (a wrong API version, then a wrong body) fails the contract check."""
    monkeypatch.setattr("fleetlift.adapters.iothub.client.API_VERSION", "2018-06-30")
    _, requests = _run(lambda c: c.get_twin("gw-1"))
    assert any("api-version" in p for p in spec.violations(requests[0]))
    monkeypatch.undo()

    async def bad_method(client: IotHubClient) -> Any:
        return await client._request("POST", "/twins/gw-1/methods", body={"methodName": ["not", "a", "name"]})

    _, requests = _run(bad_method)
    assert any("methodName" in p for p in spec.violations(requests[0]))
