"""Benchmark: 100,000 devices polling for their next update, against fleetlift, a bare ASGI app
and gooseBit, each served by uvicorn with uvloop and httptools on this machine.

For fleetlift (`fleetlift serve`, embedded SQLite and/or PostgreSQL): seeds N accepted devices
(set-based SQL), publishes a release and creates a deployment targeting every fifth device through
the service layer, mints one device token per device with the server's own device token issuer,
then loads `GET /api/device/v1/deployments/next`:

1. closed loop: `wrk --latency`, a Lua script walking all N tokens (each request the next token,
   a random half with `If-None-Match: <current ETag>`), after a warm-up run of the same load;
2. open loop at a fixed rate (2,000 polls/s by default): wrk2 is not packaged here, so a small
   asyncio generator in this script sends on a fixed schedule over keep-alive connections and
   measures each latency from the request's scheduled time (no coordinated omission).

The same two loads run against a bare ASGI app answering the same route with 204, and against
gooseBit (`pip install goosebit` into `bench/.venv-goosebit`, its defaults, SQLite), polled on its
hawkBit DDI route `GET /DEFAULT/controller/v1/<device id>` by N devices inserted set-based into its
database.

    python bench/device_poll.py                             # SQLite, 100,000 devices
    python bench/device_poll.py --backend both --workers 2  # and PostgreSQL
    python bench/device_poll.py --devices 10000 --duration 5 --skip-goosebit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from fleetlift.auth import Role
from fleetlift.context import Caller
from fleetlift.db import make_engine, make_session_factory, transaction
from fleetlift.deployments import service as deployments
from fleetlift.deployments.schemas import DeploymentCreate, Target
from fleetlift.device_api.tokens import DeviceTokens
from fleetlift.ids import new_id
from fleetlift.migrate import upgrade
from fleetlift.releases.models import Release
from fleetlift.tenants import repository as tenants
from machine import free_port, machine

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
TENANT = "default"
POLL_PATH = "/api/device/v1/deployments/next"
PG_URL = os.environ.get("FLEETLIFT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
GOOSEBIT_VENV = HERE / ".venv-goosebit"

_SEED_POSTGRES = """
INSERT INTO devices (tenant_id, id, name, device_type, architecture, tags, reported, status,
                     identity, created_at, updated_at, row_version)
SELECT :tenant, 'dev-' || lpad(n::text, 8, '0'), 'device ' || n, 'gw-x1', 'arm64',
       jsonb_build_object('ring', 'r' || (n % 5)), '{}'::jsonb, 'accepted', '{}'::jsonb, now(), now(), 1
FROM generate_series(0, :count - 1) AS n
"""

_SEED_SQLITE = """
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < :count - 1)
INSERT INTO devices (tenant_id, id, name, device_type, architecture, tags, reported, status,
                     identity, created_at, updated_at, row_version)
SELECT :tenant, 'dev-' || substr('00000000' || n, -8, 8), 'device ' || n, 'gw-x1', 'arm64',
       json_object('ring', 'r' || (n % 5)), '{}', 'accepted', '{}', datetime('now'), datetime('now'), 1
