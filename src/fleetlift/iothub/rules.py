"""Pure rules for Azure IoT Hub and IoT Edge: deployment manifests, configuration IDs, target
conditions in the hub's query language, per-device state from ``$edgeAgent`` twins, metrics, and
the direct method that tells a fleetlift agent to check for work. No I/O, no clock, no SDK.

What Azure documents and these rules rely on:

- The manifest (``content.modulesContent``): ``$edgeAgent`` and ``$edgeHub`` each carry
  ``properties.desired``; ``schemaVersion`` "1.1" (recommended, needed for ``startupOrder``),
  ``runtime`` (type docker, ``minDockerVersion``, ``loggingOptions``, ``registryCredentials``),
  ``systemModules`` (edgeHub must be status running, restartPolicy always), ``modules.{id}``
  (``version``, ``type``, ``status`` running|stopped, ``restartPolicy``
  always|on-failure|on-unhealthy|never, ``startupOrder`` 0..4294967295, ``settings.image``,
  ``settings.createOptions`` as stringified JSON, ``env`` as ``{NAME: {"value": ...}}``);
  ``$edgeHub`` ``routes`` and ``storeAndForwardConfiguration.timeToLiveSecs``.
  Source: learn.microsoft.com/azure/iot-edge/module-edgeagent-edgehub, .../module-composition,
  Azure/iotedge doc/ModuleStartupOrder.md.
- ``createOptions`` longer than 512 characters is split into ``createOptions``,
  ``createOptions01`` .. ``createOptions07``: contiguous, at most eight chunks (4 KB).
  Source: the Azure/iotedge design note "Extending createOptions Length".
- The edge agent accepts ``repository@sha256:...`` but not ``repository:tag@sha256:...`` (its
  image check allows one ``:`` in the last path segment), so the tag is dropped when pinning.
- Layered deployments set only paths such as ``properties.desired.modules.<id>``,
  ``properties.desired.runtime.settings.registryCredentials.<id>`` and
  ``properties.desired.routes.<name>``; the runtime modules come from a base deployment.
  Source: learn.microsoft.com/azure/iot-edge/module-deployment-monitoring (layered deployment)
  and the ``az iot edge deployment create --layered`` reference.
- Twin keys exclude ``.``, ``$``, space and control characters; arrays are not allowed; desired
  properties are at most 32 KB (keys and string values count their UTF-8 bytes, numbers 8,
  booleans 4). Source: learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins.
- Module IDs: at most 128 ASCII characters; edge modules also become Docker containers, whose
  names match ``[a-zA-Z0-9][a-zA-Z0-9_.-]+`` (two characters at least). Twin keys rule out ``.``.
- Deployment (configuration) IDs: at most 128 lowercase letters, digits and ``-:+%_#*?!(),=@;'``.
  Source: the Azure IoT Edge deployment task reference; the IoT Edge portal guide lists the
  characters it refuses (``& ^ [ ] { } \\ | " < > /`` and spaces).
- Query language: ``AND``/``OR``/``NOT``, ``=``, ``!=``, ``<``..., ``IN [...]``,
  ``IS_DEFINED(property)`` (the one function twin queries support), string literals in single
  quotes with backslash escapes, property names that are not identifiers in ``[[...]]``,
  queries at most 8192 characters. Source: .../iot-hub/iot-hub-devguide-query-language.
- ``$edgeAgent`` reports ``lastDesiredVersion`` and ``lastDesiredStatus.code``: 200 success, 400
  invalid configuration, 406 agent not connected (transitional), 412 invalid schema version,
  417 empty configuration (transitional once a deployment is applied), 500 failed (an image pull
  that timed out says "The operation was canceled" and is transitional). A deployment counts as
  reported once ``configurations.[[id]].status`` is "Applied" and the agent processed the
  current desired ``$version``. Source: Azure/iotedge doc/reported_states_during_deployment.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias

from fleetlift.deployments.rules import DeviceUpdateState
from fleetlift.errors import FieldError, InvalidInput
from fleetlift.images.rules import parse_image_reference
from fleetlift.targeting.rules import (
    All,
    And,
    Compare,
    Condition,
    In,
    Not,
    Op,
    Or,
    Path,
    Root,
    Value,
    operands,
    parse_condition,
)

RestartPolicy = Literal["always", "on-failure", "on-unhealthy", "never"]
ModuleStatus = Literal["running", "stopped"]

EDGE_AGENT: Final = "$edgeAgent"
EDGE_HUB: Final = "$edgeHub"
SCHEMA_VERSION: Final = "1.1"
CREATE_OPTIONS_CHUNK: Final = 512
CREATE_OPTIONS_MAX_CHUNKS: Final = 8
MAX_DESIRED_BYTES: Final = 32 * 1024
MAX_STARTUP_ORDER: Final = 4294967295
MAX_QUERY_LENGTH: Final = 8192
MAX_CONFIGURATION_ID: Final = 128
MAX_PRIORITY: Final = 2**31 - 1
UPDATE_METHOD: Final = "fleetlift.update"
CONFIGURATION_PREFIX: Final = "fleetlift-"

_RESTART_POLICIES: Final = frozenset({"always", "on-failure", "on-unhealthy", "never"})
_STATUSES: Final = frozenset({"running", "stopped"})
# The runtime's own containers; a custom module of that name would fight them for the name.
_SYSTEM_MODULES: Final = frozenset({"edgeagent", "edgehub"})
_MODULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,127}")
_TWIN_KEY_FORBIDDEN = re.compile(r"[.$ \x00-\x1f\x7f-\x9f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONFIGURATION_ID = re.compile(r"[a-z0-9\-:+%_#*?!(),=@;']{1,128}")
_HUB_DEVICE_ID = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}")
_DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OWN_CONFIGURATION = re.compile(r"fleetlift-([a-z0-9_!-]+)-r(0|[1-9][0-9]{0,8})")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUERY_KEYWORDS: Final = frozenset(
    {"and", "or", "not", "in", "nin", "true", "false", "null", "undefined", "select", "from", "where"}
    | {"group", "by", "as", "top"}
)
_PULL_TIMED_OUT = "the operation was canceled"
_HUB_PORTS: Final = ("443/tcp", "5671/tcp", "8883/tcp")


def _invalid(message: str, location: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(location, message)])


def _check_twin_key(key: object, location: str) -> str:
    if not isinstance(key, str) or not key or _TWIN_KEY_FORBIDDEN.search(key) or len(key.encode()) > 1024:
        raise _invalid(
            f"{key!r} cannot be a twin property name: it needs 1 to 1024 bytes without '.', '$', "
            "spaces or control characters",
            location,
        )
    return key


# --- modules and manifests ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryLogin:
    """Credentials the edge agent uses to pull from a private registry; the password stays out of reprs."""

    address: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.address or any(c.isspace() for c in self.address) or "/" in self.address:
            raise _invalid("a registry address is a host[:port] such as myacr.azurecr.io", "registries")
        if not self.username:
            raise _invalid(f"the login for {self.address} has no user name", "registries")


@dataclass(frozen=True)
class EdgeRuntime:
    """Settings of the IoT Edge runtime that a full (non-layered) deployment carries."""

    agent_image: str = "mcr.microsoft.com/azureiotedge-agent:1.5"
    hub_image: str = "mcr.microsoft.com/azureiotedge-hub:1.5"
    min_docker_version: str = "v1.25"
    logging_options: str = ""
    # The port bindings Azure gives every edgeHub, so downstream devices and modules reach it.
    hub_create_options: Mapping[str, Any] = field(
        default_factory=lambda: {
            "HostConfig": {"PortBindings": {port: [{"HostPort": port.split("/")[0]}] for port in _HUB_PORTS}}
        }
    )
    # edgeHub first, so modules need not retry their first connection.
    hub_startup_order: int | None = 0
    store_and_forward_ttl_secs: int = 7200

    def __post_init__(self) -> None:
        if not self.agent_image or not self.hub_image:
            raise _invalid("the runtime needs the edgeAgent and edgeHub images", "runtime")
        _check_startup_order(self.hub_startup_order, "runtime.hub_startup_order")
        ttl = self.store_and_forward_ttl_secs
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise _invalid("timeToLiveSecs must be a positive number of seconds", "runtime")


@dataclass(frozen=True)
class EdgeModule:
    """One container of an IoT Edge deployment, as the ``$edgeAgent`` twin describes it."""

    name: str
    image_digest_ref: str
    create_options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    restart_policy: RestartPolicy = "always"
    startup_order: int | None = None
    status: ModuleStatus = "running"
    version: str = "1.0"

    def __post_init__(self) -> None:
        check_module_name(self.name)
        where = f"modules.{self.name}"
        check_digest_reference(self.image_digest_ref, where=f"{where}.image")
        if not isinstance(self.create_options, Mapping):
            raise _invalid("createOptions must be a JSON object", f"{where}.create_options")
        create_options_settings(self.create_options, where=f"{where}.create_options")
        if not isinstance(self.env, Mapping):
            raise _invalid("env must map names to values", f"{where}.env")
        for key, value in self.env.items():
            _check_twin_key(key, f"{where}.env")
            if not isinstance(value, str):
                raise _invalid(f"the value of {key} must be text", f"{where}.env.{key}")
        if self.restart_policy not in _RESTART_POLICIES:
            raise _invalid(f"restart policy must be one of {sorted(_RESTART_POLICIES)}", where)
        if self.status not in _STATUSES:
            raise _invalid("a module's status is running or stopped", where)
        _check_startup_order(self.startup_order, f"{where}.startup_order")
        if not isinstance(self.version, str) or not self.version:
            raise _invalid("a module needs a version", f"{where}.version")


def _check_startup_order(value: object, location: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STARTUP_ORDER:
        raise _invalid(f"startupOrder is an integer from 0 to {MAX_STARTUP_ORDER}", location)


def check_module_name(name: object) -> str:
    """A custom IoT Edge module name: 2-128 of ``A-Za-z0-9_-`` starting alphanumeric, not a system module."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
        raise _invalid(
            f"{name!r} cannot name an IoT Edge module: use 2 to 128 letters, digits, '_' or '-', "
            "starting with a letter or digit (no '.' or '$')",
            "modules",
        )
    if name.lower() in _SYSTEM_MODULES:
        raise _invalid(f"{name!r} is the name of an IoT Edge runtime module", "modules")
    return name


