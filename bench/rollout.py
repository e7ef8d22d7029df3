"""Benchmark: a rollout of 100,000 simulated devices from start to the last success, in waves, on
PostgreSQL.

Setup (not measured): a fresh PostgreSQL database (dropped at the end, even on error), migrated;
N accepted devices inserted set-based; two releases inserted as published; one device token per
device minted with the server's own device-token key (so the devices skip the signed
authentication request: what is measured is the rollout, not admission). Then `fleetlift serve
--workers W` on that database, its reconciler in every worker.

The devices are a lean asyncio load in this process (raw HTTP/1.1 over a pool of keep-alive
connections, not fleetlift-sim, whose httpx client costs too much CPU for 100,000 devices on two
cores). Each device polls `GET /api/device/v1/deployments/next` on a fixed cadence (`--poll-interval`,
its first poll at a random point of the first interval); when it is offered the update it reports
`downloading`, waits half its install time, reports `installing`, waits the other half, reports
`succeeded` (install time `--install-time` x0.5-1.5), then goes on polling.

1. Warm-up: one poll interval of polls with no deployment (every server process checks each token
   once), then `--idle-seconds` more of the same, measured: the server's CPU per poll.
2. The rollout: `POST /api/v1/deployments` with waves (`--waves`, percentages; the rest is the last
   wave; no soak, no approval) until the last device reported `succeeded`.

Figures:
- wall time from the deployment's creation to the last success;
- server CPU seconds (all uvicorn processes, from /proc) per 1,000 devices, in total and without the
  background polling (polls during the rollout x the idle CPU per poll);
- PostgreSQL backends' CPU (the database's own connections, sampled from pg_stat_activity and /proc);
- database work per device: transactions (pg_stat_database xact_commit + xact_rollback of the
  benchmark's database) and SQL statements the server sent through SQLAlchemy (counted in each
  server process by a `sitecustomize` hook; the poll's hot-path SELECT runs on the driver's own
  cursor and is not in that count, so polls are listed beside it);
- the devices' own share of the wall time: for each wave, the longest (wait for the device's next
  scheduled poll after the wave opened + its install time) over the wave's devices, summed over
  the waves. What is left is the server's: answering, recording reports, reconciling.

    python bench/rollout.py                                    # 100,000 devices, 4 waves, 2 workers
    python bench/rollout.py --devices 10000 --poll-interval 20 --install-time 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fleetlift.db import make_engine, make_session_factory, transaction
from fleetlift.device_api.tokens import DeviceTokens
from fleetlift.ids import new_id
from fleetlift.migrate import upgrade
from fleetlift.releases.models import Release
from fleetlift.tenants import repository as tenants
from machine import free_port, machine

BIN = Path(sys.executable).parent
TENANT = "default"
DEVICE_API = "/api/device/v1"
PG_URL = os.environ.get("FLEETLIFT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_SEED = """
INSERT INTO devices (tenant_id, id, name, device_type, architecture, tags, reported, status,
                     identity, created_at, updated_at, row_version)
SELECT :tenant, 'dev-' || lpad(n::text, 8, '0'), 'device ' || n, 'gw-x1', 'arm64',
       jsonb_build_object('fleet', 'bench'), '{}'::jsonb, 'accepted', '{}'::jsonb, now(), now(), 1
FROM generate_series(0, :count - 1) AS n
"""

# Counts statements in every server process (see the file).
SITECUSTOMIZE = Path(__file__).with_name("rollout_sitecustomize.py")


# -- processes' CPU, from /proc --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """The process and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in descendants(pid))


