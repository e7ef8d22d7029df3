"""IoT Edge manifests, configuration IDs, hub target conditions, and state read from $edgeAgent twins."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from fleetlift.deployments.rules import DeviceUpdateState as S
from fleetlift.errors import ConditionSyntaxError, InvalidInput
from fleetlift.iothub.rules import (
    EDGE_AGENT,
    EDGE_HUB,
    UPDATE_METHOD,
    EdgeModule,
    EdgeRuntime,
    RegistryLogin,
    check_configuration_id,
    check_module_name,
    configuration_document,
    configuration_id,
    counts_from_metrics,
    create_options_settings,
    default_routes,
    desired_update_patch,
    edge_device_state,
    edge_manifest,
    edge_status_detail,
    hub_string,
    hub_target_condition,
    joined_create_options,
    method_payload,
    module_from_payload,
    parse_configuration_id,
    twin_size,
)
from fleetlift.targeting.rules import DeviceFacts, evaluate, parse_condition

D = "sha256:" + "9f" * 32
IMAGE = f"registry.example.com/acme/telemetry@{D}"
ACR = RegistryLogin(address="registry.example.com", username="puller", password="s3cret")


def module(name: str = "telemetry", **overrides: Any) -> EdgeModule:
    return EdgeModule(name=name, image_digest_ref=overrides.pop("image", IMAGE), **overrides)


# --- manifests ----------------------------------------------------------------------------------


def test_full_manifest_shape() -> None:
    modules = [
        module(
            create_options={"HostConfig": {"Memory": 268435456}},
            env={"LOG_LEVEL": "info"},
            restart_policy="on-failure",
            startup_order=2,
            version="1.4.0",
        ),
        module("uplink", status="stopped"),
    ]
    content = edge_manifest(modules, registries={"acme": ACR})

    agent = content[EDGE_AGENT]["properties.desired"]
    assert agent["schemaVersion"] == "1.1"
    assert agent["runtime"] == {
        "type": "docker",
        "settings": {
            "minDockerVersion": "v1.25",
            "loggingOptions": "",
            "registryCredentials": {
                "acme": {"username": "puller", "password": "s3cret", "address": "registry.example.com"}
            },
        },
    }
    system = agent["systemModules"]
    assert system["edgeAgent"] == {
        "type": "docker",
        "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{}"},
    }
    hub = system["edgeHub"]
    assert (hub["type"], hub["status"], hub["restartPolicy"], hub["startupOrder"]) == (
        "docker",
        "running",
        "always",
        0,
    )
    assert hub["settings"]["image"] == "mcr.microsoft.com/azureiotedge-hub:1.5"
    assert set(joined_create_options(hub["settings"])["HostConfig"]["PortBindings"]) == {
        "443/tcp",
        "5671/tcp",
        "8883/tcp",
    }
    assert agent["modules"]["telemetry"] == {
        "version": "1.4.0",
        "type": "docker",
        "status": "running",
        "restartPolicy": "on-failure",
        "startupOrder": 2,
        "settings": {"image": IMAGE, "createOptions": '{"HostConfig":{"Memory":268435456}}'},
        "env": {"LOG_LEVEL": {"value": "info"}},
    }
    uplink = agent["modules"]["uplink"]
    assert uplink["status"] == "stopped" and "startupOrder" not in uplink and "env" not in uplink

    assert content[EDGE_HUB]["properties.desired"] == {
        "schemaVersion": "1.1",
        "routes": {
            "telemetryToUpstream": "FROM /messages/modules/telemetry/outputs/* INTO $upstream",
            "uplinkToUpstream": "FROM /messages/modules/uplink/outputs/* INTO $upstream",
        },
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
    }
    json.dumps(content)  # plain JSON all the way down: no arrays needed, nothing exotic


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (None, default_routes([module()])),
        ({}, {}),
        ({"toFilter": 'FROM /messages/* INTO BrokeredEndpoint("/modules/f/inputs/in")'}, None),
    ],
)
def test_routes(routes: dict[str, str] | None, expected: dict[str, str] | None) -> None:
    content = edge_manifest([module()], registries={}, routes=routes)
    assert content[EDGE_HUB]["properties.desired"]["routes"] == (routes if expected is None else expected)


def test_runtime_settings_carry_over() -> None:
    runtime = EdgeRuntime(
        agent_image="mcr.microsoft.com/azureiotedge-agent:1.5.3",
        hub_image="mcr.microsoft.com/azureiotedge-hub:1.5.3",
        min_docker_version="v1.40",
        logging_options='{"log-driver":"local"}',
        hub_startup_order=None,
        store_and_forward_ttl_secs=60,
    )
    content = edge_manifest([], registries={}, runtime=runtime)
    agent = content[EDGE_AGENT]["properties.desired"]
    assert agent["runtime"]["settings"]["minDockerVersion"] == "v1.40"
    assert agent["runtime"]["settings"]["loggingOptions"] == '{"log-driver":"local"}'
    assert agent["systemModules"]["edgeAgent"]["settings"]["image"].endswith(":1.5.3")
    assert "startupOrder" not in agent["systemModules"]["edgeHub"]
    assert agent["modules"] == {}
    hub = content[EDGE_HUB]["properties.desired"]
    assert hub["routes"] == {} and hub["storeAndForwardConfiguration"] == {"timeToLiveSecs": 60}


def test_layered_manifest_sets_paths_only() -> None:
    content = edge_manifest([module(), module("uplink")], registries={"acme": ACR}, layered=True)
    assert set(content[EDGE_AGENT]) == {
        "properties.desired.modules.telemetry",
        "properties.desired.modules.uplink",
        "properties.desired.runtime.settings.registryCredentials.acme",
    }
    assert content[EDGE_AGENT]["properties.desired.modules.telemetry"]["settings"]["image"] == IMAGE
    assert content[EDGE_AGENT]["properties.desired.runtime.settings.registryCredentials.acme"] == {
        "username": "puller",
        "password": "s3cret",
        "address": "registry.example.com",
    }
    route = "FROM /messages/modules/{}/outputs/* INTO $upstream"
    assert content[EDGE_HUB] == {
        f"properties.desired.routes.{name}ToUpstream": route.format(name) for name in ("telemetry", "uplink")
    }
    assert "schemaVersion" not in json.dumps(content) and "systemModules" not in json.dumps(content)
    assert EDGE_HUB not in edge_manifest([module()], registries={}, routes={}, layered=True)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: edge_manifest([module(), module()], registries={}), "two modules"),
        (lambda: edge_manifest([module()], registries={"my.acr": ACR}), "twin property name"),
        (lambda: edge_manifest([module()], registries={}, routes={"a b": "FROM /* INTO $upstream"}), "twin"),
        (lambda: edge_manifest([module()], registries={}, routes={"r": " "}), "empty"),
        (lambda: edge_manifest([], registries={}, layered=True), "at least one module"),
        (
            lambda: edge_manifest(
                [module(f"m{i}", create_options={"Cmd": "x" * 4000}) for i in range(10)], registries={}
            ),
            "bytes",
        ),
    ],
)
def test_manifest_refusals(call: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        call()


# --- createOptions chunks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "chunks"),
    [(2, 1), (512, 1), (513, 2), (1024, 2), (1025, 3), (4096, 8)],
)
def test_create_options_chunks(length: int, chunks: int) -> None:
    # {"A":"xxx"} is the payload plus 8 characters of JSON.
    options = {"A": "x" * (length - 8)} if length > 8 else {}
    settings = create_options_settings(options)
    names = ["createOptions"] + [f"createOptions{n:02d}" for n in range(1, chunks)]
    assert list(settings) == names
    assert all(len(chunk) <= 512 for chunk in settings.values())
    assert len("".join(settings.values())) == length
    assert joined_create_options(settings) == options


def test_create_options_chunks_in_the_manifest() -> None:
    options = {"HostConfig": {"Binds": [f"/data/volume-{i}:/mnt/{i}" for i in range(40)]}}
    content = edge_manifest([module(create_options=options)], registries={})
    settings = content[EDGE_AGENT]["properties.desired"]["modules"]["telemetry"]["settings"]
    assert "createOptions01" in settings and joined_create_options(settings) == options


@pytest.mark.parametrize(
    "options",
    [{"A": "x" * 4089}, {"A": float("nan")}, {"A": object()}],
)
def test_create_options_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="createOptions"):
        create_options_settings(options)


def test_non_ascii_create_options_stay_within_512_bytes() -> None:
    settings = create_options_settings({"Label": "é" * 300})
    assert all(len(chunk.encode()) <= 512 for chunk in settings.values())
    assert joined_create_options(settings) == {"Label": "é" * 300}


# --- modules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["telemetry", "a1", "my_mod-2", "Module9", "x" * 128])
def test_module_names(name: str) -> None:
    assert check_module_name(name) == name


@pytest.mark.parametrize(
    "name", ["a", "$edgeAgent", "edgeHub", "EdgeAgent", "my.mod", "-x", "_x", "x" * 129, "with space", ""]
)
def test_bad_module_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_module_name(name)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        (f"registry.example.com/acme/telemetry@{D}", f"registry.example.com/acme/telemetry@{D}"),
        (f"registry.example.com/acme/telemetry:1.4.0@{D}", f"registry.example.com/acme/telemetry@{D}"),
        (f"nginx@{D}", f"docker.io/library/nginx@{D}"),
        (f"localhost:5000/app:v1@{D}", f"localhost:5000/app@{D}"),
        ("registry.example.com/acme/telemetry:1.4.0", None),
        ("nginx", None),
    ],
)
def test_payload_images_are_pinned_by_digest(image: str, pinned: str | None) -> None:
    payload = {"type": "container", "name": "telemetry", "image": image}
    if pinned is None:
        with pytest.raises(InvalidInput, match="digest"):
            module_from_payload(payload)
    else:
        assert module_from_payload(payload).image_digest_ref == pinned


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": "registry.example.com/acme/telemetry:1.4.0"}, "tag only"),
        ({"image": f"registry.example.com/acme/telemetry:1.4.0@{D}"}, "both a tag and a digest"),
        ({"image": "UPPER/case"}, "image reference"),
        ({"env": {"BAD.NAME": "x"}}, "twin property name"),
        ({"env": {"N": 1}}, "text"),
        ({"restart_policy": "sometimes"}, "restart policy"),
        ({"status": "paused"}, "running or stopped"),
        ({"startup_order": -1}, "startupOrder"),
        ({"startup_order": 4294967296}, "startupOrder"),
        ({"startup_order": True}, "startupOrder"),
        ({"version": ""}, "version"),
        ({"create_options": ["not", "an", "object"]}, "JSON object"),
    ],
)
def test_module_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        module(**fields)


def test_module_from_payload() -> None:
    payload = {
        "type": "container",
        "name": "telemetry",
        "image": f"registry.example.com/acme/telemetry:1.4.0@{D}",
        "env": {"LOG_LEVEL": "info"},
        "ports": [
            {"container_port": 8080, "host_port": 80, "protocol": "tcp"},
            {"container_port": 5000, "host_port": None, "protocol": "udp"},
        ],
        "create_options": {"HostConfig": {"Memory": 1024}, "ExposedPorts": {"9000/tcp": {}}},
        "restart_policy": "never",
        "startup_order": 3,
    }
    edge = module_from_payload(payload, version="1.4.0")
    assert edge == EdgeModule(
        name="telemetry",
        image_digest_ref=f"registry.example.com/acme/telemetry@{D}",
        create_options={
            "HostConfig": {"Memory": 1024, "PortBindings": {"8080/tcp": [{"HostPort": "80"}]}},
            "ExposedPorts": {"9000/tcp": {}, "8080/tcp": {}, "5000/udp": {}},
        },
        env={"LOG_LEVEL": "info"},
        restart_policy="never",
        startup_order=3,
        version="1.4.0",
    )
    assert payload["create_options"] == {"HostConfig": {"Memory": 1024}, "ExposedPorts": {"9000/tcp": {}}}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"type": "file", "artifact_id": "a"}, "container"),
        ({"type": "container", "name": "telemetry"}, "image"),
        ({"type": "container", "name": "t.x", "image": IMAGE}, "IoT Edge module"),
        ({"type": "container", "name": "telemetry", "image": IMAGE, "ports": [{"host_port": 1}]}, "port"),
    ],
)
def test_payload_refusals(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        module_from_payload(payload)


def test_registry_login_hides_the_password() -> None:
    assert "s3cret" not in repr(ACR)
    for address in ("", "https://registry.example.com", "has space.io"):
        with pytest.raises(InvalidInput):
            RegistryLogin(address=address, username="u", password="p")
    with pytest.raises(InvalidInput):
        EdgeRuntime(store_and_forward_ttl_secs=0)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({}, 0),
        ({"a": "bc"}, 3),
        ({"a": 1}, 9),
        ({"a": 1.5}, 9),
        ({"a": True}, 5),
        ({"é": "é"}, 4),
        ({"a": "b\x00c"}, 3),
        ({"a": {"b": {"c": "d"}}}, 4),
    ],
)
def test_twin_size(value: dict[str, Any], size: int) -> None:
    assert twin_size(value) == size


def test_configuration_document() -> None:
    content = edge_manifest([module()], registries={})
    document = configuration_document(
        "fleetlift-dep_1-r1",
        content,
        target_condition="tags.env = 'prod'",
        priority=10,
        labels={"release": "1.4.0"},
        metrics={"custom": "SELECT deviceId FROM devices"},
    )
    assert document == {
        "id": "fleetlift-dep_1-r1",
        "labels": {"release": "1.4.0"},
        "content": {"modulesContent": content},
        "targetCondition": "tags.env = 'prod'",
        "priority": 10,
        "metrics": {"queries": {"custom": "SELECT deviceId FROM devices"}},
    }
    for bad in (-1, 2**31, True):
        with pytest.raises(InvalidInput, match="priority"):
            configuration_document("x", content, target_condition="*", priority=bad)
    with pytest.raises(InvalidInput):
        configuration_document("Upper", content, target_condition="*", priority=1)


# --- configuration IDs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment_id", "revision", "expected"),
    [
        ("dep_01JD3Q6R8W2M5E0B9N4T7K1XYZ", 1, "fleetlift-dep_01jd3q6r8w2m5e0b9n4t7k1xyz-r1"),
        ("dep_01JD3Q6R8W2M5E0B9N4T7K1XYZ", 0, "fleetlift-dep_01jd3q6r8w2m5e0b9n4t7k1xyz-r0"),
        ("dep_abc", 12, "fleetlift-dep_!a!b!c-r12"),
        ("Deploy-r5", 3, "fleetlift-!deploy-r5-r3"),
        ("dep_A_b", 2, "fleetlift-dep_a_!b-r2"),
        ("x" * 64, 999999999, "fleetlift-" + "x" * 64 + "-r999999999"),
    ],
)
def test_configuration_ids(deployment_id: str, revision: int, expected: str) -> None:
    made = configuration_id(deployment_id, revision)
    assert made == expected
    assert check_configuration_id(made) == made
    assert parse_configuration_id(made) == (deployment_id, revision)


@pytest.mark.parametrize(
    ("deployment_id", "revision"),
    [
        ("dep 1", 1),
        ("dep/1", 1),
        ("", 1),
        ("x" * 65, 1),
        ("dep_1", -1),
        ("dep_1", 10**9),
        ("dep_1", True),
        ("A" * 64, 1),
    ],
)
def test_bad_configuration_ids(deployment_id: str, revision: int) -> None:
    with pytest.raises(InvalidInput):
        configuration_id(deployment_id, revision)


@pytest.mark.parametrize(
    "foreign",
    [
        "my-deployment",
        "fleetlift-dep_1",
        "fleetlift-dep_1-r01",
        "fleetlift-dep_!!a-r1",
        "fleetlift-dep_!1-r1",
        "fleetlift-dep_a!-r1",
        "fleetlift-dep 1-r1",
        "fleetlift-DEP_1-r1",
    ],
)
def test_foreign_configuration_ids(foreign: str) -> None:
    assert parse_configuration_id(foreign) is None


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("base-1.4", False),
        ("base-1-4", True),
        ("a:+%_#*?!(),=@;'", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("Upper", False),
        ("with space", False),
        ("a/b", False),
        ("", False),
    ],
)
def test_check_configuration_id(text: str, valid: bool) -> None:
    if valid:
        assert check_configuration_id(text) == text
    else:
        with pytest.raises(InvalidInput):
            check_configuration_id(text)


# --- target conditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "device_ids", "condition", "expected"),
    [
        (None, [], "tags.env = 'prod'", "tags.env = 'prod'"),
        (None, ["gw-1", "gw-2", "gw-1"], None, "deviceId IN ['gw-1', 'gw-2']"),
        (None, ["gw-1"], "tags.env = 'prod'", "deviceId IN ['gw-1'] OR tags.env = 'prod'"),
        (None, ["gw-1"], "*", "*"),
        (None, [], "*", "*"),
        (
            {"fleetlift.tenant": "t1", "env": "prod"},
            ["a"],
            "tags.ring < 2",
            "tags.env = 'prod' AND tags.fleetlift.tenant = 't1' AND (deviceId IN ['a'] OR tags.ring < 2)",
        ),
        ({"env": "prod"}, [], "*", "tags.env = 'prod'"),
        (None, [], "NOT tags.x = 1", "NOT IS_DEFINED(tags.x) OR tags.x != 1"),
        (None, [], "NOT tags.x != 'a'", "NOT IS_DEFINED(tags.x) OR tags.x = 'a'"),
        (None, [], "NOT tags.x >= 3", "NOT IS_DEFINED(tags.x) OR tags.x < 3"),
        (None, [], "NOT deviceId = 'd'", "deviceId != 'd'"),
        (None, [], "NOT NOT tags.x = 1", "tags.x = 1"),
        (
            None,
            [],
            "NOT (tags.a = 1 AND tags.b < 2)",
            "NOT IS_DEFINED(tags.a) OR tags.a != 1 OR NOT IS_DEFINED(tags.b) OR tags.b >= 2",
        ),
        (
            None,
            [],
            "tags.a = 1 AND NOT (tags.b = 'x' OR deviceId = 'd')",
            "tags.a = 1 AND (NOT IS_DEFINED(tags.b) OR tags.b != 'x') AND deviceId != 'd'",
        ),
        (None, [], "(tags.a = 1 OR tags.b = 2) AND tags.c > 3", "(tags.a = 1 OR tags.b = 2) AND tags.c > 3"),
        (None, [], "tags.a = 1 OR (tags.b = 2 AND tags.c = 3)", "tags.a = 1 OR (tags.b = 2 AND tags.c = 3)"),
        (None, [], "tags.ring IN [1, 2]", "tags.ring IN [1, 2]"),
        (None, [], "tags.ring NOT IN [1, 2]", "tags.ring != 1 AND tags.ring != 2"),
        (
            None,
            [],
            "NOT tags.ring IN [1, 2]",
            "NOT IS_DEFINED(tags.ring) OR (tags.ring != 1 AND tags.ring != 2)",
        ),
        (None, [], "NOT tags.ring NOT IN [1]", "NOT IS_DEFINED(tags.ring) OR tags.ring IN [1]"),
        (None, [], "deviceId NOT IN ['a', 'b']", "deviceId != 'a' AND deviceId != 'b'"),
        (None, [], "tags.name = 'it''s a \\ path'", "tags.name = 'it\\'s a \\\\ path'"),
        (None, [], "tags['site-name'] = 'b'", "tags.[[site-name]] = 'b'"),
        (None, [], "tags.in = 1 AND tags['0'] = 2", "tags.[[in]] = 1 AND tags.[[0]] = 2"),
        (None, [], "properties.reported.os.arch = 'arm64'", "properties.reported.os.arch = 'arm64'"),
        (None, [], "properties.reported.temp > 2.5", "properties.reported.temp > 2.5"),
        (
            None,
            [],
            "tags.big = 1e16 OR tags.small = -1E-7",
            "tags.big = 10000000000000000.0 OR tags.small = -0.0000001",
        ),
        (None, [], "tags.on = TRUE AND tags.off != false", "tags.on = true AND tags.off != false"),
        (None, ["it's"], None, "deviceId IN ['it\\'s']"),
    ],
)
def test_target_conditions(
    tags: dict[str, str] | None, device_ids: list[str], condition: str | None, expected: str
) -> None:
    assert hub_target_condition(tags, device_ids, condition) == expected


@pytest.mark.parametrize(
    ("device_ids", "condition", "expected"),
    [
        ([], "*", "capabilities.iotEdge = true"),
        ([], "tags.a = 1 OR tags.b = 2", "capabilities.iotEdge = true AND (tags.a = 1 OR tags.b = 2)"),
        (["gw"], None, "capabilities.iotEdge = true AND deviceId IN ['gw']"),
    ],
)
def test_edge_only_targets(device_ids: list[str], condition: str | None, expected: str) -> None:
    assert hub_target_condition(None, device_ids, condition, edge_only=True) == expected


@pytest.mark.parametrize(
    ("tags", "device_ids", "condition", "message"),
    [
        (None, [], None, "device IDs or a condition"),
        (None, ["bad id"], None, "device ID"),
        (None, ["x" * 129], None, "device ID"),
        (None, [], "tags['site name'] = 1", "twin property name"),
        (None, [], "tags['a.b'] = 1", "twin property name"),
        (None, [], "properties.reported.$version > 3", "twin property name"),
        (None, [], "tags['x]'] = 1", "twin property name"),
        ({"env": 1}, [], "*", "text"),
        ({"a..b": "x"}, [], "*", "twin property name"),
        (None, [f"device-{i:05d}-{'x' * 90}" for i in range(100)], None, "8192"),
    ],
)
def test_target_refusals(
    tags: dict[str, Any] | None, device_ids: list[str], condition: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        hub_target_condition(tags, device_ids, condition)


# A small reader of the hub text the rules write, with the hub's semantics: a comparison with a
# missing property, or with a value of another kind, is undefined and so never true.
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:\\.|[^'\\])*')|(?P<number>-?[0-9]+(?:\.[0-9]+)?)"
    r"|(?P<path>(?:deviceId|tags|properties\.reported)(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\[\[.*?\]\]))*)"
    r"|(?P<word>[A-Za-z_]+)|(?P<op><=|>=|!=|=|<|>)|(?P<punct>[()\[\],]))"
)
_MISSING = object()


def _hub_eval(text: str, device: DeviceFacts) -> bool:
    tokens = [
        (kind, value) for match in _TOKEN.finditer(text) for kind, value in match.groupdict().items() if value
    ]
    assert "".join(value for _, value in tokens).replace(" ", "") == text.replace(" ", "")
    position = 0

    def take() -> tuple[str, str]:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def peek() -> str:
        return tokens[position][1] if position < len(tokens) else ""

    def lookup(path: str) -> object:
        if path == "deviceId":
            return device.device_id
        root, rest = (device.tags, path[4:]) if path.startswith("tags") else (device.reported, path[19:])
        value: object = root
        for key in re.findall(r"\.(?:\[\[(.*?)\]\]|([A-Za-z_][A-Za-z0-9_]*))", rest):
            name = key[0] or key[1]
            value = value[name] if isinstance(value, dict) and name in value else _MISSING
        return value

    def literal() -> object:
        kind, value = take()
        if kind == "string":
            return json.loads('"' + value[1:-1].replace("\\'", "'") + '"')
        if kind == "number":
            return float(value) if "." in value else int(value)
        return value == "true"

    def same_kind(left: object, right: object) -> bool:
        return isinstance(left, bool) == isinstance(right, bool) and isinstance(left, str) == isinstance(
            right, str
        )

    def primary() -> bool:
        if peek() == "(":
            take()
            result = disjunction()
            assert take()[1] == ")"
            return result
        if peek() == "NOT":
            take()
            assert take()[1] == "IS_DEFINED" and take()[1] == "("
            missing = lookup(take()[1]) is _MISSING
            assert take()[1] == ")"
            return missing
        actual = lookup(take()[1])
        operator = take()[1]
        if operator == "IN":
            assert take()[1] == "["
            values = [literal()]
            while take()[1] == ",":
                values.append(literal())
            return actual is not _MISSING and any(same_kind(actual, v) and actual == v for v in values)
        expected = literal()
        if actual is _MISSING or not same_kind(actual, expected):
            return False
        left: Any = actual
        return {
            "=": left == expected,
            "!=": left != expected,
            "<": left < expected,
            ">": left > expected,
            "<=": left <= expected,
            ">=": left >= expected,
        }[operator]

    def conjunction() -> bool:
        results = [primary()]
        while peek() == "AND":
            take()
            results.append(primary())
        return all(results)

    def disjunction() -> bool:
        results = [conjunction()]
        while peek() == "OR":
            take()
            results.append(conjunction())
        return any(results)

    result = disjunction()
    assert position == len(tokens)
    return result


_DEVICES = [
    DeviceFacts(device_id, {k: v for k, v in (("x", x), ("y", y)) if v is not None}, {"os": {"arch": arch}})
    for device_id, x, y, arch in itertools.product(
        ["d", "e"], [None, 1, 2], [None, "a", "b"], ["arm64", "x86"]
    )
]


@pytest.mark.parametrize(
    "condition",
    [
        "tags.x = 1",
        "tags.x != 1",
        "NOT tags.x = 1",
        "NOT tags.x != 1",
        "NOT tags.x < 2",
        "NOT tags.x >= 2 AND tags.y = 'a'",
        "tags.x IN [1, 2]",
        "tags.x NOT IN [1]",
        "NOT tags.x IN [1]",
        "NOT tags.x NOT IN [1]",
        "NOT (tags.x = 1 OR tags.y = 'a')",
        "NOT (tags.x = 1 AND NOT (tags.y != 'b' OR deviceId = 'd'))",
        "deviceId NOT IN ['d'] OR NOT deviceId = 'e'",
        "(tags.x > 1 OR tags.y <= 'a') AND NOT properties.reported.os.arch = 'arm64'",
        "NOT NOT (tags.y IN ['b'] AND tags.x != 2)",
    ],
)
def test_target_conditions_select_the_same_devices(condition: str) -> None:
    text = hub_target_condition(None, [], condition)
    tree = parse_condition(condition)
    assert [_hub_eval(text, device) for device in _DEVICES] == [evaluate(tree, device) for device in _DEVICES]


def test_the_one_documented_difference() -> None:
    # A value of another kind than the literal: fleetlift says "not equal", the hub says nothing.
    device = DeviceFacts("d", {"x": "1"}, {})
    text = hub_target_condition(None, [], "tags.x != 1")
    assert evaluate(parse_condition("tags.x != 1"), device) and not _hub_eval(text, device)


def test_target_syntax_errors_keep_their_position() -> None:
    with pytest.raises(ConditionSyntaxError) as caught:
        hub_target_condition(None, [], "tags.env = ")
    assert caught.value.position == 11


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("plain", "'plain'"),
        ("it's", "'it\\'s'"),
        ("a\\b", "'a\\\\b'"),
        ('say "hi"', "'say \"hi\"'"),
        ("tab\there", "'tab\\u0009here'"),
        ("ümlaut", "'ümlaut'"),
    ],
)
def test_hub_strings(text: str, literal: str) -> None:
    assert hub_string(text) == literal


# --- state of a device --------------------------------------------------------------------------


def agent_twin(
    *,
    status: str | None = "Applied",
    desired_version: int | None = 5,
    last: int | None = 5,
    code: object = 200,
    description: str | None = None,
    modules: dict[str, str] | None = None,
) -> dict[str, Any]:
    reported: dict[str, Any] = {}
    if last is not None:
        reported["lastDesiredVersion"] = last
    if code is not None:
        reported["lastDesiredStatus"] = {
            "code": code,
            **({"description": description} if description else {}),
        }
    if modules is not None:
        reported["modules"] = {name: {"runtimeStatus": state} for name, state in modules.items()}
    desired: dict[str, Any] = {} if desired_version is None else {"$version": desired_version}
    twin: dict[str, Any] = {
        "deviceId": "gw-1",
        "moduleId": "$edgeAgent",
        "properties": {"desired": desired, "reported": reported},
    }
    if status is not None:
        twin["configurations"] = {"fleetlift-dep_1-r1": {"status": status}}
    return twin


CONFIG = "fleetlift-dep_1-r1"


@pytest.mark.parametrize(
    ("twin", "kwargs", "state"),
    [
        (agent_twin(status=None), {}, S.PENDING),
        (agent_twin(status="Targeted"), {}, S.PENDING),
        (agent_twin(desired_version=None), {}, S.PENDING),
        (agent_twin(last=4), {}, S.NOTIFIED),
        (agent_twin(last=None, code=None), {}, S.NOTIFIED),
        (agent_twin(last=5), {"applied_version": 7}, S.NOTIFIED),
        (agent_twin(), {}, S.SUCCEEDED),
        (agent_twin(status="applied"), {}, S.SUCCEEDED),
        (agent_twin(desired_version=None, last=7), {"applied_version": 7}, S.SUCCEEDED),
        (agent_twin(modules={"telemetry": "running"}), {"modules": ["telemetry"]}, S.SUCCEEDED),
        (agent_twin(modules={"telemetry": "backoff"}), {"modules": ["telemetry"]}, S.VERIFYING),
        (agent_twin(modules={}), {"modules": ["telemetry"]}, S.VERIFYING),
        (agent_twin(code=400), {}, S.FAILED),
        (agent_twin(code=412), {}, S.FAILED),
        (agent_twin(code=500, description="Error pulling image: unauthorized"), {}, S.FAILED),
        (
            agent_twin(code=500, description="Error calling Create module: The operation was canceled."),
            {},
            S.DOWNLOADING,
        ),
        (agent_twin(code=406, description="Agent is not running"), {}, S.INSTALLING),
        (agent_twin(code=417), {}, S.INSTALLING),
        (agent_twin(code=999), {}, S.INSTALLING),
        (agent_twin(code=None), {}, S.INSTALLING),
        (agent_twin(code=True), {}, S.INSTALLING),
        (agent_twin(code="200"), {}, S.INSTALLING),
    ],
)
def test_edge_device_state(twin: dict[str, Any], kwargs: dict[str, Any], state: S) -> None:
    assert edge_device_state(twin, configuration_id=CONFIG, **kwargs) == state


@pytest.mark.parametrize(
    ("twin", "state"),
    [
        (agent_twin(status=None), S.SUCCEEDED),
        (agent_twin(status=None, last=4), S.NOTIFIED),
        (agent_twin(status=None, code=500), S.FAILED),
        ({}, S.PENDING),
        ({"properties": "garbage"}, S.PENDING),
    ],
)
def test_single_device_state(twin: dict[str, Any], state: S) -> None:
    assert edge_device_state(twin, configuration_id=None) == state


@pytest.mark.parametrize(
    ("twin", "detail"),
    [
        (agent_twin(), None),
        (agent_twin(code=None), None),
        (agent_twin(code=500, description="  pull failed  "), "IoT Edge agent: 500 pull failed"),
        (agent_twin(code=417), "IoT Edge agent: 417"),
        (agent_twin(code=400, description="x" * 2000), "IoT Edge agent: 400 " + "x" * 977 + "..."),
    ],
)
def test_edge_status_detail(twin: dict[str, Any], detail: str | None) -> None:
    assert edge_status_detail(twin) == detail


@pytest.mark.parametrize(
    ("system", "custom", "expected"),
    [
        (
            {"targetedCount": 10, "appliedCount": 8, "reportedSuccessfulCount": 5, "reportedFailedCount": 1},
            None,
            {"targeted": 10, "applied": 8, "succeeded": 5, "failed": 1, "in_progress": 2, "not_applied": 2},
        ),
        (
            {"targetedCount": 3, "appliedCount": 3},
            {"reportedSuccessfulCount": 2, "reportedFailedCount": 0},
            {"targeted": 3, "applied": 3, "succeeded": 2, "failed": 0, "in_progress": 1, "not_applied": 0},
        ),
        (
            {},
            None,
            {"targeted": 0, "applied": 0, "succeeded": 0, "failed": 0, "in_progress": 0, "not_applied": 0},
        ),
        (
            {
                "targetedCount": "7",
                "appliedCount": -2,
                "reportedSuccessfulCount": True,
                "reportedFailedCount": 4,
            },
            None,
            {"targeted": 0, "applied": 0, "succeeded": 0, "failed": 4, "in_progress": 0, "not_applied": 0},
        ),
    ],
)
def test_counts_from_metrics(
    system: dict[str, Any], custom: dict[str, Any] | None, expected: dict[str, int]
) -> None:
    assert counts_from_metrics(system, custom) == expected


# --- update triggers ----------------------------------------------------------------------------


def test_update_method_and_desired_fallback() -> None:
    assert UPDATE_METHOD == "fleetlift.update"
    payload = method_payload("dep_1", release_id="rel_1")
    assert payload == {"version": 1, "action": "check", "deployment_id": "dep_1", "release_id": "rel_1"}
    assert method_payload("dep_1") == {"version": 1, "action": "check", "deployment_id": "dep_1"}
    assert desired_update_patch(payload, sequence=3) == {
        "properties": {"desired": {"fleetlift": {"update": {**payload, "sequence": 3}}}}
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda: method_payload(""),
        lambda: desired_update_patch({"deployment_id": "d"}, sequence=-1),
        lambda: desired_update_patch({"deployment_id": "d"}, sequence=True),
        lambda: desired_update_patch({"bad.key": "d"}, sequence=1),
    ],
)
def test_trigger_refusals(call: Any) -> None:
    with pytest.raises(InvalidInput):
        call()