def check_digest_reference(image: str, *, where: str = "image") -> str:
    """An image named only by digest (``registry/repo@sha256:...``), as the edge agent accepts it."""
    ref = parse_image_reference(image)
    if ref.digest is None:
        raise _invalid(
            f"{image[:200]!r} is named by tag only; edge deployments pin images by digest "
            "(validate the release so its images are pinned)",
            where,
        )
    if ref.tag is not None:
        raise _invalid(
            f"{image[:200]!r} has both a tag and a digest; IoT Edge accepts only the digest", where
        )
    return image


def module_from_payload(payload: Mapping[str, Any], *, version: str = "1.0") -> EdgeModule:
    """The edge module for a release's container payload (image pinned by digest, ports in createOptions)."""
    if payload.get("type", "container") != "container":
        raise _invalid("only container payloads can run as IoT Edge modules", "payloads")
    name: Any = payload.get("name")
    image = payload.get("image")
    if not isinstance(image, str):
        raise _invalid("a container payload needs an image", "payloads.image")
    ref = parse_image_reference(image)
    if ref.digest is None:
        raise _invalid(
            f"{image[:200]!r} is not pinned to a digest; validate the release before deploying it",
            "payloads.image",
        )
    options = _with_ports(payload.get("create_options") or {}, payload.get("ports") or [])
    env = payload.get("env") or {}
    if not isinstance(env, Mapping):
        raise _invalid("env must map names to values", "payloads.env")
    return EdgeModule(
        name=name,
        image_digest_ref=f"{ref.registry}/{ref.repository}@{ref.digest}",
        create_options=options,
        env={str(key): value for key, value in env.items()},
        restart_policy=payload.get("restart_policy", "always"),
        startup_order=payload.get("startup_order"),
        version=version,
    )