class BackendCpu:
    """CPU of the PostgreSQL backends connected to the benchmark's database, sampled every second
    (a backend's CPU is read while it lives; the server's pools keep theirs for the whole run)."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.database = database
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        with self.engine.connect() as connection:
            pids = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": self.database},
            ).scalars()
            for pid in pids:
                value = cpu_seconds(pid)
                if value is not None:
                    self.first.setdefault(pid, value)
                    self.last[pid] = value

    def start(self) -> None:
        self.sample()
        # Backends seen now count from now on; backends born later count from birth.
        self.first = dict(self.last)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            self.sample()

    def stop(self) -> float:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sample()
        self.engine.dispose()
        born = {pid: 0.0 for pid in self.last if pid not in self.first}
        return sum(self.last[pid] - {**born, **self.first}[pid] for pid in self.last)


def xacts(admin_url: str, database: str) -> int:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        value = connection.execute(
            text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :name"),
            {"name": database},
        ).scalar_one()
    engine.dispose()
    return int(value)


def statement_counts(directory: Path) -> tuple[int, dict[str, list[float]]]:
    """Statements sent through SQLAlchemy by every server process, and [count, seconds] by kind."""
    total = 0
    kinds: dict[str, list[float]] = {}
    for path in directory.glob("*.json"):
        try:
            document = json.loads(path.read_text())
        except ValueError:  # replaced while read: once more
            time.sleep(0.1)
            document = json.loads(path.read_text())
        total += int(document["count"])
        for key, (count, seconds) in document["kinds"].items():
            entry = kinds.setdefault(key, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
    return total, kinds


# -- setup ----------------------------------------------------------------------------------------


@contextmanager
def fresh_database() -> Iterator[tuple[str, str, str]]:
    """(URL of a new database, its name, the admin URL); dropped at the end, even on error."""
    name = f"bench_rollout_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False), name, PG_URL
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(url: str, devices: int) -> tuple[str, str]:
    """Devices and two published releases; (previous release, new release)."""
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        tenants.ensure(session, tenant_id=TENANT, name=TENANT)
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(text(_SEED), {"tenant": TENANT, "count": devices})
        connection.execute(text("ANALYZE devices"))
    now = datetime.now(UTC)
    ids = []
    with sessions() as session:
        for version in ("1.0.0", "2.0.0"):
            release = Release(
                tenant_id=TENANT,
                id=new_id("rel_"),
                name="edge-stack",
                version=version,
                kind="patch",
                payloads=[
                    {
                        "type": "file",
                        "artifact_id": new_id("art_"),
                        "filename": f"edge-stack-{version}.tar",
                        "size": 8_000_000,
                        "sha256": "0" * 64,
                    }
                ],
                device_types=["gw-x1"],
                architectures=["arm64"],
                notes="",
                validation={
                    "status": "passed",
                    "checked_at": now.isoformat(),
                    "checks": [],
                    "override": None,
                },
                created_by="bench",
                created_at=now,
                updated_at=now,
            )
            session.add(release)
            ids.append(release.id)
        session.commit()
    engine.dispose()
    print(f"  seeded {devices:,} devices in {time.perf_counter() - started:.1f} s", flush=True)
    return ids[0], ids[1]


def mint(data_dir: Path, devices: int) -> list[str]:
    started = time.perf_counter()
    issuer = DeviceTokens(data_dir / "keys" / "device-tokens.pem", timedelta(hours=6), cache_size=0)
    tokens = [issuer.issue(tenant_id=TENANT, device_id=f"dev-{n:08d}")[0] for n in range(devices)]
    print(f"  minted {devices:,} device tokens in {time.perf_counter() - started:.1f} s", flush=True)
    return tokens


# -- the devices ----------------------------------------------------------------------------------


class Connections:
    """A fixed pool of keep-alive HTTP/1.1 connections; one request at a time on each."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.errors: Counter[str] = Counter()

    async def open(self) -> None:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request; (status, body). Transport errors are retried on a new connection."""
        while True:
            reader, writer = await self.idle.get()
            try:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                self.idle.put_nowait((reader, writer))
                return status, body
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                self.errors[type(error).__name__] += 1
                writer.close()
                await asyncio.sleep(0.5)
                try:
                    self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
                except OSError:
                    self.idle.put_nowait((reader, writer))  # retried, and counted, next time

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


@dataclass
class Fleet:
    """The devices' shared state and what they measured."""

    tokens: list[str]
    interval: float
    install: float
    host: str
    connections: Connections
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    offsets: list[float] = field(default_factory=list)  # first poll, seconds after `started`
    installs: list[float] = field(default_factory=list)  # each device's install time
    offered_at: dict[int, float] = field(default_factory=dict)
    succeeded_at: dict[int, float] = field(default_factory=dict)
    polls: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    reports: Counter[str] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)
    last_success: float = 0.0

    def poll_request(self, device: int) -> bytes:
        return (
            f"GET {DEVICE_API}/deployments/next HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.tokens[device]}\r\n\r\n"
        ).encode()

    def report_request(self, device: int, deployment_id: str, status: str) -> bytes:
        body = json.dumps({"status": status}).encode()
        return (
            f"PUT {DEVICE_API}/deployments/{deployment_id}/status HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.tokens[device]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def report(self, device: int, deployment_id: str, status: str) -> None:
        answer, _ = await self.connections.request(self.report_request(device, deployment_id, status))
        self.reports[status] += 1
        if answer >= 300:
            self.refused[answer] += 1

    async def update(self, device: int, deployment_id: str) -> None:
        self.offered_at[device] = time.monotonic()
        await self.report(device, deployment_id, "downloading")
        await asyncio.sleep(self.installs[device] / 2)
        await self.report(device, deployment_id, "installing")
        await asyncio.sleep(self.installs[device] / 2)
        await self.report(device, deployment_id, "succeeded")
        now = time.monotonic()
        self.succeeded_at[device] = now
        self.last_success = max(self.last_success, now)

    async def run(self, device: int) -> None:
        """Poll on a fixed cadence (late polls are sent at once, never skipped)."""
        due = self.started + self.offsets[device]
        done: set[str] = set()
        while True:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            status, body = await self.connections.request(self.poll_request(device))
            self.polls += 1
            self.statuses[status] += 1
            if status == 200:
                deployment_id = json.loads(body)["deployment_id"]
                if deployment_id not in done:
                    done.add(deployment_id)
                    await self.update(device, deployment_id)
            due += self.interval
            while due < time.monotonic() - self.interval:  # an update took several intervals
                due += self.interval


def device_floor(fleet: Fleet, opened: list[float], waves: dict[int, list[int]]) -> list[float]:
    """Per wave: the longest time any of its devices needs on its own from the wave's opening (the
    wait for its next scheduled poll, plus its install time)."""
    floors = []
    for index, wave_open in enumerate(opened):
        longest = 0.0
        since = wave_open - fleet.started
        for device in waves.get(index, []):
            offset = fleet.offsets[device]
            cycles = max(0, -(-(since - offset) // fleet.interval))
            next_poll = offset + cycles * fleet.interval
            longest = max(longest, next_poll - since + fleet.installs[device])
        floors.append(longest)
    return floors


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Figures:
    devices: int
    waves: str
    workers: int
    poll_interval: float
    install_time: float
    wall_seconds: float = 0.0
    device_floor_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    server_cpu_per_poll_ms: float = 0.0
    polls_during_rollout: int = 0
    polls_counted: int = 0  # polls until the counters were read (a few more than the above)
    reports: int = 0
    postgres_cpu_seconds: float = 0.0
    transactions: int = 0
    statements: int = 0
    succeeded: int = 0
    wave_floors: list[float] = field(default_factory=list)
    wave_walls: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    statement_kinds: dict[str, list[float]] = field(default_factory=dict)  # kind: [count, seconds]

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.server_cpu_seconds / self.devices

    @property
    def cpu_per_1000_without_polls(self) -> float:
        polling = self.polls_during_rollout * self.server_cpu_per_poll_ms / 1000
        return 1000 * max(self.server_cpu_seconds - polling, 0.0) / self.devices


def wave_opened_times(url: str, deployment_id: str) -> list[datetime]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT created_at FROM events WHERE deployment_id = :id "
                "AND type = 'deployment.wave_opened' ORDER BY seq"
            ),
            {"id": deployment_id},
        ).scalars()
        found = [value if value.tzinfo else value.replace(tzinfo=UTC) for value in rows]
    engine.dispose()
    return found


def wave_members(url: str, deployment_id: str) -> dict[int, list[int]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT wave, device_id FROM deployment_devices WHERE deployment_id = :id"),
            {"id": deployment_id},
        ).all()
    engine.dispose()
    members: dict[int, list[int]] = {}
    for wave, device_id in rows:
        members.setdefault(int(wave), []).append(int(device_id.removeprefix("dev-")))
    return members


async def rollout(args: argparse.Namespace, url: str, database: str, admin_url: str, work: Path) -> Figures:
    figures = Figures(args.devices, args.waves, args.workers, args.poll_interval, args.install_time)
    data_dir = work / "data"
    data_dir.mkdir()
    _, new = seed(url, args.devices)
    tokens = mint(data_dir, args.devices)
    counts = work / "statements"
    counts.mkdir()
    (work / "site").mkdir()
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env.update(
        FLEETLIFT_DATA_DIR=str(data_dir),
        FLEETLIFT_DATABASE_URL=url,
        FLEETLIFT_LOG_LEVEL="WARNING",
        FLEETLIFT_DEVICE_POLL_INTERVAL_SECONDS=str(max(1, round(args.poll_interval))),
        FLEETLIFT_RECONCILE_INTERVAL_SECONDS=str(args.reconcile_interval),
        FLEETLIFT_WEBHOOKS_ENABLED="false",
        FLEETLIFT_BENCH_STATEMENTS_DIR=str(counts),
        PYTHONPATH=os.pathsep.join(filter(None, [str(work / "site"), env.get("PYTHONPATH")])),
    )
    # Before the server starts: the CLI creates the local issuer's key, so the workers all load
    # that one (on a fresh data directory, workers starting together would each create their own).
    admin_token = subprocess.run(
        [str(BIN / "fleetlift"), "token", "create", "--role", "admin", "--subject", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "fleetlift"), "serve", "--no-migrate", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(args.workers)]
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    fleet: Fleet | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start: " + (work / "server.log").read_text()[-2000:])
            await asyncio.sleep(0.2)

        connections = Connections("127.0.0.1", port, args.connections)
        await connections.open()
        rng = random.Random(args.seed)
        fleet = Fleet(tokens, args.poll_interval, args.install_time, f"127.0.0.1:{port}", connections, rng)
        fleet.offsets = [rng.uniform(0, args.poll_interval) for _ in range(args.devices)]
        fleet.installs = [args.install_time * rng.uniform(0.5, 1.5) for _ in range(args.devices)]
        tasks = [asyncio.create_task(fleet.run(device)) for device in range(args.devices)]

        print(
            f"  warm-up: {args.poll_interval:.0f} s of polls (each token checked once per process)",
            flush=True,
        )
        await asyncio.sleep(args.poll_interval)
        cpu0, polls0 = tree_cpu(server.pid), fleet.polls
        await asyncio.sleep(args.idle_seconds)
        idle_cpu, idle_polls = tree_cpu(server.pid) - cpu0, fleet.polls - polls0
        figures.server_cpu_per_poll_ms = 1000 * idle_cpu / max(idle_polls, 1)
        print(
            f"  idle polling: {idle_polls / args.idle_seconds:,.0f} polls/s, server "
            f"{100 * idle_cpu / args.idle_seconds:.0f}% CPU, "
            f"{figures.server_cpu_per_poll_ms:.3f} ms per poll",
            flush=True,
        )

        percents = [float(p) for p in args.waves.split(",") if p]
        policy = {"waves": [{"name": f"{p:g}%", "percent": p} for p in percents]}
        backends = BackendCpu(admin_url, database)
        backends.start()
        xacts0 = xacts(admin_url, database)
        statements0, kinds0 = statement_counts(counts)
        cpu0, polls0, reports0 = tree_cpu(server.pid), fleet.polls, sum(fleet.reports.values())
        started = time.monotonic()
        created_at = datetime.now(UTC)
        answer = httpx.post(
            f"{base}/api/v1/deployments",
            headers={"Authorization": f"Bearer {admin_token}"},
            json={
                "name": "bench rollout",
                "release_id": new,
                "target": {"condition": "tags.fleet = 'bench'"},
                "policy": policy,
            },
            timeout=600,
        )
        answer.raise_for_status()
        deployment_id = answer.json()["id"]
        print(
            f"  deployment created in {time.monotonic() - started:.1f} s; waves {args.waves} + rest",
            flush=True,
        )
        while len(fleet.succeeded_at) < args.devices:
            await asyncio.sleep(5)
            elapsed = time.monotonic() - started
            print(
                f"  {elapsed:6.0f} s: {len(fleet.offered_at):,} offered, "
                f"{len(fleet.succeeded_at):,} succeeded, "
                f"{fleet.polls - polls0:,} polls, server CPU {tree_cpu(server.pid) - cpu0:,.0f} s",
                flush=True,
            )
            if elapsed > args.timeout:
                print(f"  stopped after {args.timeout} s: not every device succeeded", flush=True)
                break
        end = fleet.last_success or time.monotonic()
        figures.wall_seconds = end - started
        figures.server_cpu_seconds = tree_cpu(server.pid) - cpu0
        figures.polls_during_rollout = fleet.polls - polls0
        figures.reports = sum(fleet.reports.values()) - reports0
        figures.postgres_cpu_seconds = backends.stop()
        for task in tasks:  # the devices stop; the counters settle
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        figures.polls_counted = fleet.polls - polls0
        # Backends report their statistics when a transaction ends (at most once a second) or
        # after 10 s idle; statement counters are written every half second.
        await asyncio.sleep(11.0)
        figures.transactions = xacts(admin_url, database) - xacts0
        statements1, kinds1 = statement_counts(counts)
        figures.statements = statements1 - statements0
        for key, (count, seconds) in kinds1.items():
            before = kinds0.get(key, [0, 0.0])
            if count > before[0]:
                figures.statement_kinds[key] = [count - before[0], round(seconds - before[1], 3)]
        figures.succeeded = len(fleet.succeeded_at)
        figures.errors = {**{str(k): v for k, v in fleet.refused.items()}, **dict(connections.errors)}

        opened = [
            started + (moment - created_at).total_seconds()
            for moment in wave_opened_times(url, deployment_id)
        ]
        members = wave_members(url, deployment_id)
        figures.wave_floors = device_floor(fleet, opened, members)
        figures.device_floor_seconds = sum(figures.wave_floors)
        for index, wave_open in enumerate(opened):
            done = [fleet.succeeded_at.get(device, end) for device in members.get(index, [])]
            figures.wave_walls.append((max(done) if done else wave_open) - wave_open)
        return figures
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if fleet is not None:
            fleet.connections.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def report(figures: Figures) -> None:
    f = figures
    per_device = max(f.devices, 1)
    print()
    print(
        f"{f.devices:,} devices, waves {f.waves} + rest, {f.workers} server process(es), poll every "
        f"{f.poll_interval:g} s, install {f.install_time:g} s (x0.5-1.5)"
    )
    print("| figure | value |")
    print("|---|---:|")
    rows = [
        ("devices succeeded", f"{f.succeeded:,} of {f.devices:,}"),
        ("wall time, start to last success", f"{f.wall_seconds:,.0f} s"),
        (
            "of which the devices' own behaviour (poll wait + install, per wave)",
            f"{f.device_floor_seconds:,.0f} s",
        ),
        (
            "waves: wall / device floor",
            " · ".join(f"{w:,.0f}/{d:,.0f} s" for w, d in zip(f.wave_walls, f.wave_floors, strict=False)),
        ),
        ("server CPU", f"{f.server_cpu_seconds:,.0f} s"),
        ("server CPU per 1,000 devices", f"{f.cpu_per_1000:.2f} s"),
        ("... without the background polling", f"{f.cpu_per_1000_without_polls:.2f} s"),
        ("server CPU per idle poll", f"{f.server_cpu_per_poll_ms:.3f} ms"),
        ("polls / status reports during the rollout", f"{f.polls_during_rollout:,} / {f.reports:,}"),
        ("PostgreSQL backends' CPU", f"{f.postgres_cpu_seconds:,.0f} s"),
        ("... per 1,000 devices", f"{1000 * f.postgres_cpu_seconds / per_device:.2f} s"),
        ("transactions per device (pg_stat_database)", f"{f.transactions / per_device:.1f}"),
        (
            "SQLAlchemy statements per device (+ polls per device)",
            (f"{f.statements / per_device:.1f} (+ {f.polls_counted / per_device:.1f})"),
        ),
        ("errors", json.dumps(f.errors) if f.errors else "none"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    print("The 10 kinds of statement the server waited longest for (SQLAlchemy's; not the poll's SELECT):")
    print("| statement (start) | count | per device | seconds |")
    print("|---|---:|---:|---:|")
    ranked = sorted(f.statement_kinds.items(), key=lambda item: -item[1][1])[:10]
    for key, (count, seconds) in ranked:
        print(f"| `{key}` | {count:,.0f} | {count / per_device:.2f} | {seconds:,.1f} |")
    print(
        json.dumps(
            {
                **f.__dict__,
                "cpu_per_1000": f.cpu_per_1000,
                "cpu_per_1000_without_polls": f.cpu_per_1000_without_polls,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument(
        "--waves", default="1,10,50", help="wave sizes, percent of the fleet; the rest is the last"
    )
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--poll-interval", type=float, default=60.0, help="seconds between a device's polls")
    parser.add_argument(
        "--install-time", type=float, default=10.0, help="seconds a device installs (x0.5-1.5)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="measured idle polling before the rollout"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="keep-alive connections the devices share (requests in flight at once; a real fleet has "
        "one per device)",
    )
    parser.add_argument(
        "--reconcile-interval", type=float, default=1.0, help="the reconciler's timer, seconds"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up the rollout after this long")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as scratch, fresh_database() as (url, database, admin_url):
        print(f"fleetlift on PostgreSQL (database {database})", flush=True)
        figures = asyncio.run(rollout(args, url, database, admin_url, Path(scratch)))
    report(figures)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
