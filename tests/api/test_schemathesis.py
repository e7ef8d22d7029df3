"""Property-based fuzzing of the whole management API from its own OpenAPI document, as admin:
no answer may be a 5xx, and every answer must match the documented status codes and schemas."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.migrate import upgrade

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(data_dir=data_dir, log_level="CRITICAL")
    upgrade(app_settings.resolved_database_url)
    app = create_app(app_settings)
    with __import__("fastapi.testclient", fromlist=["TestClient"]).TestClient(app):
        yield app  # the lifespan created the default tenant


@pytest.fixture(scope="module")
def admin_token(fuzzed_app: FastAPI) -> str:
    issuer = local_issuer(fuzzed_app.state.settings)
    return issuer.issue("fuzzer", frozenset({Role.ADMIN}), timedelta(hours=1))


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_holds_its_contract(case: schemathesis.Case, admin_token: str) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {admin_token}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