def _with_ports(create_options: object, ports: object) -> dict[str, Any]:
    # The payload's ports are a convenience over Docker's own fields; merge rather than replace
    # whatever the operator already wrote there.
    if not isinstance(create_options, Mapping):
        raise _invalid("createOptions must be a JSON object", "payloads.create_options")
    if not isinstance(ports, list):
        raise _invalid("ports must be a list", "payloads.ports")
    options: dict[str, Any] = dict(create_options)
    if not ports:
        return options
    exposed = dict(options.get("ExposedPorts") or {})
    host_config = dict(options.get("HostConfig") or {})
    bindings = dict(host_config.get("PortBindings") or {})
    for port in ports:
        if not isinstance(port, Mapping) or not isinstance(port.get("container_port"), int):
            raise _invalid("a port needs a container_port", "payloads.ports")
        key = f"{port['container_port']}/{port.get('protocol') or 'tcp'}"
        exposed[key] = {}
        if port.get("host_port") is not None:
            bindings[key] = [{"HostPort": str(port["host_port"])}]
    options["ExposedPorts"] = exposed
    if bindings:
        host_config["PortBindings"] = bindings
        options["HostConfig"] = host_config
    return options


def create_options_settings(options: Mapping[str, Any], *, where: str = "create_options") -> dict[str, str]:
    """``createOptions`` as the edge agent reads it: compact JSON text, split into 512-character chunks."""
    try:
        # ASCII-only text makes characters and bytes the same, so a chunk never exceeds 512 bytes.
        text = json.dumps(options, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise _invalid(f"createOptions must be plain JSON: {error}", where) from None
    chunks = [
        text[start : start + CREATE_OPTIONS_CHUNK] for start in range(0, len(text), CREATE_OPTIONS_CHUNK)
    ]
    if len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
        raise _invalid(
            f"createOptions is {len(text)} characters as JSON; IoT Edge takes at most "
            f"{CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_CHUNKS}",
            where,
        )
    settings = {"createOptions": chunks[0]}
    for number, chunk in enumerate(chunks[1:], start=1):
        settings[f"createOptions{number:02d}"] = chunk
    return settings


def joined_create_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The createOptions object back from (possibly chunked) module settings."""
    text = str(settings.get("createOptions") or "")
    number = 1
    while (chunk := settings.get(f"createOptions{number:02d}")) is not None:
        text += str(chunk)
        number += 1
    parsed = json.loads(text) if text else {}
    if not isinstance(parsed, dict):
        raise ValueError("createOptions is not a JSON object")
    return parsed


def default_routes(modules: Sequence[EdgeModule]) -> dict[str, str]:
    """One route per module sending every output to IoT Hub (``$upstream``)."""
    return {
        f"{module.name}ToUpstream": f"FROM /messages/modules/{module.name}/outputs/* INTO $upstream"
        for module in modules
    }


def _module_document(module: EdgeModule) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": module.version,
        "type": "docker",
        "status": module.status,
        "restartPolicy": module.restart_policy,
        "settings": {"image": module.image_digest_ref, **create_options_settings(module.create_options)},
    }
    if module.startup_order is not None:
        document["startupOrder"] = module.startup_order
    if module.env:
        document["env"] = {name: {"value": value} for name, value in module.env.items()}
    return document


def _registry_document(login: RegistryLogin) -> dict[str, str]:
    return {"username": login.username, "password": login.password, "address": login.address}


def edge_manifest(
    modules: Sequence[EdgeModule],
    *,
    registries: Mapping[str, RegistryLogin],
    runtime: EdgeRuntime = EdgeRuntime(),
    routes: Mapping[str, str] | None = None,
    layered: bool = False,
) -> dict[str, Any]:
    """The ``content.modulesContent`` of an IoT Edge deployment (full, or layered on a base one)."""
    seen: set[str] = set()
    for module in modules:
        if module.name in seen:
            raise _invalid(f"two modules are named {module.name!r}", "modules")
        seen.add(module.name)
    for name in registries:
        _check_twin_key(name, "registries")
    route_map = default_routes(modules) if routes is None else dict(routes)
    for name, route in route_map.items():
        _check_twin_key(name, "routes")
        if not isinstance(route, str) or not route.strip():
            raise _invalid(f"route {name!r} is empty", "routes")
    module_documents = {module.name: _module_document(module) for module in modules}
    credentials = {name: _registry_document(login) for name, login in registries.items()}

    if layered:
        if not modules:
            raise _invalid("a layered deployment needs at least one module", "modules")
        # Paths, not documents: a layer must not replace what the base deployment set.
        agent: dict[str, Any] = {
            f"properties.desired.modules.{name}": document for name, document in module_documents.items()
        }
        agent |= {
            f"properties.desired.runtime.settings.registryCredentials.{name}": document
            for name, document in credentials.items()
        }
        _check_size(agent, EDGE_AGENT)
        content: dict[str, Any] = {EDGE_AGENT: agent}
        if route_map:
            content[EDGE_HUB] = {
                f"properties.desired.routes.{name}": route for name, route in route_map.items()
            }
        return content

    hub_module: dict[str, Any] = {
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "settings": {"image": runtime.hub_image, **create_options_settings(runtime.hub_create_options)},
    }
    if runtime.hub_startup_order is not None:
        hub_module["startupOrder"] = runtime.hub_startup_order
    agent_desired: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "runtime": {
            "type": "docker",
            "settings": {
                "minDockerVersion": runtime.min_docker_version,
                "loggingOptions": runtime.logging_options,
                "registryCredentials": credentials,
            },
        },
        "systemModules": {
            "edgeAgent": {
                "type": "docker",
                "settings": {"image": runtime.agent_image, "createOptions": "{}"},
            },
            "edgeHub": hub_module,
        },
        "modules": module_documents,
    }
    hub_desired: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "routes": route_map,
        "storeAndForwardConfiguration": {"timeToLiveSecs": runtime.store_and_forward_ttl_secs},
    }
    _check_size(agent_desired, EDGE_AGENT)
    _check_size(hub_desired, EDGE_HUB)
    return {EDGE_AGENT: {"properties.desired": agent_desired}, EDGE_HUB: {"properties.desired": hub_desired}}


def twin_size(value: object) -> int:
    """The size IoT Hub counts for a twin section: UTF-8 keys and strings, 8 per number, 4 per boolean."""
    if isinstance(value, Mapping):
        return sum(_text_size(str(key)) + twin_size(item) for key, item in value.items())
    if isinstance(value, bool):
        return 4
    if isinstance(value, int | float):
        return 8
    if isinstance(value, str):
        return _text_size(value)
    return 0


def _text_size(text: str) -> int:
    return len(_CONTROL.sub("", text).encode())


def _check_size(desired: Mapping[str, Any], module_id: str) -> None:
    size = twin_size(desired)
    if size > MAX_DESIRED_BYTES:
        raise _invalid(
            f"the {module_id} desired properties would be {size} bytes; IoT Hub allows {MAX_DESIRED_BYTES}",
            "modules",
        )


def configuration_document(
    configuration_id: str,
    modules_content: Mapping[str, Any],
    *,
    target_condition: str,
    priority: int,
    labels: Mapping[str, str] | None = None,
    metrics: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The body of ``PUT /configurations/{id}`` for an edge deployment."""
    check_configuration_id(configuration_id)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise _invalid(f"priority is an integer from 0 to {MAX_PRIORITY}", "priority")
    return {
        "id": configuration_id,
        "labels": {str(key): str(value) for key, value in (labels or {}).items()},
        "content": {"modulesContent": dict(modules_content)},
        "targetCondition": target_condition,
        "priority": priority,
        "metrics": {"queries": dict(metrics or {})},
    }


# --- configuration IDs --------------------------------------------------------------------------


def check_configuration_id(configuration_id: str) -> str:
    """A hub configuration ID: 1-128 lowercase letters, digits and ``-:+%_#*?!(),=@;'``."""
    if not _CONFIGURATION_ID.fullmatch(configuration_id):
        raise _invalid(
            f"{configuration_id[:200]!r} cannot be a deployment ID in IoT Hub: use up to 128 lowercase "
            "letters, digits and -:+%_#*?!(),=@;'",
            "id",
        )
    return configuration_id


def configuration_id(deployment_id: str, revision: int) -> str:
    """The hub configuration of one revision of a fleetlift deployment (content is immutable in the hub)."""
    return _make_configuration_id(deployment_id, revision)


def _make_configuration_id(deployment_id: str, revision: int) -> str:
    if not _DEPLOYMENT_ID.fullmatch(deployment_id):
        raise _invalid(f"{deployment_id[:200]!r} is not a fleetlift deployment ID", "deployment_id")
    if isinstance(revision, bool) or not isinstance(revision, int) or not 0 <= revision < 10**9:
        raise _invalid("a revision is an integer from 0 to 999999999", "revision")
    # Hub IDs are lowercase. fleetlift IDs are a lowercase prefix, '_' and an upper-case ULID, so
    # only letters of the other case get a '!' mark and the usual ID reads back unmarked.
    prefix, underscore, body = deployment_id.partition("_")
    encoded = _fold(prefix, upper=False) + underscore + _fold(body, upper=bool(underscore))
    result = f"{CONFIGURATION_PREFIX}{encoded}-r{revision}"
    if len(result) > MAX_CONFIGURATION_ID:
        raise _invalid("the deployment ID is too long for an IoT Hub configuration ID", "deployment_id")
    return check_configuration_id(result)


def _fold(text: str, *, upper: bool) -> str:
    marked = str.islower if upper else str.isupper
    return "".join(f"!{char.lower()}" if char.isalpha() and marked(char) else char.lower() for char in text)


def _unfold(text: str, *, upper: bool) -> str | None:
    chars: list[str] = []
    marked = False
    for char in text:
        if char == "!":
            if marked:
                return None
            marked = True
            continue
        if marked and not char.isalpha():
            return None
        chars.append(char.upper() if upper != marked else char)
        marked = False
    return None if marked else "".join(chars)


def parse_configuration_id(configuration_id: str) -> tuple[str, int] | None:
    """``(deployment_id, revision)`` for a configuration fleetlift made; None for any other."""
    match = _OWN_CONFIGURATION.fullmatch(configuration_id)
    if match is None:
        return None
    prefix, underscore, body = match.group(1).partition("_")
    left = _unfold(prefix, upper=False)
    right = _unfold(body, upper=bool(underscore))
    if left is None or right is None:
        return None
    deployment_id = left + underscore + right
    revision = int(match.group(2))
    try:
        # Only the canonical spelling is ours: one ID per (deployment, revision), both ways.
        if _make_configuration_id(deployment_id, revision) != configuration_id:
            return None
    except InvalidInput:
        return None
    return deployment_id, revision


# --- target conditions --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Junction:
    kind: str  # "AND" or "OR"
    parts: tuple[_Node, ...]


_Node: TypeAlias = "str | _Junction"


def _junction(kind: str, parts: Sequence[_Node]) -> _Node:
    flat: list[_Node] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, _Junction) and part.kind == kind else [part])
    return flat[0] if len(flat) == 1 else _Junction(kind, tuple(flat))


