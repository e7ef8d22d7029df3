"""IotHubEmulator: an EMULATOR of the Azure IoT Hub data-plane REST API (api-version 2021-04-12), for tests.

This is not Azure and talks to nothing: it is an in-process ASGI app (Starlette) that answers the subset
of the hub's service API that fleetlift uses, with the hub's documented behaviour, so the IoT Hub adapter
and the flows built on it can be tested without a hub. Use it through httpx, no sockets::

    hub = IotHubEmulator()
    hub.add_device("gw-1", tags={"env": "prod"}, edge=True)
    transport = httpx.ASGITransport(app=hub.app)      # or hub.transport()
    # ... IotHubClient(hub.host_name, auth, transport=transport) with auth from hub.connection_string

What it serves (every route is declared in the official API description; see ``ROUTES``):
- ``GET/PATCH /twins/{id}``, ``GET/PATCH /twins/{id}/modules/{mid}``: device and module twins. PATCH is a
  JSON merge patch of ``tags`` and ``properties.desired`` (``null`` deletes); reported properties are the
  device's and cannot be written by the service. ``If-Match`` (``*`` or the quoted etag) else 412.
- ``POST /devices/query``: the query language subset below, paged with ``x-ms-max-item-count`` and an
  opaque ``x-ms-continuation`` token (a response header; sent back as a request header).
- ``GET/PUT/DELETE /configurations/{id}``, ``GET /configurations?top=``, ``POST /configurations/testQueries``:
  automatic device configurations and IoT Edge deployments (base and layered), with live system metrics.
- ``POST /devices/{id}/applyConfigurationContent``: modules content for one IoT Edge device (204).
- ``POST /twins/{id}/methods``: direct methods, answered by handlers registered with ``on_method``.

Documented behaviour it reproduces (sources: the API description, the IoT Hub developer guide pages on
twins, queries, automatic device management, IoT Edge deployments and quotas, the common error codes page,
and the IoT Edge runtime's notes on ``$edgeAgent`` reported properties):
- Authentication: ``Authorization: SharedAccessSignature sr=..&sig=..&se=..&skn=..``; the signature is
  base64(HMAC-SHA256(base64-decoded policy key, "<URL-encoded resource URI>\\n<expiry>")), URL-encoded in
  the token; ``sr`` must cover the request's host and path, ``skn`` must name the policy and ``se`` must
  lie in the future. Otherwise 401 ``IotHubUnauthorizedAccess``. ``Bearer <token>`` is accepted when the
  emulator was given that token (it stands in for an Entra ID token; it does not validate JWTs).
- ``api-version`` is required and must be 2021-04-12: otherwise 400 ``InvalidProtocolVersion``.
- Errors: header ``iothub-errorcode: <Code>`` and body
  ``{"Message": "ErrorCode:<Code>;<text>", "ExceptionMessage": "Tracking ID:<id>-G:0-TimeStamp:<when>"}``;
  direct-method errors use ``{"errorCode": 404103, "trackingId", "message", "info", "timestampUtc"}``.
- Twins: ``version`` and the etag move on every change of tags or desired properties;
  ``properties.desired.$version`` on every desired change; reported changes move only the reported
  ``$version`` (so a device reporting never breaks the service's If-Match).
- Configurations: create answers 201, update 200 and only with ``If-Match`` (``*`` or the current etag,
  else 412 ``PreconditionFailed``); PUT on an existing id without If-Match is 409
  ``ConfigurationAlreadyExists``; ``content`` cannot change (400 ``InvalidConfigurationContent``); only
  labels, priority, targetCondition and metrics can; at most 100 per hub (413
  ``ConfigurationCountLimitExceeded``, as the hub answers); ids are lowercase letters, digits and
  ``-:+%_#*?!(),=@;'``, at most 128 characters. About 20 configuration operations a minute (create,
  update, get, list, delete) per unit: more answer 429 ``ThrottlingException`` with ``Retry-After``.
- Which configuration applies: among those whose targetCondition matches a device, the highest priority
  wins; on a tie the most recently created. Edge deployments target IoT Edge devices only; a layered
  deployment applies on top of the device's applied base deployment when its priority is higher than the
  base's, and sets only the ``properties.desired.<path>`` it names. The applied content becomes the
  module twins' desired properties (``$edgeAgent``, ``$edgeHub``, custom modules); the ``$edgeAgent``
  twin lists every deployment that targets the device under ``configurations`` with status ``Applied``
  or ``Targeted``. Deleting a deployment leaves the modules as they were (the hub does not remove them).
- System metrics are the hub's queries, evaluated live: ``targetedCount``, ``appliedCount`` and, for
  edge deployments, ``reportedSuccessfulCount`` / ``reportedFailedCount``: ``$edgeAgent`` twins of
  devices where the deployment is applied, ``properties.desired.$version`` equals
  ``properties.reported.lastDesiredVersion``, and ``lastDesiredStatus.code`` is 200 / is not 200.
- Direct methods: a device that is offline, or online with no method handler at all, answers 404
  ``404103 DeviceNotOnline``; ``responseTimeoutInSeconds`` 5..300, ``connectTimeoutInSeconds`` 0..300.

Query language subset (``SELECT ... FROM devices | devices.modules [WHERE ...]``):
``SELECT *``, ``SELECT TOP n``, projections ``a.b [AS x], ...``, ``COUNT() [AS x]``; conditions with
``=  !=  <>  <  >  <=  >=``, ``IN [...]``, ``NIN [...]``, ``AND``, ``OR``, ``NOT``, parentheses,
``IS_DEFINED(path)``; paths like ``tags.a.b``, ``properties.reported.x``, ``properties.desired.$version``,
``configurations.[[some-id]].status``; strings in single or double quotes with ``\\'`` ``\\"`` ``\\\\``
``\\uXXXX`` escapes, numbers (decimal, ``0x`` hex), ``true``, ``false``, ``null``. Keywords are
case-insensitive. Like the hub's SQL dialect, a comparison on a missing property or on values of different
kinds is undefined; ``NOT undefined`` is undefined; only ``true`` selects a twin.

Choices where the documentation is silent (the emulator's own, said here so nobody mistakes them for the
hub's): If-Match must be ``*`` or a quoted entity-tag (``"AAAAAAAAAAE="``, ``"*"``), as RFC 7232 says
and Azure's C# SDK does ("All ETag values need to be wrapped in escaped quotes"); an unquoted value is
ignored as if absent (a Python SDK report shows the hub answering 409 Conflict to a configuration update
sent with an unquoted etag); PUT with If-Match on a missing configuration is 412; a targetCondition of ``*``
targets every device and an empty one none; ``x-ms-max-item-count`` defaults to 100 and is capped at 1000;
a device with method handlers but none for the name called answers ``{"status": 501, "payload": null}``;
a handler raising ``TimeoutError`` gives 504 ``504101 GatewayTimeout``; twins without tags omit ``tags``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import inspect
import json
import math
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote, unquote, unquote_plus

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

API_VERSION: Final = "2021-04-12"
EDGE_AGENT: Final = "$edgeAgent"
EDGE_HUB: Final = "$edgeHub"
MAX_CONFIGURATIONS: Final = 100
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

# (method, path template) of every route the emulator serves; each one is a path and method of the
# official API description (tests/unit/test_iothub_emulator.py checks this against the description).
ROUTES: Final[tuple[tuple[str, str], ...]] = (
    ("GET", "/twins/{id}"),
    ("PATCH", "/twins/{id}"),
    ("GET", "/twins/{id}/modules/{mid}"),
    ("PATCH", "/twins/{id}/modules/{mid}"),
    ("POST", "/devices/query"),
    ("GET", "/configurations"),
    ("POST", "/configurations/testQueries"),
    ("GET", "/configurations/{id}"),
    ("PUT", "/configurations/{id}"),
    ("DELETE", "/configurations/{id}"),
    ("POST", "/devices/{id}/applyConfigurationContent"),
    ("POST", "/twins/{deviceId}/methods"),
)

# The six-digit codes of the hub's documented errors, for the JSON error shape used by direct methods.
ERROR_NUMBERS: Final[Mapping[str, int]] = {
    "InvalidProtocolVersion": 400001,
    "ArgumentInvalid": 400004,
    "IotHubUnauthorizedAccess": 401002,
    "DeviceNotFound": 404001,
    "ModuleNotFound": 404010,
    "DeviceNotOnline": 404103,
    "PreconditionFailed": 412001,
    "ThrottlingException": 429001,
    "ServerError": 500001,
    "ServiceUnavailable": 503001,
    "GatewayTimeout": 504101,
}
_STATUS_CODES: Final[Mapping[int, str]] = {
    500: "ServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

_CONFIG_ID = re.compile(r"[a-z0-9\-:+%_#*?!(),=@;']{1,128}")
# Device and module ids: the characters the API description allows, at most 128.
_TWIN_ID = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}")
_UNDEFINED: Final = object()


class HubError(Exception):
    """An error the emulator answers in the hub's shapes (header ``iothub-errorcode`` and a JSON body)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        json_shape: bool = False,
        info: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.json_shape = json_shape
        self.info = dict(info or {})
        self.headers = dict(headers or {})


