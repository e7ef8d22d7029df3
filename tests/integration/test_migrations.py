"""Migrations build exactly the tables the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from fleetlift.db import make_engine
from fleetlift.migrate import upgrade
from fleetlift.models import metadata

TABLES = {
    "tenants",
    "devices",
    "releases",
    "deployments",
    "deployment_devices",
    "audit_log",
    "artifacts",
    "blobs",
    "release_artifacts",
    "registry_credentials",
    "notifications",
    "deployment_logs",
    "enrollment_tokens",
    "events",
    "webhook_subscriptions",
    "webhook_deliveries",
    "alembic_version",
}


def _check(url: str) -> None:
    upgrade(url)
    upgrade(url)  # idempotent
    engine = make_engine(url)
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) >= TABLES
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": False}), metadata
        )
        assert diff == [], f"models and migrations disagree: {diff}"
        for table in TABLES - {"tenants", "alembic_version"}:
            columns = {c["name"] for c in inspect(connection).get_columns(table)}
            assert "tenant_id" in columns, f"{table} has no tenant_id"
    engine.dispose()


def test_sqlite_migrations_match_models(sqlite_url: str) -> None:
    _check(sqlite_url)


@pytest.mark.postgres
def test_postgres_migrations_match_models(pg_url: str) -> None:
    _check(pg_url)