def _render_node(node: _Node, nested: bool = False) -> str:
    if isinstance(node, str):
        return node
    text = f" {node.kind} ".join(_render_node(part, nested=True) for part in node.parts)
    # _junction merges equal connectives, so a nested junction is always the other one.
    return f"({text})" if nested else text


def _hub_key(key: str) -> str:
    if not key or _TWIN_KEY_FORBIDDEN.search(key) or "[" in key or "]" in key:
        raise _invalid(
            f"{key!r} cannot be a twin property name in IoT Hub (no '.', '$', spaces, brackets "
            "or control characters), so the hub cannot evaluate this condition",
            "target.condition",
        )
    if _IDENTIFIER.fullmatch(key) and key.lower() not in _QUERY_KEYWORDS:
        return f".{key}"
    return f".[[{key}]]"


def _hub_path(path: Path) -> str:
    if path.root is Root.DEVICE_ID:
        return "deviceId"
    return path.root.value + "".join(_hub_key(key) for key in path.keys)


def hub_string(text: str) -> str:
    """``text`` as a query-language string literal (backslash escapes, not doubled quotes)."""
    out: list[str] = []
    for char in text:
        if char in "\\'":
            out.append("\\" + char)
        elif ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


def _hub_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return hub_string(value)
    if isinstance(value, int):
        return str(value)
    # The grammar names decimal notation only, so no exponents: 1e16 becomes 10000000000000000.0.
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


