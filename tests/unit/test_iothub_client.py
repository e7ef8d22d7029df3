"""The IoT Hub client: retries and backoff, Retry-After, error mapping, secrecy, the configuration limiter."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fleetlift.adapters.iothub import (
    API_VERSION,
    Backoff,
    ConfigOperationLimiter,
    DeviceNotOnline,
    IotHubBadGateway,
    IotHubClient,
    IotHubConflict,
    IotHubError,
    IotHubInvalidInput,
    IotHubNotFound,
    IotHubPreconditionFailed,
    IotHubQuotaExceeded,
    IotHubUnavailable,
    SasTokenProvider,
    Throttled,
    error_from_response,
)
from fleetlift.errors import (
    BackendUnavailable,
    BadGateway,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)

KEY = base64.b64encode(b"unit-test-policy-key-never-real!").decode()
CONNECTION = f"HostName=unit-hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
HOST = "unit-hub.azure-devices.net"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A mock hub answering from a script, one answer per request (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


def hub_error(status: int, code: str, text: str = "", **headers: str) -> httpx.Response:
    body = {
        "Message": f"ErrorCode:{code};{text}",
        "ExceptionMessage": "Tracking ID:t-1-G:3-TimeStamp:11/28/2026",
    }
    return httpx.Response(status, json=body, headers={"iothub-errorcode": code, **headers})


TWIN = {
    "deviceId": "gw-1",
    "etag": "AAAAAAAAAAE=",
    "version": 3,
    "properties": {"desired": {}, "reported": {}},
}


def run(
    script: Script,
    action: Callable[[IotHubClient], Any],
    *,
    rng: float = 1.0,
    sleeps: list[float] | None = None,
    **options: Any,
) -> tuple[Any, list[float]]:
    """Run ``action`` against the scripted hub; return its result and the backoff sleeps."""
    slept = sleeps if sleeps is not None else []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> Any:
        auth = SasTokenProvider.from_connection_string(CONNECTION, clock=lambda: 1_700_000_000)
        options.setdefault("config_ops_per_minute", 6000)
        options.setdefault("config_ops_burst", 100)
        async with IotHubClient(
            HOST, auth, transport=httpx.MockTransport(script), sleep=sleep, rng=lambda: rng, **options
        ) as client:
            return await action(client)

    return asyncio.run(main()), slept


# ---------------------------------------------------------------------- requests


def test_every_request_has_the_api_version_and_a_sas_header() -> None:
    script = Script(httpx.Response(200, json=TWIN))
    twin, _ = run(script, lambda c: c.get_twin("gw-1"))
    assert twin == TWIN
    request = script.requests[0]
    assert str(request.url) == f"https://{HOST}/twins/gw-1?api-version={API_VERSION}"
    assert request.headers["authorization"].startswith(f"SharedAccessSignature sr={HOST}&sig=")
    assert request.headers["accept"] == "application/json"


def test_ids_are_escaped_as_single_path_segments() -> None:
    script = Script(httpx.Response(200, json=TWIN))
    run(script, lambda c: c.get_module_twin("gw 1/x#y", "$edgeAgent"))
    assert (
        script.requests[0].url.raw_path
        == b"/twins/gw%201%2Fx%23y/modules/%24edgeAgent?api-version=2021-04-12"
    )
    with pytest.raises(InvalidInput):
        run(script, lambda c: c.get_twin(""))


def test_etags_are_sent_as_quoted_entity_tags() -> None:
    # The hub's JSON carries etags unquoted, but it honours If-Match only with a quoted entity tag.
    script = Script(httpx.Response(200, json=TWIN))
    for etag, sent in (("AAAAAAAAAAE=", '"AAAAAAAAAAE="'), ('"MQ=="', '"MQ=="'), ('W/"Mg=="', 'W/"Mg=="')):
        run(script, lambda c, etag=etag: c.update_twin("gw-1", {"tags": {}}, etag=etag))
        assert script.requests[-1].headers["If-Match"] == sent
    run(script, lambda c: c.delete_configuration("c1", etag="MQ=="))
    run(script, lambda c: c.delete_configuration("c1"))
    run(script, lambda c: c.put_configuration({"id": "c1"}, etag="MQ=="))
    assert [r.headers["If-Match"] for r in script.requests[-3:]] == ['"MQ=="', "*", '"MQ=="']


def test_query_pages_follow_the_continuation_until_it_ends() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("x-ms-continuation")
        following = {None: "c1", "c1": "c2"}.get(token)
        headers = {"x-ms-continuation": following} if following else {}
        return httpx.Response(200, json=[{"deviceId": f"after-{token}"}], headers=headers)

    script = Script(page)
    found, _ = run(script, lambda c: _collect(c.query_twins("SELECT * FROM devices", page_size=1)))
    assert found == ["after-None", "after-c1", "after-c2"]
    assert [json.loads(r.content) for r in script.requests] == [{"query": "SELECT * FROM devices"}] * 3
    assert [r.headers.get("x-ms-continuation") for r in script.requests] == [None, "c1", "c2"]


async def _collect(twins: Any) -> list[str]:
    return [twin["deviceId"] async for twin in twins]


def test_query_refuses_a_hub_that_loops_on_the_same_token() -> None:
    script = Script(httpx.Response(200, json=[], headers={"x-ms-continuation": "same"}))
    with pytest.raises(IotHubBadGateway, match="repeated a continuation token"):
        run(script, lambda c: _collect(c.query_twins("SELECT * FROM devices")))
    assert len(script.requests) == 2


def test_answers_that_are_not_the_expected_json_are_bad_gateway() -> None:
    with pytest.raises(IotHubBadGateway, match="not JSON"):
        run(Script(httpx.Response(200, content=b"<html>")), lambda c: c.get_twin("gw-1"))
    with pytest.raises(IotHubBadGateway, match="array"):
        run(Script(httpx.Response(200, json={})), lambda c: c.list_configurations())
    with pytest.raises(IotHubBadGateway, match="integer status"):
        run(Script(httpx.Response(200, json={"payload": {}})), lambda c: c.invoke_method("gw-1", "m", {}))


def test_direct_method_result_timeouts_and_limits() -> None:
    script = Script(httpx.Response(200, json={"status": 404, "payload": {"reason": "no such deployment"}}))
    result, _ = run(
        script, lambda c: c.invoke_method("gw-1", "fleetlift.update", {"d": 1}, response_timeout=30)
    )
    assert (result.status, result.payload) == (404, {"reason": "no such deployment"})
    # The HTTP request waits as long as the hub may wait for the device, and a little more.
    assert script.requests[0].extensions["timeout"]["read"] == 45.0
    for bad in ({"response_timeout": 4}, {"response_timeout": 301}, {"connect_timeout": -1}):
        with pytest.raises(InvalidInput):
            run(script, lambda c, bad=bad: c.invoke_method("gw-1", "m", {}, **bad))
    assert len(script.requests) == 1


# ---------------------------------------------------------------------- retries


def test_5xx_is_retried_with_exponential_backoff_and_full_jitter() -> None:
    script = Script(
        hub_error(503, "ServiceUnavailable"),
        hub_error(500, "ServerError"),
        httpx.Response(502),
        httpx.Response(200, json=TWIN),
    )
    twin, sleeps = run(script, lambda c: c.get_twin("gw-1"), rng=0.5)
    assert twin == TWIN
    assert sleeps == [0.25, 0.5, 1.0]  # half of 0.5, 1 and 2 seconds: the jitter draws 0.5 each time
    assert len(script.requests) == 4


def test_backoff_is_capped_and_retries_end() -> None:
    script = Script(hub_error(503, "ServiceUnavailable"))
    sleeps: list[float] = []
    with pytest.raises(IotHubUnavailable) as caught:
        run(
            script,
            lambda c: c.get_twin("gw-1"),
            sleeps=sleeps,
            retries=5,
            backoff=Backoff(base_seconds=1, cap_seconds=3),
        )
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert len(script.requests) == 6
    assert caught.value.hub_code == "ServiceUnavailable" and caught.value.status == 503


def test_retry_after_is_honoured() -> None:
    script = Script(
        hub_error(429, "ThrottlingException", **{"Retry-After": "7"}), httpx.Response(200, json=TWIN)
    )
    _, sleeps = run(script, lambda c: c.get_twin("gw-1"))
    assert sleeps == [7.0]


def test_a_retry_after_beyond_reason_is_reported_not_waited_for() -> None:
    script = Script(hub_error(429, "ThrottlingException", **{"Retry-After": "600"}))
    with pytest.raises(Throttled) as caught:
        run(script, lambda c: c.get_twin("gw-1"))
    assert len(script.requests) == 1
    assert caught.value.extra["retry_after"] == 600
    assert isinstance(caught.value, BackendUnavailable) and caught.value.status == 503


def test_throttling_beyond_the_retries_is_throttled() -> None:
    script = Script(hub_error(429, "ThrottlingException", **{"Retry-After": "1"}))
    sleeps: list[float] = []
    with pytest.raises(Throttled) as caught:
        run(script, lambda c: c.list_configurations(), sleeps=sleeps, retries=2)
    assert len(script.requests) == 3
    assert sleeps == [1.0, 1.0]
    assert caught.value.extra["retry_after"] == 1.0
    assert caught.value.hub_code == "ThrottlingException"


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "ArgumentInvalid", IotHubInvalidInput),
        (404, "DeviceNotFound", IotHubNotFound),
        (409, "ConfigurationAlreadyExists", IotHubConflict),
        (412, "PreconditionFailed", IotHubPreconditionFailed),
        (403, "IoTHubUnauthorizedAccess", IotHubBadGateway),
    ],
)
def test_other_4xx_are_never_retried(status: int, code: str, kind: type[IotHubError]) -> None:
    script = Script(hub_error(status, code))
    with pytest.raises(kind):
        run(script, lambda c: c.get_twin("gw-1"))
    assert len(script.requests) == 1


def test_writes_that_may_have_happened_are_not_retried_on_5xx() -> None:
    for action in (
        lambda c: c.invoke_method("gw-1", "fleetlift.update", {}),
        lambda c: c.put_configuration({"id": "c1"}),
        lambda c: c.update_twin("gw-1", {"tags": {}}, etag="AAAAAAAAAAE="),
        lambda c: c.delete_configuration("c1", etag="MQ=="),
    ):
        script = Script(hub_error(500, "ServerError"))
        with pytest.raises(IotHubBadGateway):
            run(script, action)
        assert len(script.requests) == 1
    script = Script(hub_error(504, "GatewayTimeout"))
    with pytest.raises(IotHubUnavailable):
        run(script, lambda c: c.invoke_method("gw-1", "fleetlift.update", {}))
    assert len(script.requests) == 1


def test_writes_are_retried_when_the_hub_refused_them_up_front() -> None:
    for first in (hub_error(429, "ThrottlingException"), hub_error(503, "ServiceUnavailable")):
        script = Script(first, httpx.Response(200, json={"status": 200, "payload": None}))
        result, sleeps = run(script, lambda c: c.invoke_method("gw-1", "fleetlift.update", {}))
        assert result.status == 200 and len(script.requests) == 2 and len(sleeps) == 1
    script = Script(hub_error(502, "BadGateway"), httpx.Response(200, json=TWIN))
    run(script, lambda c: c.update_twin("gw-1", {"tags": {}}))  # unconditional: the same when repeated
    assert len(script.requests) == 2


def test_transport_failures_are_retried_when_safe() -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.Response(200, json=TWIN))
    _, sleeps = run(script, lambda c: c.get_twin("gw-1"))
    assert len(sleeps) == 2
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json={"status": 200, "payload": {}}))
    run(script, lambda c: c.invoke_method("gw-1", "m", {}))  # never sent: safe to send again
    assert len(script.requests) == 2
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(IotHubUnavailable, match=r"could not be reached \(ReadTimeout\)"):
        run(script, lambda c: c.invoke_method("gw-1", "m", {}))
    assert len(script.requests) == 1


def test_a_401_renews_the_token_once() -> None:
    class CountingAuth:
        def __init__(self) -> None:
            self.issued = 0

        async def authorization(self) -> str:
            self.issued += 1
            return f"SharedAccessSignature sr={HOST}&sig=token{self.issued}&se=1&skn=p"

        def invalidate(self) -> None:
            pass

    auth = CountingAuth()
    script = Script(hub_error(401, "IoTHubUnauthorized"), httpx.Response(200, json=TWIN))

    async def main() -> Any:
        async with IotHubClient(HOST, auth, transport=httpx.MockTransport(script)) as client:
            return await client.get_twin("gw-1")

    assert asyncio.run(main()) == TWIN
    assert [r.headers["authorization"].split("&")[1] for r in script.requests] == ["sig=token1", "sig=token2"]

    script = Script(hub_error(401, "IoTHubUnauthorized"))
    with pytest.raises(IotHubBadGateway, match="refused fleetlift's credentials"):
        asyncio.run(main())
    assert len(script.requests) == 2


# ---------------------------------------------------------------------- error mapping


def test_first_body_shape_with_header() -> None:
    error = error_from_response(
        404,
        {"iothub-errorcode": "DeviceNotFound", "content-type": "application/json"},
        json.dumps(
            {
                "Message": "ErrorCode:DeviceNotFound;Device gw-9 not registered",
                "ExceptionMessage": "Tracking ID:4ab8a3f0-G:5-TimeStamp:11/28/2026 05:00:00",
            }
        ).encode(),
    )
    assert type(error) is IotHubNotFound and isinstance(error, NotFound) and error.status == 404
    assert (error.hub_code, error.hub_status, error.tracking_id) == ("DeviceNotFound", 404, "4ab8a3f0-G:5")
    assert "Device gw-9 not registered" in error.detail
    assert error.extra == {"hub_code": "DeviceNotFound", "hub_status": 404, "hub_tracking_id": "4ab8a3f0-G:5"}


def test_second_body_shape_device_not_online() -> None:
    body = {
        "errorCode": 404103,
        "trackingId": "b2c1-G:2",
        "message": "Timed out waiting for device to connect.",
        "info": {"timeout": "00:00:10"},
        "timestampUtc": "2026-11-28T05:00:00.0000000Z",
    }
    for headers in ({}, {"iothub-errorcode": "DeviceNotOnline"}):
        error = error_from_response(404, headers, json.dumps(body).encode())
        assert isinstance(error, DeviceNotOnline) and isinstance(error, NotFound)
        assert error.hub_code == "DeviceNotOnline"
        assert error.extra["hub_error_number"] == 404103
        assert error.tracking_id == "b2c1-G:2"
        assert "Timed out waiting for device to connect." in error.detail


def test_second_shape_nested_in_the_first() -> None:
    # How the hub answers a direct method to an offline device: the second shape as a JSON string.
    inner = {
        "errorCode": 404103,
        "trackingId": "c3d4-G:9",
        "message": "Timed out waiting for device to connect.",
    }
    body = json.dumps({"Message": json.dumps(inner), "ExceptionMessage": ""}).encode()
    error = error_from_response(404, {}, body)
    assert isinstance(error, DeviceNotOnline)
    assert (error.hub_code, error.tracking_id) == ("DeviceNotOnline", "c3d4-G:9")
    assert error.detail == "IoT Hub answered 404 DeviceNotOnline: Timed out waiting for device to connect."


def test_the_header_alone_is_enough() -> None:
    error = error_from_response(412, {"IoTHub-ErrorCode": "PreconditionFailed"}, b"")
    assert isinstance(error, PreconditionFailed) and error.status == 412
    assert error.hub_code == "PreconditionFailed"


@pytest.mark.parametrize(
    ("status", "code", "kind", "base", "our_status"),
    [
        (400, "ArgumentInvalid", IotHubInvalidInput, InvalidInput, 400),
        (401, "IoTHubUnauthorized", IotHubBadGateway, BadGateway, 502),
        (403, "IoTHubUnauthorizedAccess", IotHubBadGateway, BadGateway, 502),
        (403, "IoTHubQuotaExceeded", IotHubQuotaExceeded, Conflict, 409),
        (413, "ConfigurationCountLimitExceeded", IotHubQuotaExceeded, Conflict, 409),  # the 101st
        (404, "ConfigurationNotFound", IotHubNotFound, NotFound, 404),
        (405, "MethodNotAllowed", IotHubBadGateway, BadGateway, 502),
        (409, "ConfigurationAlreadyExists", IotHubConflict, Conflict, 409),
        (412, "PreconditionFailed", IotHubPreconditionFailed, PreconditionFailed, 412),
        (429, "ThrottlingException", Throttled, BackendUnavailable, 503),
        (500, "ServerError", IotHubBadGateway, BadGateway, 502),
        (503, "ServiceUnavailable", IotHubUnavailable, BackendUnavailable, 503),
        (504, "GatewayTimeout", IotHubUnavailable, BackendUnavailable, 503),
    ],
)
def test_status_mapping(
    status: int, code: str, kind: type[IotHubError], base: type[Exception], our_status: int
) -> None:
    body = json.dumps({"Message": f"ErrorCode:{code};text", "ExceptionMessage": ""}).encode()
    error = error_from_response(status, {}, body)
    assert type(error) is kind and isinstance(error, base)
    assert error.status == our_status and error.hub_status == status and error.hub_code == code


def test_numeric_codes_are_named_and_unknown_bodies_tolerated() -> None:
    error = error_from_response(404, {}, json.dumps({"errorCode": 404001, "message": "gone"}).encode())
    assert error.hub_code == "DeviceNotFound" and error.extra["hub_error_number"] == 404001
    error = error_from_response(404, {}, json.dumps({"errorCode": 404999, "message": "?"}).encode())
    assert error.hub_code == "404999"
    for body in (b"", b"not json", b"[1, 2]", b'{"unrelated": true}'):
        error = error_from_response(500, {}, body)
        assert error.hub_code is None and error.detail == "IoT Hub answered 500: HTTP 500"


# ---------------------------------------------------------------------- secrecy


SECRETS = (KEY, KEY[:16], "SharedAccessSignature sr=", "sig=")


def _assert_secret_free(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {text!r}"


def test_no_secret_reaches_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sas = "SharedAccessSignature sr=unit-hub.azure-devices.net&sig=abcDEF%2B123&se=1&skn=iothubowner"
    echoing = httpx.Response(
        401, json={"Message": f"ErrorCode:IoTHubUnauthorized;bad token {sas}", "ExceptionMessage": ""}
    )
    leaky = httpx.Response(
        400, json={"errorCode": 400004, "message": f"SharedAccessKey={KEY}; Bearer eyJhbGciOi.secret"}
    )
    errors: list[IotHubError] = []
    for script in (
        Script(echoing),
        Script(leaky),
        Script(hub_error(503, "ServiceUnavailable")),
        Script(httpx.ConnectError(f"failed with {sas}")),
        Script(httpx.Response(200, content=b"oops")),
    ):
        with pytest.raises(IotHubError) as caught:
            run(script, lambda c: c.get_twin("gw-1"), retries=1)
        errors.append(caught.value)
    for error in errors:
        for text in (str(error), repr(error), error.detail, json.dumps(error.extra)):
            _assert_secret_free(text)
    assert "[redacted]" in errors[1].detail
    for record in caplog.records:
        _assert_secret_free(record.getMessage())
        _assert_secret_free(json.dumps({k: str(v) for k, v in vars(record).items()}))
    assert any(record.name == "fleetlift.iothub" for record in caplog.records)

    provider = SasTokenProvider.from_connection_string(CONNECTION)
    client_repr = repr(IotHubClient(HOST, provider))
    _assert_secret_free(client_repr + repr(provider))


# ---------------------------------------------------------------------- the configuration limiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_limiter_queues_in_order_after_a_burst() -> None:
    time = FakeTime()

    async def scenario() -> list[float]:
        gate = asyncio.Event()

        async def held(seconds: float) -> None:
            time.sleeps.append(seconds)
            await gate.wait()

        limiter = ConfigOperationLimiter(60, burst=2, clock=time.clock, sleep=held)
        assert (limiter.queue_position(), limiter.estimated_wait_seconds()) == (0, 0)
        tasks = [asyncio.create_task(limiter.acquire()) for _ in range(4)]
        await asyncio.sleep(0)
        assert limiter.waiting == 2
        assert limiter.queue_position() == 3
        assert limiter.estimated_wait_seconds() == 3.0
        gate.set()
        waits = list(await asyncio.gather(*tasks))
        assert limiter.waiting == 0
        time.now = 10.0  # idle long enough: the burst is available again
        assert (limiter.queue_position(), limiter.estimated_wait_seconds()) == (0, 0)
        return waits

    assert asyncio.run(scenario()) == [0.0, 0.0, 1.0, 2.0]
    assert time.sleeps == [1.0, 2.0]


def test_limiter_refuses_beyond_the_longest_wait_and_says_how_long() -> None:
    time = FakeTime()

    async def scenario() -> Throttled:
        gate = asyncio.Event()

        async def held(seconds: float) -> None:
            await gate.wait()

        limiter = ConfigOperationLimiter(60, burst=1, max_wait_seconds=2, clock=time.clock, sleep=held)
        tasks = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Throttled) as caught:
            await limiter.acquire()
        gate.set()
        await asyncio.gather(*tasks)
        return caught.value

    refusal = asyncio.run(scenario())
    assert refusal.status == 503
    assert refusal.extra["retry_after"] == 1
    assert refusal.extra["queue_position"] == 3
    assert refusal.extra["estimated_wait_seconds"] == 3.0
    assert "2 waiting" in refusal.detail


def test_a_cancelled_wait_gives_its_slot_back() -> None:
    time = FakeTime()

    async def scenario() -> float:
        async def held(seconds: float) -> None:
            await asyncio.Event().wait()

        limiter = ConfigOperationLimiter(60, burst=1, clock=time.clock, sleep=held)
        await limiter.acquire()
        waiting = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        assert limiter.estimated_wait_seconds() == 2.0
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert limiter.waiting == 0
        return limiter.estimated_wait_seconds()

    assert asyncio.run(scenario()) == 1.0


def test_only_configuration_operations_pass_the_limiter() -> None:
    time = FakeTime()
    configuration = {"id": "c1", "etag": "MQ=="}
    script = Script(httpx.Response(200, json=configuration))

    async def main() -> None:
        auth = SasTokenProvider.from_connection_string(CONNECTION, clock=lambda: 1_700_000_000)
        async with IotHubClient(
            HOST,
            auth,
            transport=httpx.MockTransport(script),
            sleep=time.sleep,
            clock=time.clock,
            config_ops_per_minute=60,
            config_ops_burst=1,
        ) as client:
            await client.get_configuration("c1")
            for _ in range(3):
                await client.get_twin("gw-1")  # not a configuration operation: never waits
            await client.put_configuration(configuration, etag="MQ==")
            assert client.config_limiter.estimated_wait_seconds() == 1.0
            await client.delete_configuration("c1")

    asyncio.run(main())
    assert time.sleeps == [1.0, 1.0]
    assert len(script.requests) == 6
