"""The committed OpenAPI document is the generated one, valid, and complete for every operation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from fleetlift.openapi import document, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return document()


def test_committed_document_is_up_to_date() -> None:
    committed = (ROOT / "openapi.yaml").read_text()
    assert committed == render(), "openapi.yaml is stale: run `make openapi` and commit it"


def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(yaml.safe_load(render()))


def test_api_version_is_in_path_and_info(spec: dict[str, Any]) -> None:
    assert spec["info"]["version"].startswith("1.")
    management = [path for path in spec["paths"] if path not in ("/healthz", "/readyz", "/metrics")]
    assert management and all(
        path.startswith(("/api/v1/", "/api/device/v1/", "/downloads/v1/", "/tuf/v1/")) for path in management
    )


def test_every_management_operation_is_fully_described(spec: dict[str, Any]) -> None:
    problems = []
    for path, item in spec["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            if not operation.get("summary") or not operation.get("description"):
                problems.append(f"{where}: summary and description")
            if operation.get("security") != [{"bearerAuth": []}]:
                problems.append(f"{where}: security requirement")
            if not operation.get("x-fleetlift-roles"):
                problems.append(f"{where}: roles")
            responses = operation["responses"]
            for code in ("401", "403"):
                content = responses.get(code, {}).get("content", {})
                if "application/problem+json" not in content:
                    problems.append(f"{where}: {code} problem response")
            if "422" in responses:
                problems.append(f"{where}: 422 is never answered")
            if not _has_example(spec, operation):
                problems.append(f"{where}: no example in its body or its success response")
            body = operation.get("requestBody")
            if body and "application/json" in body["content"]:
                schema = body["content"]["application/json"]["schema"]
                name = schema["$ref"].rsplit("/", 1)[-1]
                if not spec["components"]["schemas"][name].get("examples"):
                    problems.append(f"{where}: request example")
                if "400" not in responses:
                    problems.append(f"{where}: 400 response")
    assert not problems, "\n".join(problems)


def test_problem_schema_and_security_scheme(spec: dict[str, Any]) -> None:
    components = spec["components"]
    assert set(components["schemas"]["Problem"]["required"]) >= {"type", "title", "status", "detail"}
    assert components["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": components["securitySchemes"]["bearerAuth"]["description"],
    }


def _schema_has_example(spec: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> bool:
    if depth > 4:
        return False
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("examples") or schema.get("format") == "binary":
        return True  # bytes need no example: the operation's parameters carry theirs
    nested = [schema.get("items"), *schema.get("properties", {}).values(), *schema.get("anyOf", [])]
    return any(isinstance(n, dict) and _schema_has_example(spec, n, depth + 1) for n in nested)


def _has_example(spec: dict[str, Any], operation: dict[str, Any]) -> bool:
    schemas = []
    body = operation.get("requestBody")
    if body:
        schemas += [media["schema"] for media in body["content"].values()]
    for code, response in operation["responses"].items():
        if code.startswith("2"):
            schemas += [
                media["schema"] for media in response.get("content", {}).values() if "schema" in media
            ]
    # An operation with nothing to show (DELETE: no body, 204) has nothing to exemplify.
    return not schemas or any(_schema_has_example(spec, schema) for schema in schemas)