class QuerySyntaxError(ValueError):
    """A query or condition outside the emulator's subset of the IoT Hub query language."""


# --------------------------------------------------------------------------------------------------
# Query language subset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Path:
    segments: tuple[str, ...]


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Compare:
    op: str
    left: _Path | _Literal
    right: _Path | _Literal


@dataclass(frozen=True)
class _In:
    operand: _Path | _Literal
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class _IsDefined:
    path: _Path


@dataclass(frozen=True)
class _Not:
    item: _Condition


@dataclass(frozen=True)
class _And:
    items: tuple[_Condition, ...]


@dataclass(frozen=True)
class _Or:
    items: tuple[_Condition, ...]


_Condition = _Compare | _In | _IsDefined | _Not | _And | _Or | _Path | _Literal


@dataclass(frozen=True)
class ParsedQuery:
    """A parsed ``SELECT``: the collection, the projection (None for ``*``), TOP and the condition."""

    source: Literal["devices", "devices.modules"]
    projection: tuple[tuple[_Path, str], ...] | None
    count_alias: str | None
    top: int | None
    where: _Condition | None


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<esc>\[\[[^\]]*\]\])
      | (?P<ident>[A-Za-z_$][A-Za-z0-9_$]*)
      | (?P<op><>|!=|<=|>=|=|<|>)
      | (?P<punct>[()\[\],.*-])
    )""",
    re.VERBOSE,
)
_KEYWORDS: Final = frozenset(
    {"select", "from", "where", "and", "or", "not", "in", "nin", "as", "top", "true", "false", "null"}
)
_ESCAPES: Final = {"'": "'", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    value: Any
    at: int


def _unescape(body: str, at: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise QuerySyntaxError(f"unsupported escape in the string at {at}")
    return "".join(out)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise QuerySyntaxError(f"unexpected character {text[pos]!r} at {pos}")
        kind = match.lastgroup or ""
        raw = match.group(kind)
        start = match.start(kind)
        value: Any = raw
        if kind == "num":
            if raw[:2].lower() == "0x":
                value = int(raw, 16)
            elif any(c in raw for c in ".eE"):
                value = float(raw)
            else:
                value = int(raw)
        elif kind == "str":
            value = _unescape(raw[1:-1], start)
        elif kind == "esc":
            value = raw[2:-2]
            if not value:
                raise QuerySyntaxError(f"empty [[ ]] property name at {start}")
        tokens.append(_Token(kind, raw, value, start))
        pos = match.end()
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def fail(self, what: str) -> QuerySyntaxError:
        token = self.current
        found = "the end" if token.kind == "end" else repr(token.text)
        return QuerySyntaxError(f"expected {what} at {token.at}, found {found}")

    def keyword(self, word: str) -> bool:
        token = self.current
        if token.kind == "ident" and token.text.lower() == word:
            self.pos += 1
            return True
        return False

    def punct(self, char: str) -> bool:
        if self.current.kind == "punct" and self.current.text == char:
            self.pos += 1
            return True
        return False

    def expect_punct(self, char: str) -> None:
        if not self.punct(char):
            raise self.fail(repr(char))

    def end(self) -> None:
        if self.current.kind != "end":
            raise self.fail("the end of the query")

    # query := SELECT [TOP n] projection FROM source [WHERE condition]
    def query(self) -> ParsedQuery:
        if not self.keyword("select"):
            raise self.fail("SELECT")
        top = None
        if self.keyword("top"):
            token = self.advance()
            if token.kind != "num" or not isinstance(token.value, int) or token.value < 0:
                raise QuerySyntaxError(f"TOP needs a whole number at {token.at}")
            top = token.value
        projection: tuple[tuple[_Path, str], ...] | None = None
        count_alias = None
        if self.punct("*"):
            pass
        elif self.current.kind == "ident" and self.current.text.lower() == "count":
            self.advance()
            self.expect_punct("(")
            self.expect_punct(")")
            count_alias = self.alias() or "$1"
        else:
            items = [self.projection_item()]
            while self.punct(","):
                items.append(self.projection_item())
            projection = tuple(items)
        if not self.keyword("from"):
            raise self.fail("FROM")
        source = self.source()
        where = None
        if self.keyword("where"):
            where = self.condition()
        if self.current.kind == "ident" and self.current.text.lower() == "group":
            raise QuerySyntaxError("GROUP BY is outside the emulator's query subset")
        self.end()
        return ParsedQuery(source, projection, count_alias, top, where)

    def alias(self) -> str | None:
        if self.keyword("as"):
            token = self.advance()
            if token.kind != "ident":
                raise QuerySyntaxError(f"expected an alias at {token.at}")
            return str(token.value)
        return None

    def projection_item(self) -> tuple[_Path, str]:
        path = self.path()
        return path, self.alias() or path.segments[-1]

    def source(self) -> Literal["devices", "devices.modules"]:
        token = self.advance()
        if token.kind != "ident" or token.text.lower() != "devices":
            raise QuerySyntaxError(f"FROM supports devices and devices.modules, at {token.at}")
        if self.punct("."):
            token = self.advance()
            if token.kind != "ident" or token.text.lower() != "modules":
                raise QuerySyntaxError(f"FROM supports devices and devices.modules, at {token.at}")
            return "devices.modules"
        return "devices"

    def condition(self) -> _Condition:
        items = [self.conjunction()]
        while self.keyword("or"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else _Or(tuple(items))

    def conjunction(self) -> _Condition:
        items = [self.negation()]
        while self.keyword("and"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else _And(tuple(items))

    def negation(self) -> _Condition:
        if self.keyword("not"):
            return _Not(self.negation())
        return self.primary()

    def primary(self) -> _Condition:
        if self.punct("("):
            inner = self.condition()
            self.expect_punct(")")
            return inner
        token = self.current
        if token.kind == "ident" and token.text.lower() == "is_defined":
            self.advance()
            self.expect_punct("(")
            path = self.path()
            self.expect_punct(")")
            return _IsDefined(path)
        if token.kind == "ident" and self.tokens[self.pos + 1].text == "(":
            raise QuerySyntaxError(f"function {token.text} is outside the emulator's query subset")
        left = self.operand()
        token = self.current
        if token.kind == "op":
            self.advance()
            op = "!=" if token.text == "<>" else token.text
            return _Compare(op, left, self.operand())
        if self.keyword("in"):
            return _In(left, self.array(), negated=False)
        if self.keyword("nin"):
            return _In(left, self.array(), negated=True)
        return left

    def array(self) -> tuple[Any, ...]:
        self.expect_punct("[")
        values: list[Any] = []
        if not self.punct("]"):
            values.append(self.literal())
            while self.punct(","):
                values.append(self.literal())
            self.expect_punct("]")
        return tuple(values)

    def operand(self) -> _Path | _Literal:
        token = self.current
        if token.kind in {"num", "str"} or token.text == "-":
            return _Literal(self.literal())
        if token.kind == "ident" and token.text.lower() in {"true", "false", "null"}:
            return _Literal(self.literal())
        if token.kind in {"ident", "esc"}:
            return self.path()
        raise self.fail("a property or a value")

    def literal(self) -> Any:
        token = self.advance()
        if token.kind == "punct" and token.text == "-":
            number = self.advance()
            if number.kind != "num":
                raise QuerySyntaxError(f"expected a number after '-' at {number.at}")
            return -number.value
        if token.kind in {"num", "str"}:
            return token.value
        if token.kind == "ident" and token.text.lower() in {"true", "false", "null"}:
            return {"true": True, "false": False, "null": None}[token.text.lower()]
        raise QuerySyntaxError(f"expected a value at {token.at}")

    def path(self) -> _Path:
        segments = [self.segment(first=True)]
        while self.punct("."):
            segments.append(self.segment(first=False))
        return _Path(tuple(segments))

    def segment(self, *, first: bool) -> str:
        token = self.advance()
        if token.kind == "esc":
            return str(token.value)
        if token.kind != "ident" or (first and token.text.lower() in _KEYWORDS):
            raise QuerySyntaxError(f"expected a property name at {token.at}")
        return token.text


def parse_query(text: str) -> ParsedQuery:
    """Parse a ``SELECT`` of the emulator's query subset; raises QuerySyntaxError."""
    parser = _Parser(text)
    return parser.query()


