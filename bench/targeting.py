"""Benchmark: create a deployment that targets a fleet by condition, then page through it.

Seeds N devices with tags and reported properties (set-based SQL), creates an active deployment
through the service layer (the same code the API runs), pages through its per-device list, and
prints the figures. Runs against a throwaway SQLite file and/or a throwaway PostgreSQL schema.

    python bench/targeting.py                         # 100,000 devices, SQLite and PostgreSQL
    python bench/targeting.py --devices 1000000 --backend postgresql
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from fleetlift.auth import Role
from fleetlift.context import Caller
from fleetlift.db import make_engine, make_session_factory, transaction
from fleetlift.deployments import service as deployments
from fleetlift.deployments.schemas import DeploymentCreate, Target
from fleetlift.migrate import upgrade
from fleetlift.pagination import PageRequest
from fleetlift.releases import service as releases
from fleetlift.releases.schemas import ReleaseCreate
from fleetlift.tenants import repository as tenants

TENANT = "bench"
DEFAULT_CONDITION = "tags.fleet = 'main' AND properties.reported.arch IN ['arm64', 'armv7']"
PG_URL = os.environ.get("FLEETLIFT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_SEED_POSTGRES = """
INSERT INTO devices (tenant_id, id, name, device_type, architecture, tags, reported, status,
                     created_at, updated_at, row_version)
SELECT :tenant, 'dev-' || lpad(n::text, 8, '0'), 'device ' || n, 'gw-x1',
       CASE WHEN n % 4 = 0 THEN 'armv7' ELSE 'arm64' END,
       jsonb_build_object('fleet', 'main', 'env', (ARRAY['prod','staging','dev'])[1 + n % 3],
                          'site', 'site-' || (n % 100), 'ring', n % 10),
       jsonb_build_object('arch', CASE WHEN n % 4 = 0 THEN 'armv7' ELSE 'arm64' END,
                          'disk_free_mb', 1000 + n % 5000),
       'accepted', now(), now(), 1
FROM generate_series(1, :count) AS n
"""

_SEED_SQLITE = """
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :count)
INSERT INTO devices (tenant_id, id, name, device_type, architecture, tags, reported, status,
                     created_at, updated_at, row_version)
SELECT :tenant, 'dev-' || substr('00000000' || n, -8, 8), 'device ' || n, 'gw-x1',
       CASE WHEN n % 4 = 0 THEN 'armv7' ELSE 'arm64' END,
       json_object('fleet', 'main', 'env', CASE n % 3 WHEN 0 THEN 'prod' WHEN 1 THEN 'staging' ELSE 'dev' END,
                   'site', 'site-' || (n % 100), 'ring', n % 10),
       json_object('arch', CASE WHEN n % 4 = 0 THEN 'armv7' ELSE 'arm64' END,
                   'disk_free_mb', 1000 + n % 5000),
       'accepted', datetime('now'), datetime('now'), 1
FROM seq
"""


@contextmanager
def postgres_schema() -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def database_bytes(engine: Engine) -> int:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            pages = connection.execute(text("PRAGMA page_count")).scalar_one()
            size = connection.execute(text("PRAGMA page_size")).scalar_one()
            return int(pages) * int(size)
        return int(
            connection.execute(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def run(url: str, devices: int, condition: str, page_size: int) -> dict[str, float]:
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    caller = Caller.of(subject="bench", roles=frozenset({Role.ADMIN}), tenant_id=TENANT, request_id="bench")
    with transaction(sessions) as session:
        tenants.ensure(session, tenant_id=TENANT, name=TENANT)

    started = time.perf_counter()
    seed = _SEED_POSTGRES if engine.dialect.name == "postgresql" else _SEED_SQLITE
    with engine.begin() as connection:
        connection.execute(text(seed), {"tenant": TENANT, "count": devices})
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE devices"))
    seed_seconds = time.perf_counter() - started

    with sessions() as session:
        release = releases.create(
            session=session,
            caller=caller,
            data=ReleaseCreate.model_validate(
                {
                    "name": "bench",
                    "version": "1.0.0",
                    "payloads": [{"type": "container", "name": "app", "image": "registry.local/bench/app:1"}],
                    "device_types": ["gw-x1"],
                }
            ),
        )

    started = time.perf_counter()
    with sessions() as session:
        view = deployments.create(
            session=session,
            caller=caller,
            data=DeploymentCreate(name="bench", release_id=release.id, target=Target(condition=condition)),
        )
    create_seconds = time.perf_counter() - started
    assigned = sum(view.counts.values())

    started = time.perf_counter()
    paged = 0
    cursor: list[str] | None = None
    with sessions() as session:
        while True:
            page = deployments.list_devices(
                session=session,
                caller=caller,
                deployment_id=view.deployment.id,
                state=None,
                page=PageRequest(limit=page_size, after=cursor),
            )
            paged += len(page.items)
            if page.next_cursor is None:
                break
            cursor = [page.items[-1].device_id]
    page_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with sessions() as session:
        deployments.get(session=session, caller=caller, deployment_id=view.deployment.id)
    status_seconds = time.perf_counter() - started

    size = database_bytes(engine)
    engine.dispose()
    assert paged == assigned, f"paged {paged} of {assigned} devices"
    return {
        "devices": devices,
        "assigned": assigned,
        "seed_s": seed_seconds,
        "create_deployment_s": create_seconds,
        "page_all_s": page_seconds,
        "pages": -(-paged // page_size),
        "status_s": status_seconds,
        "db_mb": size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--condition", default=DEFAULT_CONDITION)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    print(f"condition: {args.condition}")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as scratch:
                figures = run(
                    f"sqlite:///{Path(scratch) / 'bench.db'}", args.devices, args.condition, args.page_size
                )
        else:
            with postgres_schema() as url:
                figures = run(url, args.devices, args.condition, args.page_size)
        print(
            f"{backend:<10} devices={figures['devices']:,} assigned={figures['assigned']:,} "
            f"seed={figures['seed_s']:.1f}s create_deployment={figures['create_deployment_s']:.2f}s "
            f"page_all={figures['page_all_s']:.2f}s ({figures['pages']} pages of {args.page_size}) "
            f"status={figures['status_s']:.3f}s db={figures['db_mb']:.0f}MB"
        )


if __name__ == "__main__":
    main()
