"""A checker of HTTP requests against the official description of IoT Hub's service REST API.

The description (Swagger 2.0, from Azure's SDK repository, MIT licensed) is test data outside the project:
``../shared/specs/azure-iothub-service-2021-04-12.json`` next to the checkout, or the file that
``FLEETLIFT_IOTHUB_SPEC`` names. It is read here and never copied into the project.

:meth:`IotHubSpec.violations` lists everything a recorded :class:`httpx.Request` does that the description
does not allow: a path no template matches, a method the path does not declare, an undeclared or missing
query parameter, an ``api-version`` other than the description's, a missing required header, a body where
none is declared (or none where one is required), a content type the operation does not consume, and a
JSON body that does not validate against the body parameter's schema (``#/definitions/...`` resolved).

Schemas are applied as JSON Schema draft 4 says, strictly: where the description declares ``type:
object`` (tag values, desired properties, a direct method's payload), only a JSON object passes.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema

SPEC_NAME = "azure-iothub-service-2021-04-12.json"
# Next to the checkout (../shared/specs), and where the project's machines keep it (CI clones the
# project elsewhere, with /work/shared beside the working copy of record).
CANDIDATES = (
    Path(__file__).resolve().parents[3] / "shared" / "specs" / SPEC_NAME,
    Path("/work/shared/specs") / SPEC_NAME,
)
DEFAULT_PATH = CANDIDATES[0]


def spec_path() -> Path:
    """Where the official description is: ``FLEETLIFT_IOTHUB_SPEC``, else the first place that has it."""
    named = os.environ.get("FLEETLIFT_IOTHUB_SPEC")
    if named:
        return Path(named)
    return next((path for path in CANDIDATES if path.exists()), DEFAULT_PATH)


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


class SpecViolation(AssertionError):
    """A request the official description does not allow."""


@dataclass(frozen=True)
class Operation:
    """One method at one path template, with its parameters resolved."""

    template: str
    method: str
    operation_id: str
    parameters: tuple[dict[str, Any], ...]
    consumes: tuple[str, ...]

    def parameters_in(self, location: str) -> dict[str, dict[str, Any]]:
        """The declared parameters of one location (``path``, ``query``, ``header``, ``body``) by name."""
        return {p["name"]: p for p in self.parameters if p.get("in") == location}


@dataclass
class Checked:
    """What a valid request turned out to be."""

    operation: Operation
    path_parameters: dict[str, str] = field(default_factory=dict)
    body: Any = None


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


class IotHubSpec:
    """The official description, loaded once, and the checks against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.version: str = document["info"]["version"]
        self.definitions: dict[str, Any] = document.get("definitions", {})
        self._global_consumes = tuple(document.get("consumes", ()))

    @classmethod
    def load(cls, path: Path | None = None) -> IotHubSpec:
        """Read the description from ``path`` (default: :func:`spec_path`)."""
        return cls(json.loads((path or spec_path()).read_text(encoding="utf-8")))

    # ------------------------------------------------------------------ lookups

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        reference = node.get("$ref")
        if not reference:
            return node
        if not reference.startswith("#/"):
            raise ValueError(f"external reference {reference!r} is not supported")
        target: Any = self.document
        for part in reference[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return self._resolve(target)

    def templates(self) -> list[str]:
        """Every path template the description declares."""
        return list(self.document["paths"])

    def operations(self) -> Iterable[Operation]:
        """Every operation the description declares."""
        for template, item in self.document["paths"].items():
            for method in item:
                if method in {"get", "put", "post", "delete", "patch", "head", "options"}:
                    yield self.operation(template, method)

    def operation(self, template: str, method: str) -> Operation:
        """The operation at ``template`` and ``method`` (lower case), with its parameters resolved."""
        item = self.document["paths"][template]
        declared = item[method]
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        # Path-level parameters apply to every method; the operation's own override them by name and place.
        for raw in [*item.get("parameters", []), *declared.get("parameters", [])]:
            parameter = self._resolve(raw)
            merged[(parameter["name"], parameter["in"])] = parameter
        return Operation(
            template=template,
            method=method,
            operation_id=declared.get("operationId", ""),
            parameters=tuple(merged.values()),
            consumes=tuple(declared.get("consumes", self._global_consumes)),
        )

    def match(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The template a raw (percent-encoded) path matches, and its decoded path parameters.

        As OpenAPI says, concrete segments win over templated ones: ``/devices/query`` is that path,
        not ``/devices/{id}`` with the ID ``query``.
        """
        wanted = _segments(path)
        best: tuple[tuple[int, ...], str, dict[str, str]] | None = None
        for template in self.templates():
            parts = _segments(template)
            if len(parts) != len(wanted):
                continue
            values: dict[str, str] = {}
            rank: list[int] = []
            for part, segment in zip(parts, wanted, strict=True):
                if part.startswith("{") and part.endswith("}"):
                    if not segment:
                        break
                    values[part[1:-1]] = urllib.parse.unquote(segment)
                    rank.append(1)
                elif part == segment:
                    rank.append(0)
                else:
                    break
            else:
                if best is None or tuple(rank) < best[0]:
                    best = (tuple(rank), template, values)
        return None if best is None else (best[1], best[2])

    # ------------------------------------------------------------------ checks

    def _scalar_problem(self, parameter: dict[str, Any], value: str) -> str | None:
        kind = parameter.get("type", "string")
        if kind == "integer":
            try:
                int(value)
            except ValueError:
                return f"is not an integer: {value!r}"
        elif kind == "boolean" and value not in ("true", "false"):
            return f"is not a boolean: {value!r}"
        if "enum" in parameter and value not in [str(item) for item in parameter["enum"]]:
            return f"is not one of {parameter['enum']}: {value!r}"
        return None

    def body_errors(self, schema: dict[str, Any], body: Any) -> list[str]:
        """Where ``body`` breaks ``schema`` (JSON Schema draft 4, ``#/definitions`` of the description)."""
        document = {"allOf": [schema], "definitions": self.definitions}
        validator = jsonschema.Draft4Validator(document, format_checker=_FORMATS)
        return [
            f"body{''.join(f'[{part!r}]' for part in error.absolute_path)}: {error.message}"
            for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
        ]

    def check(self, request: httpx.Request) -> tuple[Checked | None, list[str]]:
        """The operation a request is, and every way it breaks the description (empty when it does not)."""
        problems: list[str] = []
        raw_path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        found = self.match(raw_path)
        if found is None:
            return None, [f"no path template matches {raw_path}"]
        template, path_values = found
        method = request.method.lower()
        if method not in self.document["paths"][template]:
            return None, [f"{request.method} is not declared for {template}"]
        operation = self.operation(template, method)
        checked = Checked(operation, path_values)

        for name, parameter in operation.parameters_in("path").items():
            value = path_values.get(name)
            if value is None:
                problems.append(f"path parameter {name} is missing")
            elif (problem := self._scalar_problem(parameter, value)) is not None:
                problems.append(f"path parameter {name} {problem}")

        declared_query = operation.parameters_in("query")
        sent = request.url.params
        for name in sent:
            if name not in declared_query:
                problems.append(f"query parameter {name!r} is not declared for {request.method} {template}")
            elif len(sent.get_list(name)) > 1:
                problems.append(f"query parameter {name!r} is repeated")
        for name, parameter in declared_query.items():
            if name not in sent:
                if parameter.get("required"):
                    problems.append(f"required query parameter {name!r} is missing")
                continue
            if (problem := self._scalar_problem(parameter, sent[name])) is not None:
                problems.append(f"query parameter {name!r} {problem}")
        if "api-version" in sent and sent["api-version"] != self.version:
            problems.append(f"api-version is {sent['api-version']!r}, the description is {self.version!r}")

        for name, parameter in operation.parameters_in("header").items():
            if name not in request.headers:
                if parameter.get("required"):
                    problems.append(f"required header {name!r} is missing")
                continue
            if (problem := self._scalar_problem(parameter, request.headers[name])) is not None:
                problems.append(f"header {name!r} {problem}")

        body_parameters = list(operation.parameters_in("body").values())
        content = request.content
        if not content:
            if any(p.get("required") for p in body_parameters):
                problems.append(f"{request.method} {template} requires a body and none was sent")
            return checked, problems
        if not body_parameters:
            problems.append(f"{request.method} {template} declares no body, but one was sent")
            return checked, problems
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if operation.consumes and media_type not in [c.lower() for c in operation.consumes]:
            problems.append(f"content type {media_type!r} is not among {list(operation.consumes)}")
        try:
            checked.body = json.loads(content)
        except ValueError:
            problems.append("the body is not JSON")
            return checked, problems
        problems.extend(self.body_errors(body_parameters[0].get("schema", {}), checked.body))
        return checked, problems

    def violations(self, request: httpx.Request) -> list[str]:
        """Every way ``request`` breaks the description (empty when it does not)."""
        return self.check(request)[1]

    def validate(self, request: httpx.Request) -> Checked:
        """The checked request, or :class:`SpecViolation` listing every problem."""
        checked, problems = self.check(request)
        if problems or checked is None:
            raise SpecViolation(
                f"{request.method} {request.url.raw_path.decode('ascii')}: " + "; ".join(problems)
            )
        return checked