FROM seq
"""

# Each request takes the next device token (gooseBit: the next device ID, in the path); a random
# half carry the current ETag.
WRK_SCRIPT = """
local tokens = {{}}
for line in io.lines("{tokens}") do tokens[#tokens + 1] = line end
local etag = '{etag}'
local by_path = {by_path}
local count = #tokens
local index = 0
function init(args)
  local address = tonumber(tostring({{}}):match("0x(%x+)") or "0", 16)
  math.randomseed(os.time() + address % 1000003)
  index = math.random(1, count)
end
request = function()
  index = index % count + 1
  local token = tokens[index]
  local path = "{path}"
  local headers = {{}}
  if by_path then path = path .. token else headers["Authorization"] = "Bearer " .. token end
  if math.random() < 0.5 then headers["If-None-Match"] = etag end
  return wrk.format("GET", path, headers)
end
"""

BARE_APP = '''
"""A bare ASGI app: the device poll route answered with 204 and nothing else."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    status = 204 if scope["path"] == "/api/device/v1/deployments/next" else 404
    await send({"type": "http.response.start", "status": status, "headers": [(b"x-poll-interval", b"60")]})
    await send({"type": "http.response.body", "body": b""})
'''


@dataclass
class Figures:
    name: str
    polls_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    warmup_polls_per_s: float = 0.0
    fixed_rate: float = 0.0
    fixed_p50_ms: float = 0.0
    fixed_p99_ms: float = 0.0
    fixed_max_ms: float = 0.0
    fixed_errors: int = 0


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: `apt-get install wrk` (Debian/Ubuntu), `brew install wrk` (macOS), "
            "or build it from https://github.com/wg/wrk",
            file=sys.stderr,
        )
        raise SystemExit(2)


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before answering {url}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def server(command: list[str], env: dict[str, str], health_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(health_url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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


# -- load ------------------------------------------------------------------------------------------


def _millis(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(
    url: str, script: Path, *, connections: int, threads: int, duration: int
) -> tuple[float, float, float, int]:
    """wrk's requests/s, p50 and p99 (ms), and the count of non-2xx/3xx answers and socket errors."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    result = subprocess.run(
        [*command, "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    output = result.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", output)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", output)
    assert rate and p50 and p99, output
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return float(rate.group(1)), _millis(p50.group(1)), _millis(p99.group(1)), errors


def wrk_script(work: Path, name: str, tokens: Path, etag: str, path: str, by_path: bool) -> Path:
    script = work / f"{re.sub(r'[^a-z]+', '-', name.lower())}.lua"
    script.write_text(
        WRK_SCRIPT.format(
            tokens=tokens, etag=etag.replace("'", "\\'"), path=path, by_path="true" if by_path else "false"
        )
    )
    return script


async def _fixed_rate(
    host: str, port: int, requests: list[bytes], rate: float, duration: float, connections: int, grace: float
) -> tuple[float, list[float], int, int]:
    """Send ``rate`` requests per second for ``duration`` seconds on a schedule fixed in advance;
    each latency runs from the request's scheduled time to the end of its answer. Requests still
    unanswered ``grace`` seconds after the last one was due are given up (and counted)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    errors = 0

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            latencies.append(time.perf_counter() - scheduled)
            if status >= 400:
                errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        pool.put_nowait((reader, writer))

    total = int(rate * duration)
    started = time.perf_counter()
    tasks = []
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i % len(requests)], scheduled)))
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    elapsed = time.perf_counter() - started
    while not pool.empty():
        pool.get_nowait()[1].close()
    return len(latencies) / elapsed, latencies, errors, len(pending)


def fixed_rate(
    url: str, requests: list[bytes], rate: float, duration: float, connections: int
) -> tuple[float, float, float, float, int]:
    """Achieved answers/s, p50, p99 and max latency (ms; unanswered requests count as infinitely
    late), and the errors (answers of 400 and more, broken connections, unanswered requests)."""
    parsed = httpx.URL(url)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    achieved, latencies, errors, unanswered = asyncio.run(
        _fixed_rate(parsed.host, parsed.port or 80, requests, rate, duration, connections, grace=10.0)
    )
    ordered = sorted(latencies) + [float("inf")] * unanswered
    if not ordered:
        return achieved, float("inf"), float("inf"), float("inf"), errors

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return achieved, pick(0.50), pick(0.99), ordered[-1] * 1000, errors + unanswered


def raw_requests(host: str, lines: list[str], etag: str, path_of: str, by_path: bool) -> list[bytes]:
    rng = random.Random(7)
    requests = []
    for line in lines:
        path = path_of + (line if by_path else "")
        headers = [f"GET {path} HTTP/1.1", f"Host: {host}"]
        if not by_path:  # gooseBit's default: devices poll without a token (device_auth off)
            headers.append(f"Authorization: Bearer {line}")
        if rng.random() < 0.5:
            headers.append(f"If-None-Match: {etag}")
        requests.append(("\r\n".join(headers) + "\r\n\r\n").encode())
    rng.shuffle(requests)
    return requests


def load(
    name: str,
    url: str,
    path: str,
    tokens: Path,
    etag: str,
    args: argparse.Namespace,
    work: Path,
    by_path: bool = False,
) -> Figures:
    script = wrk_script(work, name, tokens, etag, path, by_path)
    cold = 0.0
    warmup = args.warmup if name.startswith("fleetlift") else args.warmup_others
    if warmup:
        print(f"  {name}: warm-up {warmup} s (first polls: tokens checked, devices told)", flush=True)
        rate, p50, p99, errors = run_wrk(
            url, script, connections=args.connections, threads=args.threads, duration=warmup
        )
        print(f"    {rate:,.0f}/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  errors {errors}", flush=True)
        cold = rate
    print(f"  {name}: wrk {args.duration} s, {args.connections} connections", flush=True)
    rate, p50, p99, errors = run_wrk(
        url, script, connections=args.connections, threads=args.threads, duration=args.duration
    )
    print(f"    {rate:,.0f}/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  errors {errors}", flush=True)
    figures = Figures(name, rate, p50, p99, errors, warmup_polls_per_s=cold)
    if args.rate:
        lines = tokens.read_text().split()
        requests = raw_requests(httpx.URL(url).netloc.decode(), lines, etag, path, by_path)
        print(f"  {name}: fixed rate {args.rate:,}/s for {args.rate_duration} s", flush=True)
        achieved, f50, f99, fmax, ferrors = fixed_rate(
            url, requests, args.rate, args.rate_duration, args.rate_connections
        )
        print(
            f"    {achieved:,.0f}/s  p50 {f50:.2f} ms  p99 {f99:.2f} ms  max {fmax:.1f} ms  errors {ferrors}"
        )
        figures.fixed_rate, figures.fixed_p50_ms, figures.fixed_p99_ms = achieved, f50, f99
        figures.fixed_max_ms, figures.fixed_errors = fmax, ferrors
    return figures


# -- fleetlift -------------------------------------------------------------------------------------


def seed_fleetlift(url: str, data_dir: Path, devices: int, tokens_path: Path) -> str:
    """Devices, a release and a deployment to every fifth device; the tokens file; the device ID
    whose poll gives the deployment's ETag."""
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        tenants.ensure(session, tenant_id=TENANT, name=TENANT)
    started = time.perf_counter()
    seed = _SEED_POSTGRES if engine.dialect.name == "postgresql" else _SEED_SQLITE
    with engine.begin() as connection:
        connection.execute(text(seed), {"tenant": TENANT, "count": devices})
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE devices"))
    caller = Caller.of(subject="bench", roles=frozenset({Role.ADMIN}), tenant_id=TENANT, request_id="bench")
    now = datetime.now(UTC)
    with sessions() as session:
        # Inserted as published and validated: the poll reads it, nothing here is about publishing.
        release = Release(
            tenant_id=TENANT,
            id=new_id("rel_"),
            name="edge-stack",
            version="2.0.0",
            kind="base",
            payloads=[
                {
                    "type": "file",
                    "artifact_id": new_id("art_"),
                    "filename": "edge-stack-2.0.0.swu",
                    "size": 48_000_000,
                    "sha256": "0" * 64,
                    "installer": "ab-slot",
                    "target": "rootfs",
                }
            ],
            device_types=["gw-x1"],
            architectures=["arm64"],
            notes="",
            validation={"status": "passed", "checked_at": now.isoformat(), "checks": [], "override": None},
            created_by="bench",
            created_at=now,
            updated_at=now,
        )
        session.add(release)
        session.commit()
        view = deployments.create(
            session=session,
            caller=caller,
            data=DeploymentCreate(
                name="ring 0", release_id=release.id, target=Target(condition="tags.ring = 'r0'")
            ),
        )
    assigned = sum(view.counts.values())
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    engine.dispose()
    print(f"  seeded {devices:,} devices, {assigned:,} targeted, in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    issuer = DeviceTokens(data_dir / "keys" / "device-tokens.pem", timedelta(hours=6), cache_size=0)
    with tokens_path.open("w") as output:
        for n in range(devices):
            token, _ = issuer.issue(tenant_id=TENANT, device_id=f"dev-{n:08d}")
            output.write(token + "\n")
    print(f"  minted {devices:,} device tokens in {time.perf_counter() - started:.1f} s")
    return "dev-00000000"


def bench_fleetlift(backend: str, db_url: str | None, args: argparse.Namespace, work: Path) -> Figures:
    data_dir = work / f"data-{backend}"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env.update(FLEETLIFT_DATA_DIR=str(data_dir), FLEETLIFT_LOG_LEVEL="WARNING")
    if db_url:
        env["FLEETLIFT_DATABASE_URL"] = db_url
    url = db_url or f"sqlite:///{(data_dir / 'fleetlift.db').resolve()}"
    tokens = work / f"tokens-{backend}.txt"
    probe_device = seed_fleetlift(url, data_dir, args.devices, tokens)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "fleetlift"), "serve", "--no-migrate", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(args.workers)]
    with server(command, env, f"{base}/healthz", work / f"fleetlift-{backend}.log"):
        first = tokens.read_text().split("\n", 1)[0]
        answer = httpx.get(f"{base}{POLL_PATH}", headers={"Authorization": f"Bearer {first}"}, timeout=10)
        assert answer.status_code == 200, (probe_device, answer.status_code, answer.text)
        etag = answer.headers["ETag"]
        again = httpx.get(
            f"{base}{POLL_PATH}",
            headers={"Authorization": f"Bearer {first}", "If-None-Match": etag},
            timeout=10,
        )
        assert again.status_code == 304, again.status_code
        return load(f"fleetlift ({backend})", f"{base}{POLL_PATH}", POLL_PATH, tokens, etag, args, work)


# -- bare app --------------------------------------------------------------------------------------


def bench_bare(args: argparse.Namespace, work: Path, tokens: Path) -> Figures:
    (work / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "uvicorn"), "bare_app:app", "--app-dir", str(work), "--host", "127.0.0.1"]
    command += [
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--workers",
        str(args.workers),
    ]
    command += ["--log-level", "warning", "--no-access-log"]
    with server(command, dict(os.environ), f"{base}{POLL_PATH}", work / "bare.log"):
        return load("bare ASGI app", f"{base}{POLL_PATH}", POLL_PATH, tokens, '"x"', args, work)


# -- gooseBit -------------------------------------------------------------------------------------

GOOSEBIT_SCHEMA = """
import asyncio
from tortoise import Tortoise
from goosebit.db.config import TORTOISE_CONF


async def main():
    await Tortoise.init(config=TORTOISE_CONF)
    await Tortoise.generate_schemas()
    await Tortoise.close_connections()


asyncio.run(main())
"""

# Registered devices (as after their first configData), every fifth in the feed of a rollout.
GOOSEBIT_SEED = """
INSERT INTO hardware (id, model, revision) VALUES (1, 'default', 'default');
INSERT INTO software (id, uri, size, hash, version, image_format)
VALUES (1, 'file:///srv/edge-stack-2.0.0.swu', 1000000, 'sha1:0', '2.0.0', 0);
INSERT INTO software_compatibility (software_id, hardware_id) VALUES (1, 1);
INSERT INTO rollout (name, feed, paused, success_count, failure_count, software_id)
VALUES ('ring 0', 'ring0', 0, 0, 0, 1);
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {count} - 1)
INSERT INTO device (id, name, force_update, sw_version, feed, update_mode, last_state, hardware_id)
SELECT 'dev-' || substr('00000000' || n, -8, 8), NULL, 0, '1.0.0',
       CASE WHEN n % 5 = 0 THEN 'ring0' ELSE 'default' END, 3, 2, 1
FROM seq;
"""


def ensure_goosebit() -> Path:
    python = GOOSEBIT_VENV / "bin" / "python"
    if not python.exists():
        print(f"  installing goosebit into {GOOSEBIT_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(GOOSEBIT_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import goosebit, uvloop, httptools"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "goosebit", "uvloop", "httptools"], check=True
        )
    return python


def bench_goosebit(args: argparse.Namespace, work: Path) -> Figures:
    python = ensure_goosebit()
    home = work / "goosebit"
    home.mkdir()
    database = home / "goosebit.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOOSEBIT_")}
    env.update(GOOSEBIT_DB_URI=f"sqlite:///{database}", GOOSEBIT_ARTIFACTS_DIR=str(home / "artifacts"))
    subprocess.run([str(python), "-c", GOOSEBIT_SCHEMA], env=env, cwd=home, check=True, capture_output=True)
    with sqlite3.connect(database) as connection:
        connection.executescript(GOOSEBIT_SEED.format(count=args.devices))
    ids = work / "goosebit-devices.txt"
    ids.write_text("".join(f"dev-{n:08d}\n" for n in range(args.devices)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(python), "-m", "uvicorn", "goosebit:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--loop", "uvloop", "--http", "httptools", "--workers", str(args.workers)]
    command += ["--log-level", "warning", "--no-access-log"]
    path = "/DEFAULT/controller/v1/"
    with server(command, env | {"PYTHONUNBUFFERED": "1"}, f"{base}/login", work / "goosebit.log"):
        targeted = httpx.get(f"{base}{path}dev-00000000", timeout=30).json()
        assert "deploymentBase" in targeted["_links"], targeted
        other = httpx.get(f"{base}{path}dev-00000001", timeout=30).json()
        assert other["_links"] == {}, other
        return load("gooseBit", base + path, path, ids, '"x"', args, work, by_path=True)


# -- the report ------------------------------------------------------------------------------------


def report(results: list[Figures], args: argparse.Namespace) -> None:
    bare = next((r for r in results if r.name.startswith("bare")), None)
    print()
    print(
        f"{args.devices:,} devices, wrk -t{args.threads} -c{args.connections} -d{args.duration}s after a "
        f"{args.warmup} s warm-up ({args.warmup_others} s for the others); "
        f"fixed rate {args.rate:,}/s for {args.rate_duration} s; "
        f"{args.workers} server process(es)"
    )
    print(
        "| server | polls/s (wrk) | p50 | p99 | ratio to bare app | warm-up polls/s | errors | "
        f"p50 at {args.rate:,}/s | p99 at {args.rate:,}/s | max at {args.rate:,}/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{r.polls_per_s / bare.polls_per_s:.3f}" if bare else "-"
        print(
            f"| {r.name} | {r.polls_per_s:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {ratio} | "
            f"{r.warmup_polls_per_s:,.0f} | {r.errors + r.fixed_errors} | {r.fixed_p50_ms:.2f} ms | "
            f"{r.fixed_p99_ms:.2f} ms | {r.fixed_max_ms:.1f} ms |"
        )
    print(json.dumps([r.__dict__ for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--workers", type=int, default=2, help="server processes of every server")
    parser.add_argument("--duration", type=int, default=20, help="seconds of the measured wrk run")
    parser.add_argument(
        "--warmup",
        type=int,
        default=120,
        help="seconds of wrk before measuring fleetlift: every server process checks each token's "
        "signature once, so 100,000 devices need a few passes before the cache is warm",
    )
    parser.add_argument("--warmup-others", type=int, default=10, help="the same for the other servers")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rate", type=int, default=2000, help="fixed-rate load, polls/s (0: skip)")
    parser.add_argument("--rate-duration", type=int, default=20)
    parser.add_argument("--rate-connections", type=int, default=64)
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-goosebit", action="store_true")
    args = parser.parse_args()
    ensure_wrk()
    print(f"machine: {machine(f'SQLite {sqlite3.sqlite_version}')}", flush=True)
    results: list[Figures] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
        for backend in backends:
            print(f"fleetlift on {backend}", flush=True)
            if backend == "sqlite":
                results.append(bench_fleetlift(backend, None, args, work))
            else:
                with postgres_schema() as db_url:
                    results.append(bench_fleetlift(backend, db_url, args, work))
        if not args.skip_bare:
            print("bare ASGI app", flush=True)
            results.append(bench_bare(args, work, work / f"tokens-{backends[0]}.txt"))
        if not args.skip_goosebit:
            print("gooseBit", flush=True)
            results.append(bench_goosebit(args, work))
    report(results, args)


if __name__ == "__main__":
    main()