_OPPOSITE: Final = {Op.EQ: Op.NE, Op.NE: Op.EQ, Op.LT: Op.GE, Op.GE: Op.LT, Op.GT: Op.LE, Op.LE: Op.GT}


def _maybe_missing(path: Path, rendered: str, node: _Node) -> _Node:
    # fleetlift's NOT is two-valued (a missing property makes `NOT tags.x = 1` true); the hub's
    # comparisons with a missing property are undefined, so say "missing" explicitly.
    if path.root is Root.DEVICE_ID:
        return node
    return _junction("OR", [f"NOT IS_DEFINED({rendered})", node])


def _translate(condition: Condition, negate: bool) -> _Node:
    if isinstance(condition, Not):
        return _translate(condition.operand, not negate)
    if isinstance(condition, And | Or):
        conjunction = isinstance(condition, And) != negate  # De Morgan under a NOT
        return _junction("AND" if conjunction else "OR", [_translate(c, negate) for c in operands(condition)])
    if isinstance(condition, Compare):
        path = _hub_path(condition.path)
        op = _OPPOSITE[condition.op] if negate else condition.op
        atom = f"{path} {op.value} {_hub_value(condition.value)}"
        return _maybe_missing(condition.path, path, atom) if negate else atom
    if isinstance(condition, In):
        path = _hub_path(condition.path)
        values = [_hub_value(value) for value in condition.values]
        node: _Node
        if condition.negated != negate:
            # "Exists and is none of these"; spelled out because NIN is not in the documented grammar.
            node = _junction("AND", [f"{path} != {value}" for value in values])
        else:
            node = f"{path} IN [{', '.join(values)}]"
        return _maybe_missing(condition.path, path, node) if negate else node
    raise _invalid("'*' can only be a whole condition", "target.condition")