def parse_condition(text: str) -> _Condition | None:
    """Parse a configuration's targetCondition (a WHERE clause without WHERE); None for ``*``."""
    if text.strip() == "*":
        return None
    parser = _Parser(text)
    condition = parser.condition()
    parser.end()
    return condition


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


def _resolve(path: _Path, document: Mapping[str, Any]) -> Any:
    node: Any = document
    for segment in path.segments:
        if not isinstance(node, Mapping) or segment not in node:
            return _UNDEFINED
        node = node[segment]
    return node


def _value(operand: _Path | _Literal, document: Mapping[str, Any]) -> Any:
    return _resolve(operand, document) if isinstance(operand, _Path) else operand.value


def _compare(op: str, left: Any, right: Any) -> bool | None:
    """Three-valued comparison: None (undefined) for missing values, objects or values of other kinds."""
    if left is _UNDEFINED or right is _UNDEFINED:
        return None
    kind = _kind(left)
    if kind != _kind(right) or kind == "object":
        return None
    if op in {"=", "!="}:
        return bool(left == right) == (op == "=")
    if kind not in {"number", "string"}:
        return None
    return bool({"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op])


def evaluate(condition: _Condition | None, document: Mapping[str, Any]) -> bool | None:
    """Evaluate a condition on a twin document: True, False or None (undefined)."""
    if condition is None:
        return True
    if isinstance(condition, _Compare):
        return _compare(condition.op, _value(condition.left, document), _value(condition.right, document))
    if isinstance(condition, _In):
        value = _value(condition.operand, document)
        if value is _UNDEFINED or _kind(value) == "object":
            return None
        found = any(_compare("=", value, option) is True for option in condition.values)
        return found != condition.negated
    if isinstance(condition, _IsDefined):
        return _resolve(condition.path, document) is not _UNDEFINED
    if isinstance(condition, _Not):
        inner = evaluate(condition.item, document)
        return None if inner is None else not inner
    if isinstance(condition, _And):
        results = [evaluate(item, document) for item in condition.items]
        if False in results:
            return False
        return None if None in results else True
    if isinstance(condition, _Or):
        results = [evaluate(item, document) for item in condition.items]
        if True in results:
            return True
        return None if None in results else False
    # A bare property or value selects only when it is the boolean true.
    value = _value(condition, document)
    return value is True


# --------------------------------------------------------------------------------------------------
# Hub state
# --------------------------------------------------------------------------------------------------


@dataclass
class _Twin:
    device_id: str
    module_id: str | None
    tags: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    desired_version: int = 1
    reported_version: int = 1
    desired_updated: float = 0.0
    reported_updated: float = 0.0
    configurations: dict[str, str] = field(default_factory=dict)


MethodHandler = Callable[[Any], tuple[int, Any] | Awaitable[tuple[int, Any]]]


@dataclass
class _Device:
    twin: _Twin
    edge: bool
    online: bool
    device_etag: str
    last_activity: float
    modules: dict[str, _Twin] = field(default_factory=dict)
    handlers: dict[str, MethodHandler] = field(default_factory=dict)
    # What the hub last applied: the device configuration id, and (base, layered...) edge deployments.
    applied_device_config: str | None = None
    applied_edge: tuple[str, ...] = ()


@dataclass
class _Configuration:
    id: str
    schema_version: str
    labels: dict[str, str]
    content: dict[str, Any]
    target_condition: str
    target: _Condition | None
    targets_nothing: bool
    priority: int
    metric_queries: dict[str, str]
    created: float
    updated: float
    etag: str
    sequence: int

    @property
    def is_edge(self) -> bool:
        return bool(self.content.get("modulesContent"))

    @property
    def is_layered(self) -> bool:
        modules = self.content.get("modulesContent") or {}
        return any(key != "properties.desired" for value in modules.values() for key in value)


@dataclass
class RecordedRequest:
    """One request the emulator served, as the adapter sent it (the Authorization value is redacted)."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    query_string: str
    headers: dict[str, str]
    body: Any
    status: int | None = None


@dataclass(frozen=True)
class MethodCall:
    """A direct method that reached a device handler (or was refused because the device was offline)."""

    device_id: str
    method_name: str
    payload: Any
    response_timeout: int | None
    connect_timeout: int | None
    delivered: bool


@dataclass
class _Fault:
    remaining: int
    status: int
    code: str
    retry_after: float | None
    path_prefix: str | None
    method: str | None


def _iso(timestamp: float) -> str:
    """The hub's timestamp form: UTC with seven fractional digits, like 2024-01-02T03:04:05.1234567Z."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond * 10:07d}Z"


def _twin_etag(version: int) -> str:
    # The hub's twin etags are base64 of a 64-bit counter ("AAAAAAAAAAE=" for 1).
    return base64.b64encode(version.to_bytes(8, "big")).decode()


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> bool:
    """Apply a JSON merge patch in place (``null`` deletes); True when something changed."""
    changed = False
    for key, value in patch.items():
        if value is None:
            if key in target:
                del target[key]
                changed = True
        elif isinstance(value, Mapping):
            child = target.get(key)
            if not isinstance(child, dict):
                child = {}
                target[key] = child
                changed = True
            changed = _merge_patch(child, value) or changed
        elif key not in target or not _same(target[key], value):
            target[key] = copy.deepcopy(value)
            changed = True
    return changed


def _check_keys(value: Any, where: str) -> None:
    """Twin keys exclude '.', '$', space and control characters (the API description's rule)."""
    if not isinstance(value, Mapping):
        return
    for key, child in value.items():
        if not key or any(c in key for c in ".$ ") or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):
            raise HubError(400, "ArgumentInvalid", f"Invalid key {key!r} in {where}")
        _check_keys(child, where)


def _set_path(target: dict[str, Any], path: Iterable[str], value: Any) -> None:
    keys = list(path)
    node = target
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = copy.deepcopy(value)


def _normalized_content(content: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in content.items() if value not in (None, {})}


def _parse_if_match(value: str | None) -> str | None:
    """The entity tag of an If-Match header: '*', the unquoted tag, or None when absent or unquoted."""
    if value is None:
        return None
    value = value.strip()
    if value == "*":
        return "*"
    value = value.removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return None


def _sas_string_to_sign(resource: str, expiry: str) -> bytes:
    return f"{resource}\n{expiry}".encode()


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------


class IotHubEmulator:
    """An in-process EMULATOR of the IoT Hub service API subset fleetlift uses (see the module docstring)."""

    def __init__(
        self,
        host_name: str = "fleetlift-emulated.azure-devices.net",
        *,
        key_name: str = "iothubowner",
        key: str | None = None,
        bearer_token: str | None = None,
        clock: Callable[[], float] = time.time,
        config_ops_per_minute: int | None = 20,
        max_configurations: int = MAX_CONFIGURATIONS,
        method_error_body: Literal["flat", "nested"] = "flat",
    ) -> None:
        self.host_name = host_name
        self.key_name = key_name
        # A fresh random policy key per emulator: tests never share a secret by accident.
        self.key = key or base64.b64encode(secrets.token_bytes(32)).decode()
        self.bearer_token = bearer_token
        self.clock = clock
        self.config_ops_per_minute = config_ops_per_minute
        self.max_configurations = max_configurations
        # "flat": {"errorCode": 404103, ...} at the top level, as the plan's adapter parses; "nested": the
        # same JSON as a string inside {"Message": ..., "ExceptionMessage": ""}, as the C# SDK parses.
        self.method_error_body = method_error_body
        self.requests: list[RecordedRequest] = []
        self.method_calls: list[MethodCall] = []
        self._devices: dict[str, _Device] = {}
        self._configs: dict[str, _Configuration] = {}
        self._faults: list[_Fault] = []
        self._config_ops: deque[float] = deque()
        self._sequence = 0
        self.app = Starlette(
            routes=[
                Route("/{rest:path}", self._endpoint, methods=["GET", "PUT", "PATCH", "POST", "DELETE"]),
            ]
        )

    # ----- public helpers ------------------------------------------------------------------------

    @property
    def connection_string(self) -> str:
        """The service connection string of the emulated hub's ``iothubowner``-style policy."""
        return f"HostName={self.host_name};SharedAccessKeyName={self.key_name};SharedAccessKey={self.key}"

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport that serves requests from this emulator in-process."""
        return httpx.ASGITransport(app=self.app)

    def add_device(
        self,
        device_id: str,
        *,
        tags: Mapping[str, Any] | None = None,
        reported: Mapping[str, Any] | None = None,
        desired: Mapping[str, Any] | None = None,
        edge: bool = False,
        online: bool = True,
    ) -> dict[str, Any]:
        """Register a device (an IoT Edge device gets its $edgeAgent and $edgeHub module twins); its twin."""
        if not _TWIN_ID.fullmatch(device_id):
            raise ValueError(f"invalid device id {device_id!r}")
        if device_id in self._devices:
            raise ValueError(f"device {device_id!r} exists")
        now = self.clock()
        twin = _Twin(device_id, None, desired_updated=now, reported_updated=now)
        _merge_patch(twin.tags, tags or {})
        _merge_patch(twin.reported, reported or {})
        _merge_patch(twin.desired, desired or {})
        device = _Device(
            twin=twin,
            edge=edge,
            online=online,
            device_etag=base64.b64encode(secrets.token_bytes(6)).decode(),
            last_activity=now,
        )
        if edge:
            # Creating an IoT Edge device identity creates the two system module identities with it.
            for module_id in (EDGE_AGENT, EDGE_HUB):
                device.modules[module_id] = _Twin(
                    device_id, module_id, desired_updated=now, reported_updated=now
                )
        self._devices[device_id] = device
        self._reconcile([device])
        return self.twin(device_id)

    def remove_device(self, device_id: str) -> None:
        """Delete a device identity (and its twins)."""
        # Other devices are unaffected: targeting is per device.
        del self._devices[device_id]

    def set_online(self, device_id: str, online: bool) -> None:
        """Connect or disconnect a device (offline devices answer direct methods with 404103)."""
        device = self._devices[device_id]
        device.online = online
        if online:
            device.last_activity = self.clock()

    def set_reported(self, device_id: str, reported: Mapping[str, Any]) -> None:
        """The device reports properties: a merge patch of its twin's reported properties."""
        self._report(self._devices[device_id].twin, reported)

    def report_module(self, device_id: str, module_id: str, reported: Mapping[str, Any]) -> None:
        """A module reports properties (creating the module twin when the device has none yet)."""
        device = self._devices[device_id]
        module = device.modules.get(module_id)
        if module is None:
            now = self.clock()
            module = _Twin(device_id, module_id, desired_updated=now, reported_updated=now)
            device.modules[module_id] = module
        self._report(module, reported)

    def report_edge_status(
        self, device_id: str, code: int = 200, description: str = "", *, version: int | None = None
    ) -> None:
        """$edgeAgent reports how it applied its desired properties (by default the current $version)."""
        agent = self._devices[device_id].modules[EDGE_AGENT]
        self.report_module(
            device_id,
            EDGE_AGENT,
            {
                "lastDesiredVersion": agent.desired_version if version is None else version,
                "lastDesiredStatus": {"code": code, "description": description},
            },
        )

    def twin(self, device_id: str) -> dict[str, Any]:
        """The device twin as GET /twins/{id} answers it."""
        return self._device_twin_json(self._devices[device_id])

    def module_twin(self, device_id: str, module_id: str) -> dict[str, Any]:
        """The module twin as GET /twins/{id}/modules/{mid} answers it."""
        device = self._devices[device_id]
        return self._module_twin_json(device, device.modules[module_id])

    @property
    def configurations(self) -> dict[str, dict[str, Any]]:
        """Every configuration by id, as GET /configurations/{id} answers it (metrics computed now)."""
        return {cid: self._configuration_json(config) for cid, config in self._configs.items()}

    def on_method(self, device_id: str, name: str, handler: MethodHandler) -> None:
        """Let a device answer direct method ``name``: ``handler(payload) -> (status, payload)``, or async."""
        self._devices[device_id].handlers[name] = handler

    def throttle(
        self,
        n: int,
        retry_after: float | None = 1,
        *,
        path_prefix: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests 429 ``ThrottlingException`` (with Retry-After)."""
        self._faults.append(_Fault(n, 429, "ThrottlingException", retry_after, path_prefix, method))

    def fail(
        self, n: int, status: int = 503, *, path_prefix: str | None = None, method: str | None = None
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (a hub-shaped 5xx by default)."""
        self._faults.append(
            _Fault(n, status, _STATUS_CODES.get(status, "ServerError"), None, path_prefix, method)
        )

    def query(self, text: str) -> list[dict[str, Any]]:
        """Run a query of the subset over the emulator's twins, as POST /devices/query would (all pages)."""
        return self._run_query(parse_query(text))

    # ----- ASGI entry point ----------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        raw = await request.body()
        raw_path = request.scope.get("raw_path") or quote(request.url.path).encode()
        raw_path_text = raw_path.decode("latin-1").split("?", 1)[0]
        headers = {name.lower(): value for name, value in request.headers.items()}
        if "authorization" in headers:
            headers["authorization"] = headers["authorization"].split(" ", 1)[0] + " <redacted>"
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            raw_path=raw_path_text,
            query=dict(parse_qsl(request.url.query, keep_blank_values=True)),
            query_string=request.url.query,
            headers=headers,
            body=body,
        )
        self.requests.append(record)
        try:
            response = await self._serve(request, raw_path_text, raw, record)
        except HubError as error:
            response = self._error_response(error)
        record.status = response.status_code
        return response

    async def _serve(self, request: Request, raw_path: str, raw: bytes, record: RecordedRequest) -> Response:
        segments = [unquote(part) for part in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        path = "/" + "/".join(segments)
        self._authenticate(request.headers.get("authorization"), path)
        version = record.query.get("api-version")
        if version != API_VERSION:
            found = "none" if version is None else repr(version)
            raise HubError(
                400, "InvalidProtocolVersion", f"api-version {API_VERSION} is required (found {found})"
            )
        handler, params, config_op = self._route(request.method, segments)
        self._inject_faults(request.method, path)
        if config_op:
            self._limit_config_ops()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise HubError(400, "IotHubFormatError", "The request body is not valid JSON") from exc
        return await handler(request, body, *params)

    def _route(
        self, method: str, segments: list[str]
    ) -> tuple[Callable[..., Awaitable[Response]], list[str], bool]:
        n = len(segments)
        head = segments[0] if segments else ""
        table: list[tuple[str, Callable[..., Awaitable[Response]], list[str], bool]] = []
        if head == "twins" and n == 2:
            table = [
                ("GET", self._get_twin, [segments[1]], False),
                ("PATCH", self._patch_twin, [segments[1]], False),
            ]
        elif head == "twins" and n == 4 and segments[2] == "modules":
            params = [segments[1], segments[3]]
            table = [("GET", self._get_module, params, False), ("PATCH", self._patch_module, params, False)]
        elif head == "twins" and n == 3 and segments[2] == "methods":
            table = [("POST", self._invoke_method, [segments[1]], False)]
        elif head == "devices" and n == 2 and segments[1] == "query":
            table = [("POST", self._query, [], False)]
        elif head == "devices" and n == 3 and segments[2] == "applyConfigurationContent":
            table = [("POST", self._apply_content, [segments[1]], False)]
        elif head == "configurations" and n == 1:
            table = [("GET", self._list_configurations, [], True)]
        elif head == "configurations" and n == 2 and segments[1] == "testQueries":
            table = [("POST", self._test_queries, [], False)]
        elif head == "configurations" and n == 2:
            params = [segments[1]]
            table = [
                ("GET", self._get_configuration, params, True),
                ("PUT", self._put_configuration, params, True),
                ("DELETE", self._delete_configuration, params, True),
            ]
        if not table:
            raise HubError(404, "NotFound", f"No such resource: /{'/'.join(segments)}")
        for allowed, handler, params, config_op in table:
            if allowed == method:
                return handler, params, config_op
        raise HubError(405, "MethodNotAllowed", f"{method} is not allowed on /{'/'.join(segments)}")

    # ----- cross-cutting behaviour ---------------------------------------------------------------

    def _authenticate(self, header: str | None, path: str) -> None:
        if not header:
            raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized: no Authorization header")
        scheme, _, credentials = header.partition(" ")
        if scheme == "Bearer" and self.bearer_token is not None:
            if hmac.compare_digest(credentials.strip().encode(), self.bearer_token.encode()):
                return
            raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized: the bearer token is not valid")
        if scheme != "SharedAccessSignature":
            raise HubError(401, "IotHubUnauthorizedAccess", f"Unauthorized: unsupported scheme {scheme!r}")
        fields: dict[str, str] = {}
        for item in credentials.strip().split("&"):
            name, sep, value = item.partition("=")
            if not sep or name in fields:
                raise HubError(
                    401, "IotHubUnauthorizedAccess", "Unauthorized: malformed shared access signature"
                )
            fields[name] = value
        if not {"sr", "sig", "se", "skn"} <= fields.keys():
            raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized: sr, sig, se and skn are required")
        try:
            expiry = int(fields["se"])
        except ValueError as exc:
            raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized: se is not a number") from exc
        if expiry <= self.clock():
            raise HubError(
                401, "IotHubUnauthorizedAccess", "Unauthorized: the shared access signature expired"
            )
        if unquote_plus(fields["skn"]) != self.key_name:
            raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized: unknown shared access policy")
        resource = unquote_plus(fields["sr"]).lower().removeprefix("https://").rstrip("/")
        target = f"{self.host_name}{path}".lower()
        if not (target == resource or target.startswith(resource + "/")):
            raise HubError(
                401, "IotHubUnauthorizedAccess", "Unauthorized: the token's resource does not match"
            )
        # The signed string is the resource URI as the token carries it (URL-encoded) and the expiry.
        digest = hmac.new(
            base64.b64decode(self.key), _sas_string_to_sign(fields["sr"], fields["se"]), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(base64.b64encode(digest), unquote_plus(fields["sig"]).encode()):
            raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized: the signature does not match")

    def _inject_faults(self, method: str, path: str) -> None:
        for fault in self._faults:
            if fault.remaining <= 0:
                continue
            if fault.method is not None and fault.method != method:
                continue
            if fault.path_prefix is not None and not path.startswith(fault.path_prefix):
                continue
            fault.remaining -= 1
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(fault.retry_after))
            message = (
                "Throttled: the request exceeded the hub's rate" if fault.status == 429 else "Injected fault"
            )
            raise HubError(fault.status, fault.code, message, headers=headers)

    def _limit_config_ops(self) -> None:
        limit = self.config_ops_per_minute
        if limit is None:
            return
        now = self.clock()
        while self._config_ops and self._config_ops[0] <= now - 60:
            self._config_ops.popleft()
        if len(self._config_ops) >= limit:
            wait = max(1, math.ceil(self._config_ops[0] + 60 - now))
            raise HubError(
                429,
                "ThrottlingException",
                f"Configuration operations exceed {limit} a minute",
                headers={"Retry-After": str(wait)},
            )
        self._config_ops.append(now)

    def _error_response(self, error: HubError) -> Response:
        tracking = uuid.uuid4().hex
        now = self.clock()
        headers = {"iothub-errorcode": error.code, **error.headers}
        if error.json_shape:
            payload: dict[str, Any] = {
                "errorCode": ERROR_NUMBERS.get(error.code, error.status * 1000),
                "trackingId": tracking,
                "message": error.message,
                "info": error.info,
                "timestampUtc": _iso(now),
            }
            if self.method_error_body == "nested":
                payload = {"Message": json.dumps(payload), "ExceptionMessage": ""}
        else:
            stamp = datetime.fromtimestamp(now, UTC).strftime("%m/%d/%Y %H:%M:%S")
            payload = {
                "Message": f"ErrorCode:{error.code};{error.message}",
                "ExceptionMessage": f"Tracking ID:{tracking}-G:0-TimeStamp:{stamp}",
            }
        return _json(payload, error.status, headers)

    # ----- twins ---------------------------------------------------------------------------------

    def _device(self, device_id: str, *, json_shape: bool = False) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            raise HubError(404, "DeviceNotFound", f"Device {device_id} not registered", json_shape=json_shape)
        return device

    def _module(self, device: _Device, module_id: str) -> _Twin:
        module = device.modules.get(module_id)
        if module is None:
            raise HubError(
                404, "ModuleNotFound", f"Module {module_id} on device {device.twin.device_id} not found"
            )
        return module

    def _twin_common(self, device: _Device, twin: _Twin) -> dict[str, Any]:
        doc: dict[str, Any] = {"deviceId": twin.device_id}
        if twin.module_id is not None:
            doc["moduleId"] = twin.module_id
        doc.update(
            {
                "etag": _twin_etag(twin.version),
                "deviceEtag": device.device_etag,
                "status": "enabled",
                "statusUpdateTime": "0001-01-01T00:00:00Z",
                "connectionState": "Connected" if device.online else "Disconnected",
                "lastActivityTime": _iso(device.last_activity),
                "cloudToDeviceMessageCount": 0,
                "authenticationType": "sas",
                "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
                "modelId": "",
                "version": twin.version,
            }
        )
        if twin.tags:
            doc["tags"] = copy.deepcopy(twin.tags)
        doc["properties"] = {
            "desired": {
                **copy.deepcopy(twin.desired),
                "$metadata": {"$lastUpdated": _iso(twin.desired_updated)},
                "$version": twin.desired_version,
            },
            "reported": {
                **copy.deepcopy(twin.reported),
                "$metadata": {"$lastUpdated": _iso(twin.reported_updated)},
                "$version": twin.reported_version,
            },
        }
        if twin.configurations:
            doc["configurations"] = {cid: {"status": status} for cid, status in twin.configurations.items()}
        return doc

    def _device_twin_json(self, device: _Device) -> dict[str, Any]:
        doc = self._twin_common(device, device.twin)
        doc["capabilities"] = {"iotEdge": device.edge}
        return doc

    def _module_twin_json(self, device: _Device, module: _Twin) -> dict[str, Any]:
        return self._twin_common(device, module)

    def _report(self, twin: _Twin, reported: Mapping[str, Any]) -> None:
        _check_keys(reported, "reported properties")
        if _merge_patch(twin.reported, reported):
            twin.reported_version += 1
            twin.reported_updated = self.clock()
        device = self._devices[twin.device_id]
        device.last_activity = self.clock()
        self._reconcile([device])

    def _set_desired(self, twin: _Twin, desired: Mapping[str, Any]) -> None:
        """Replace a twin's desired properties (as a deployment does); versions move only on a change."""
        if not _same(twin.desired, desired):
            twin.desired = copy.deepcopy(dict(desired))
            twin.desired_version += 1
            twin.version += 1
            twin.desired_updated = self.clock()

    def _patch(self, twin: _Twin, body: Any, headers: Mapping[str, str]) -> None:
        if not isinstance(body, Mapping):
            raise HubError(400, "ArgumentInvalid", "The twin patch must be a JSON object")
        if_match = _parse_if_match(headers.get("if-match"))
        if if_match not in (None, "*") and if_match != _twin_etag(twin.version):
            raise HubError(412, "PreconditionFailed", "The twin's etag does not match If-Match")
        for key, expected in (("deviceId", twin.device_id), ("moduleId", twin.module_id)):
            if key in body and body[key] != expected:
                raise HubError(400, "ArgumentInvalid", f"{key} in the body does not match the URL")
        tags = body.get("tags")
        properties = body.get("properties") or {}
        if tags is not None and not isinstance(tags, Mapping):
            raise HubError(400, "ArgumentInvalid", "tags must be a JSON object")
        if not isinstance(properties, Mapping):
            raise HubError(400, "ArgumentInvalid", "properties must be a JSON object")
        if properties.get("reported") is not None:
            raise HubError(400, "ArgumentInvalid", "Reported properties are read-only for the service")
        desired = properties.get("desired")
        if desired is not None and not isinstance(desired, Mapping):
            raise HubError(400, "ArgumentInvalid", "properties.desired must be a JSON object")
        # A twin read back and sent again carries its own metadata; the hub does not take it as a change.
        desired = {k: v for k, v in (desired or {}).items() if k not in {"$metadata", "$version"}}
        _check_keys(tags or {}, "tags")
        _check_keys(desired, "desired properties")
        tags_changed = _merge_patch(twin.tags, tags or {})
        desired_changed = _merge_patch(twin.desired, desired)
        if desired_changed:
            twin.desired_version += 1
            twin.desired_updated = self.clock()
        if tags_changed or desired_changed:
            twin.version += 1

    async def _get_twin(self, request: Request, body: Any, device_id: str) -> Response:
        device = self._device(device_id)
        doc = self._device_twin_json(device)
        return _json(doc, 200, {"ETag": f'"{doc["etag"]}"'})

    async def _patch_twin(self, request: Request, body: Any, device_id: str) -> Response:
        device = self._device(device_id)
        self._patch(device.twin, body, _lower(request.headers))
        self._reconcile([device])
        doc = self._device_twin_json(device)
        return _json(doc, 200, {"ETag": f'"{doc["etag"]}"'})

    async def _get_module(self, request: Request, body: Any, device_id: str, module_id: str) -> Response:
        device = self._device(device_id)
        doc = self._module_twin_json(device, self._module(device, module_id))
        return _json(doc, 200, {"ETag": f'"{doc["etag"]}"'})

    async def _patch_module(self, request: Request, body: Any, device_id: str, module_id: str) -> Response:
        device = self._device(device_id)
        module = self._module(device, module_id)
        self._patch(module, body, _lower(request.headers))
        self._reconcile([device])
        doc = self._module_twin_json(device, module)
        return _json(doc, 200, {"ETag": f'"{doc["etag"]}"'})

    # ----- queries -------------------------------------------------------------------------------

    def _documents(self, source: str) -> list[dict[str, Any]]:
        devices = sorted(self._devices.values(), key=lambda d: d.twin.device_id)
        if source == "devices":
            return [self._device_twin_json(device) for device in devices]
        return [
            self._module_twin_json(device, device.modules[module_id])
            for device in devices
            for module_id in sorted(device.modules)
        ]

    def _run_query(self, parsed: ParsedQuery) -> list[dict[str, Any]]:
        matches = [doc for doc in self._documents(parsed.source) if evaluate(parsed.where, doc) is True]
        if parsed.count_alias is not None:
            return [{parsed.count_alias: len(matches)}]
        if parsed.top is not None:
            matches = matches[: parsed.top]
        if parsed.projection is None:
            return matches
        rows = []
        for doc in matches:
            row = {}
            for path, alias in parsed.projection:
                value = _resolve(path, doc)
                if value is not _UNDEFINED:
                    row[alias] = value
            rows.append(row)
        return rows

    def _count(self, text: str) -> int:
        return len(self._run_query(parse_query(text)))

    async def _query(self, request: Request, body: Any) -> Response:
        if not isinstance(body, Mapping) or not isinstance(body.get("query"), str):
            raise HubError(400, "ArgumentInvalid", 'The body must be {"query": "<query>"}')
        text = body["query"]
        try:
            parsed = parse_query(text)
        except QuerySyntaxError as exc:
            raise HubError(400, "ArgumentInvalid", f"Invalid query: {exc}") from exc
        headers = _lower(request.headers)
        size_text = headers.get("x-ms-max-item-count")
        size = DEFAULT_PAGE_SIZE
        if size_text is not None:
            if not size_text.strip().isdigit() or int(size_text) < 1:
                raise HubError(400, "ArgumentInvalid", "x-ms-max-item-count must be a positive whole number")
            size = min(int(size_text), MAX_PAGE_SIZE)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        offset = 0
        token = headers.get("x-ms-continuation")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                offset = int(state["o"])
                if state["q"] != digest or offset < 0:
                    raise ValueError(token)
            except (ValueError, KeyError, TypeError) as exc:
                raise HubError(
                    400, "ArgumentInvalid", "The continuation token is not valid for this query"
                ) from exc
        rows = self._run_query(parsed)
        page = rows[offset : offset + size]
        out = {
            "x-ms-item-type": "Twin" if parsed.projection is None and parsed.count_alias is None else "JSON"
        }
        if offset + size < len(rows):
            out["x-ms-continuation"] = base64.urlsafe_b64encode(
                json.dumps({"o": offset + size, "q": digest}).encode()
            ).decode()
        return _json(page, 200, out)

    # ----- configurations ------------------------------------------------------------------------

    def _configuration(self, configuration_id: str) -> _Configuration:
        config = self._configs.get(configuration_id)
        if config is None:
            raise HubError(404, "ConfigurationNotFound", f"Configuration {configuration_id} not found")
        return config

    def _system_queries(self, config: _Configuration) -> dict[str, str]:
        quoted = f"configurations.[[{config.id}]].status = 'Applied'"
        if config.is_edge:
            where = "capabilities.iotEdge = true"
            if config.targets_nothing:
                where = "false"
            elif config.target is not None:
                where += f" AND ({config.target_condition})"
            agent = f"SELECT deviceId FROM devices.modules WHERE moduleId = '{EDGE_AGENT}' AND {quoted}"
            reported = "properties.desired.$version = properties.reported.lastDesiredVersion AND"
            code = "properties.reported.lastDesiredStatus.code"
            return {
                "targetedCount": f"SELECT deviceId FROM devices WHERE {where}",
                "appliedCount": agent,
                "reportedSuccessfulCount": f"{agent} AND {reported} {code} = 200",
                "reportedFailedCount": f"{agent} AND {reported} {code} != 200",
            }
        if config.targets_nothing:
            targeted = "SELECT deviceId FROM devices WHERE false"
        elif config.target is None:
            targeted = "SELECT deviceId FROM devices"
        else:
            targeted = f"SELECT deviceId FROM devices WHERE {config.target_condition}"
        return {"targetedCount": targeted, "appliedCount": f"SELECT deviceId FROM devices WHERE {quoted}"}

    def _configuration_json(self, config: _Configuration) -> dict[str, Any]:
        system = self._system_queries(config)
        return {
            "id": config.id,
            "schemaVersion": config.schema_version,
            "labels": dict(config.labels),
            "content": copy.deepcopy(config.content),
            "targetCondition": config.target_condition,
            "createdTimeUtc": _iso(config.created),
            "lastUpdatedTimeUtc": _iso(config.updated),
            "priority": config.priority,
            "systemMetrics": {
                "results": {name: self._count(text) for name, text in system.items()},
                "queries": system,
            },
            "metrics": {
                "results": {name: self._count(text) for name, text in config.metric_queries.items()},
                "queries": dict(config.metric_queries),
            },
            "etag": config.etag,
        }

    def _next_etag(self) -> str:
        self._sequence += 1
        # Configuration etags look like the hub's ("MQ==" is base64 of "1"); one counter for the whole hub
        # keeps a deleted and recreated configuration from reusing an old etag.
        return base64.b64encode(str(self._sequence).encode()).decode()

    async def _get_configuration(self, request: Request, body: Any, configuration_id: str) -> Response:
        doc = self._configuration_json(self._configuration(configuration_id))
        return _json(doc, 200, {"ETag": f'"{doc["etag"]}"'})

    async def _list_configurations(self, request: Request, body: Any) -> Response:
        top_text = request.query_params.get("top")
        configs = sorted(self._configs.values(), key=lambda c: c.sequence)
        if top_text is not None:
            if not top_text.strip().isdigit():
                raise HubError(400, "ArgumentInvalid", "top must be a whole number")
            configs = configs[: min(int(top_text), self.max_configurations)]
        return _json([self._configuration_json(config) for config in configs], 200)

    def _validated(self, configuration_id: str, body: Any) -> dict[str, Any]:
        """The parts of a PUT body the hub keeps, checked; raises HubError 400."""
        if not isinstance(body, Mapping):
            raise HubError(400, "ArgumentInvalid", "The configuration must be a JSON object")
        if body.get("id") not in (None, configuration_id):
            raise HubError(400, "ArgumentInvalid", "The id in the body does not match the URL")
        priority = body.get("priority", 0)
        if priority is None:
            priority = 0
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise HubError(400, "ArgumentInvalid", "priority must be a whole number, 0 or more")
        labels = body.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise HubError(400, "ArgumentInvalid", "labels must map names to strings")
        condition_text = body.get("targetCondition") or ""
        if not isinstance(condition_text, str):
            raise HubError(400, "ArgumentInvalid", "targetCondition must be a string")
        target = None
        if condition_text.strip():
            try:
                target = parse_condition(condition_text)
            except QuerySyntaxError as exc:
                raise HubError(400, "ArgumentInvalid", f"Invalid targetCondition: {exc}") from exc
        metrics = body.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise HubError(400, "ArgumentInvalid", "metrics must be a JSON object")
        queries = metrics.get("queries") or {}
        if not isinstance(queries, Mapping) or not all(isinstance(q, str) for q in queries.values()):
            raise HubError(400, "ArgumentInvalid", "metrics.queries must map names to query strings")
        for name, text in queries.items():
            try:
                parse_query(text)
            except QuerySyntaxError as exc:
                raise HubError(400, "ArgumentInvalid", f"Invalid metric query {name}: {exc}") from exc
        content = body.get("content")
        if not isinstance(content, Mapping):
            raise HubError(400, "InvalidConfigurationContent", "content is required")
        content = _normalized_content(content)
        _check_content(content)
        schema_version = body.get("schemaVersion") or "1.0"
        return {
            "labels": dict(labels),
            "priority": priority,
            "target_condition": condition_text,
            "target": target,
            "targets_nothing": not condition_text.strip(),
            "metric_queries": dict(queries),
            "content": copy.deepcopy(content),
            "schema_version": str(schema_version),
        }

    async def _put_configuration(self, request: Request, body: Any, configuration_id: str) -> Response:
        if not _CONFIG_ID.fullmatch(configuration_id):
            raise HubError(
                400,
                "ArgumentInvalid",
                "A configuration id is up to 128 lowercase letters, digits and -:+%_#*?!(),=@;'",
            )
        if_match = _parse_if_match(_lower(request.headers).get("if-match"))
        existing = self._configs.get(configuration_id)
        now = self.clock()
        if existing is None:
            if if_match is not None:
                raise HubError(412, "PreconditionFailed", f"Configuration {configuration_id} does not exist")
            fields = self._validated(configuration_id, body)
            if len(self._configs) >= self.max_configurations:
                raise HubError(
                    413,
                    "ConfigurationCountLimitExceeded",
                    # The hub's own words (as reported from a real hub), kept for recognisability.
                    f"Number of deployments exceed the maximum quota {self.max_configurations}"
                    " for this IotHub.",
                )
            etag = self._next_etag()
            config = _Configuration(
                id=configuration_id, created=now, updated=now, etag=etag, sequence=self._sequence, **fields
            )
            self._configs[configuration_id] = config
            status = 201
        else:
            if if_match is None:
                raise HubError(
                    409,
                    "ConfigurationAlreadyExists",
                    f"Configuration with id '{configuration_id}' already exist on IotHub.",
                )
            if if_match != "*" and if_match != existing.etag:
                raise HubError(412, "PreconditionFailed", "The configuration's etag does not match If-Match")
            fields = self._validated(configuration_id, body)
            if not _same(fields["content"], existing.content):
                raise HubError(400, "InvalidConfigurationContent", "Configuration content cannot be updated")
            existing.labels = fields["labels"]
            existing.priority = fields["priority"]
            existing.target_condition = fields["target_condition"]
            existing.target = fields["target"]
            existing.targets_nothing = fields["targets_nothing"]
            existing.metric_queries = fields["metric_queries"]
            existing.updated = now
            existing.etag = self._next_etag()
            config = existing
            status = 200
        self._reconcile()
        doc = self._configuration_json(config)
        return _json(doc, status, {"ETag": f'"{doc["etag"]}"'})

    async def _delete_configuration(self, request: Request, body: Any, configuration_id: str) -> Response:
        config = self._configuration(configuration_id)
        if_match = _parse_if_match(_lower(request.headers).get("if-match"))
        if if_match not in (None, "*") and if_match != config.etag:
            raise HubError(412, "PreconditionFailed", "The configuration's etag does not match If-Match")
        del self._configs[configuration_id]
        self._reconcile()
        return Response(status_code=204)

    async def _test_queries(self, request: Request, body: Any) -> Response:
        if not isinstance(body, Mapping):
            raise HubError(400, "ArgumentInvalid", "The body must be a JSON object")
        target_error = ""
        condition = body.get("targetCondition") or ""
        if condition.strip():
            try:
                parse_condition(condition)
            except QuerySyntaxError as exc:
                target_error = str(exc)
        metric_errors: dict[str, str] = {}
        for name, text in (body.get("customMetricQueries") or {}).items():
            try:
                parse_query(text)
            except QuerySyntaxError as exc:
                metric_errors[name] = str(exc)
        return _json({"targetConditionError": target_error, "customMetricQueryErrors": metric_errors}, 200)

    async def _apply_content(self, request: Request, body: Any, device_id: str) -> Response:
        device = self._device(device_id)
        if not isinstance(body, Mapping):
            raise HubError(400, "InvalidConfigurationContent", "The content must be a JSON object")
        content = _normalized_content(body)
        if not device.edge:
            raise HubError(400, "ArgumentInvalid", f"Device {device_id} is not an IoT Edge device")
        modules = content.get("modulesContent")
        if set(content) != {"modulesContent"} or not isinstance(modules, Mapping):
            raise HubError(
                400,
                "InvalidConfigurationContent",
                "The content provided for configuration is invalid. Please check and try again",
            )
        _check_content(content, single_device=True)
        for module_id, value in modules.items():
            self._set_desired(self._module_or_new(device, module_id), value["properties.desired"])
        self._reconcile([device])
        return Response(status_code=204)

    def _module_or_new(self, device: _Device, module_id: str) -> _Twin:
        module = device.modules.get(module_id)
        if module is None:
            now = self.clock()
            module = _Twin(device.twin.device_id, module_id, desired_updated=now, reported_updated=now)
            device.modules[module_id] = module
        return module

    # ----- which configuration applies where -----------------------------------------------------

    def _targets(self, config: _Configuration, device: _Device, document: Mapping[str, Any]) -> bool:
        if config.targets_nothing or (config.is_edge and not device.edge):
            return False
        return evaluate(config.target, document) is True

    def _reconcile(self, devices: Iterable[_Device] | None = None) -> None:
        """Work out which configurations target each device (all, or those given) and which apply there.

        The hub does this continuously; the emulator does it after every change, so tests see the
        settled state at once. Content is written to twins only when what applies to a device changes.
        """
        ranked = sorted(self._configs.values(), key=lambda c: (c.priority, c.sequence), reverse=True)
        for device in self._devices.values() if devices is None else devices:
            document = self._device_twin_json(device)
            targeting = [config for config in ranked if self._targets(config, device, document)]
            self._apply_device_configs(device, [c for c in targeting if not c.is_edge])
            if device.edge:
                self._apply_edge_deployments(device, [c for c in targeting if c.is_edge])

    def _apply_device_configs(self, device: _Device, targeting: list[_Configuration]) -> None:
        winner = targeting[0] if targeting else None
        device.twin.configurations = {
            config.id: "Applied" if config is winner else "Targeted" for config in targeting
        }
        winner_id = winner.id if winner else None
        if winner is not None and winner_id != device.applied_device_config:
            desired = copy.deepcopy(device.twin.desired)
            for key, value in winner.content.get("deviceContent", {}).items():
                if key == "properties.desired":
                    desired = copy.deepcopy(value)
                else:
                    _set_path(desired, key.split(".")[2:], value)
            self._set_desired(device.twin, desired)
        device.applied_device_config = winner_id

    def _apply_edge_deployments(self, device: _Device, targeting: list[_Configuration]) -> None:
        bases = [config for config in targeting if not config.is_layered]
        base = bases[0] if bases else None
        layered = [
            config
            for config in targeting
            if config.is_layered and base is not None and config.priority > base.priority
        ]
        applied = {config.id for config in layered} | ({base.id} if base else set())
        agent = self._module_or_new(device, EDGE_AGENT)
        agent.configurations = {
            config.id: "Applied" if config.id in applied else "Targeted" for config in targeting
        }
        # Layers apply lowest priority first (on a tie the older first), so the strongest one writes last.
        layers = sorted(layered, key=lambda c: (c.priority, c.sequence))
        key = ((base.id,) if base else ()) + tuple(config.id for config in layers)
        if base is None or key == device.applied_edge:
            device.applied_edge = key
            return
        desired: dict[str, dict[str, Any]] = {
            module_id: copy.deepcopy(value["properties.desired"])
            for module_id, value in base.content["modulesContent"].items()
        }
        for layer in layers:
            for module_id, value in layer.content["modulesContent"].items():
                for path, setting in value.items():
                    parts = path.split(".")[2:]
                    if parts:
                        _set_path(desired.setdefault(module_id, {}), parts, setting)
                    else:
                        desired[module_id] = copy.deepcopy(setting)
        for module_id, properties in desired.items():
            self._set_desired(self._module_or_new(device, module_id), properties)
        device.applied_edge = key

    # ----- direct methods ------------------------------------------------------------------------

    async def _invoke_method(self, request: Request, body: Any, device_id: str) -> Response:
        device = self._device(device_id, json_shape=True)
        if (
            not isinstance(body, Mapping)
            or not isinstance(body.get("methodName"), str)
            or not body["methodName"]
        ):
            raise HubError(400, "ArgumentInvalid", "methodName is required", json_shape=True)
        response_timeout = body.get("responseTimeoutInSeconds")
        connect_timeout = body.get("connectTimeoutInSeconds")
        for name, value, low in (
            ("responseTimeoutInSeconds", response_timeout, 5),
            ("connectTimeoutInSeconds", connect_timeout, 0),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 300
            ):
                raise HubError(400, "ArgumentInvalid", f"{name} must be {low}..300", json_shape=True)
        name = body["methodName"]
        payload = body.get("payload")
        if not device.online or not device.handlers:
            self.method_calls.append(
                MethodCall(device_id, name, payload, response_timeout, connect_timeout, False)
            )
            raise HubError(
                404,
                "DeviceNotOnline",
                "Timed out waiting for device to connect.",
                json_shape=True,
                info={"timeout": _timespan(connect_timeout or 0)},
            )
        self.method_calls.append(
            MethodCall(device_id, name, payload, response_timeout, connect_timeout, True)
        )
        handler = device.handlers.get(name)
        if handler is None:
            return _json({"status": 501, "payload": None}, 200)
        try:
            result = handler(copy.deepcopy(payload))
            if inspect.isawaitable(result):
                result = await result
        except TimeoutError as exc:
            raise HubError(
                504,
                "GatewayTimeout",
                "Timed out waiting for the response from device.",
                json_shape=True,
                info={"timeout": _timespan(response_timeout or 30)},
            ) from exc
        status, answer = result
        device.last_activity = self.clock()
        return _json({"status": status, "payload": answer}, 200)


def _check_content(content: Mapping[str, Any], *, single_device: bool = False) -> None:
    """A configuration's content: exactly one kind, and every key under properties.desired."""
    kinds = [kind for kind in ("deviceContent", "modulesContent", "moduleContent") if content.get(kind)]
    if len(kinds) != 1 or set(content) - {"deviceContent", "modulesContent", "moduleContent"}:
        raise HubError(
            400, "InvalidConfigurationContent", "Exactly one of deviceContent, modulesContent, moduleContent"
        )
    kind = kinds[0]
    if kind == "modulesContent":
        modules = content[kind]
        if not isinstance(modules, Mapping):
            raise HubError(400, "InvalidConfigurationContent", "modulesContent must be a JSON object")
        for module_id, value in modules.items():
            if not isinstance(value, Mapping) or not value:
                raise HubError(
                    400, "InvalidConfigurationContent", f"modulesContent.{module_id} must be an object"
                )
            for key in value:
                if key != "properties.desired" and not key.startswith("properties.desired."):
                    raise HubError(
                        400,
                        "InvalidConfigurationContent",
                        f"{module_id}: {key} is not under properties.desired",
                    )
            if "properties.desired" in value and not isinstance(value["properties.desired"], Mapping):
                raise HubError(
                    400, "InvalidConfigurationContent", f"{module_id}: properties.desired is not an object"
                )
        layered = any(key != "properties.desired" for value in modules.values() for key in value)
        if single_device and layered:
            raise HubError(400, "InvalidConfigurationContent", "A device's modules content must be complete")
        if not layered and not {EDGE_AGENT, EDGE_HUB} <= set(modules):
            # Only layered deployments may leave out the system modules.
            raise HubError(
                400, "InvalidConfigurationContent", "A deployment must configure $edgeAgent and $edgeHub"
            )
    else:
        section = content[kind]
        if not isinstance(section, Mapping):
            raise HubError(400, "InvalidConfigurationContent", f"{kind} must be a JSON object")
        for key in section:
            if key != "properties.desired" and not key.startswith("properties.desired."):
                raise HubError(
                    400, "InvalidConfigurationContent", f"{kind}: {key} is not under properties.desired"
                )


def _timespan(seconds: int) -> str:
    """A .NET TimeSpan as the hub writes it in error details: 00:05:00."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _json(payload: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(payload),
        status_code=status,
        headers={**(headers or {}), "Content-Type": "application/json; charset=utf-8"},
    )
