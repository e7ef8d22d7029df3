"""Fixtures shared by every suite: real SQLite files and a real PostgreSQL schema per test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("FLEETLIFT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def _start_postgres() -> None:
    """Start the machine's PostgreSQL cluster the way the environment documents it."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return
    for version in sorted(os.listdir("/etc/postgresql")):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )
    for _ in range(30):
        if _pg_reachable():
            return
        time.sleep(1)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL schema that lives for the test session."""
    if not _pg_reachable():
        _start_postgres()
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL leg skipped: cannot reach or start a server at {PG_ADMIN_URL}")
    schema = f"fltest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in PG_ADMIN_URL else "?"
    yield f"{PG_ADMIN_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'fleetlift.db'}"


@contextmanager
def migrated_schema(label: str) -> Iterator[str]:
    """A PostgreSQL schema of the caller's own, migrated, dropped afterwards; its URL. For tests
    whose work spans tenants, or whose background loops must not meet other tests' apps."""
    from fleetlift.migrate import upgrade

    schema = f"fltest_{label}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in PG_ADMIN_URL else "?"
    url = f"{PG_ADMIN_URL}{separator}options=-csearch_path%3D{schema}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def private_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of this test's own, on SQLite and on PostgreSQL (a schema dropped
    afterwards): for tests whose queries span every tenant, which other tests' rows would disturb."""
    from fleetlift.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleetlift.db'}"
        upgrade(url)
        yield url
        return
    request.getfixturevalue("pg_url")  # starts PostgreSQL, or skips when it cannot
    with migrated_schema("own") as url:
        yield url