def hub_target_condition(
    tags: Mapping[str, str] | None,
    device_ids: Sequence[str],
    condition: str | None,
    *,
    edge_only: bool = False,
) -> str:
    """fleetlift's target (explicit IDs or a condition, restricted to ``tags``) as a hub target condition.

    ``tags`` are required equalities (a key may be a dotted path: ``fleetlift.tenant``);
    ``edge_only`` adds ``capabilities.iotEdge = true``. Differences the hub cannot express are
    refused with ``InvalidInput``; one stays: where a property holds a value of another kind than
    the literal (a number compared with text), fleetlift's ``!=`` holds and the hub's does not.
    """
    scope: list[_Node] = ["capabilities.iotEdge = true"] if edge_only else []
    for key, value in sorted((tags or {}).items()):
        if not isinstance(value, str):
            raise _invalid(f"the value of tag {key!r} must be text", "tags")
        scope.append(f"tags{''.join(_hub_key(part) for part in key.split('.'))} = {hub_string(value)}")
    ids = list(dict.fromkeys(device_ids))
    for device_id in ids:
        if not isinstance(device_id, str) or not _HUB_DEVICE_ID.fullmatch(device_id):
            raise _invalid(f"{str(device_id)[:200]!r} cannot be an IoT Hub device ID", "target.device_ids")
    if not ids and condition is None:
        raise _invalid("the target needs device IDs or a condition", "target")
    union: list[_Node] = []
    everything = False
    if ids:
        union.append(f"deviceId IN [{', '.join(hub_string(device_id) for device_id in ids)}]")
    if condition is not None:
        tree = parse_condition(condition)
        if isinstance(tree, All):
            everything = True
        else:
            union.append(_translate(tree, negate=False))
    parts = scope if everything else [*scope, _junction("OR", union)]
    text = _render_node(_junction("AND", parts)) if parts else "*"
    if len(text) > MAX_QUERY_LENGTH:
        raise _invalid(
            f"the target is {len(text)} characters in IoT Hub's query language; the hub takes at most "
            f"{MAX_QUERY_LENGTH} (tag the devices rather than listing them)",
            "target",
        )
    return text


# --- status -------------------------------------------------------------------------------------

_S = DeviceUpdateState


def _section(twin: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    value: object = twin
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def edge_device_state(
    edge_agent_twin: Mapping[str, Any],
    *,
    configuration_id: str | None,
    applied_version: int | None = None,
    modules: Collection[str] = (),
) -> DeviceUpdateState:
    """A device's state for one deployment, read from its ``$edgeAgent`` module twin.

    ``configuration_id`` is None for content applied to the one device (no configuration).
    ``applied_version`` is the desired ``$version`` that carries the deployment; by default the
    twin's current one, as the hub's own reported counts use. ``modules`` must also report
    running before the device counts as succeeded (IoT Edge reports 200 as soon as it started
    them). Transitional codes stay in progress: the rollout's device timeout ends them.
    """
    if configuration_id is not None:
        status = _section(edge_agent_twin, "configurations", configuration_id).get("status")
        if not isinstance(status, str) or status.lower() != "applied":
            # Not yet applied, or "Targeted": a deployment of higher priority won this device.
            return _S.PENDING
    desired = _section(edge_agent_twin, "properties", "desired")
    reported = _section(edge_agent_twin, "properties", "reported")
    version = applied_version if applied_version is not None else _integer(desired.get("$version"))
    if version is None:
        return _S.PENDING
    processed = _integer(reported.get("lastDesiredVersion"))
    if processed is None or processed < version:
        return _S.NOTIFIED
    last_status = _section(reported, "lastDesiredStatus")
    code = _integer(last_status.get("code"))
    if code == 200:
        running = all(
            _section(reported, "modules", name).get("runtimeStatus") == "running" for name in modules
        )
        return _S.SUCCEEDED if running else _S.VERIFYING
    if code in (400, 412):
        return _S.FAILED
    if code == 500:
        description = str(last_status.get("description") or "").lower()
        return _S.DOWNLOADING if _PULL_TIMED_OUT in description else _S.FAILED
    # 406 (agent not connected), 417 (empty configuration while the agent restarts), unknown.
    return _S.INSTALLING


def edge_status_detail(edge_agent_twin: Mapping[str, Any]) -> str | None:
    """What ``$edgeAgent`` said of its last deployment when it was no success (for the device's detail)."""
    last_status = _section(edge_agent_twin, "properties", "reported", "lastDesiredStatus")
    code = _integer(last_status.get("code"))
    if code is None or code == 200:
        return None
    description = str(last_status.get("description") or "").strip()
    text = f"IoT Edge agent: {code}" + (f" {description}" if description else "")
    return text if len(text) <= 1000 else text[:997] + "..."


_METRICS: Final = {
    "targeted": "targetedCount",
    "applied": "appliedCount",
    "succeeded": "reportedSuccessfulCount",
    "failed": "reportedFailedCount",
}


def counts_from_metrics(
    system_results: Mapping[str, Any], custom_results: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Counts of an edge deployment from its configuration's ``systemMetrics.results``.

    The reported counts are taken from ``metrics.results`` when the system ones lack them.
    ``in_progress`` = applied but not reported; ``not_applied`` = targeted but another
    deployment has priority on the device (or the hub has not got to it yet).
    """
    counts: dict[str, int] = {}
    for name, metric in _METRICS.items():
        value = _integer(system_results.get(metric))
        if value is None and custom_results is not None:
            value = _integer(custom_results.get(metric))
        counts[name] = max(value or 0, 0)
    counts["in_progress"] = max(counts["applied"] - counts["succeeded"] - counts["failed"], 0)
    counts["not_applied"] = max(counts["targeted"] - counts["applied"], 0)
    return counts


# --- update triggers ----------------------------------------------------------------------------


def method_payload(deployment_id: str, *, release_id: str | None = None) -> dict[str, Any]:
    """The payload of the ``fleetlift.update`` direct method: check the server for this deployment now."""
    if not deployment_id:
        raise _invalid("a trigger names its deployment", "deployment_id")
    payload: dict[str, Any] = {"version": 1, "action": "check", "deployment_id": deployment_id}
    if release_id is not None:
        payload["release_id"] = release_id
    return payload


def desired_update_patch(payload: Mapping[str, Any], *, sequence: int) -> dict[str, Any]:
    """The twin patch that carries a trigger to an offline device (``properties.desired.fleetlift.update``).

    ``sequence`` must grow with every trigger, so the device sees a change even when the same
    deployment is triggered twice.
    """
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise _invalid("the sequence is a non-negative integer", "sequence")
    for key in payload:
        _check_twin_key(key, "payload")
    return {"properties": {"desired": {"fleetlift": {"update": {**payload, "sequence": sequence}}}}}
