"""Rollouts end to end: real server processes, simulated fleets (``fleetlift-sim`` processes) over
the device protocol, and the event log (``GET /api/v1/events``) as the witness.

- ``kill -9`` of the server while the second of four waves is open: started again on the same
  database, the rollout completes; every device succeeded, none started the update twice, each wave
  opened once, each device was released once (SQLite and PostgreSQL).
- two server replicas on one PostgreSQL, each serving half the fleet and both reconciling, with a
  concurrency limit so releases come in many small steps: no wave opened twice, no device released
  twice.
- 10,000 simulated devices, exactly 10% of them failing: the rollout halts at its 5% error
  threshold halfway through its first wave (1,000 devices), the later waves never open, and a
  rollback deployment takes exactly the devices that had failed back to the previous release.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, insert, text

from fleetlift.device_api.tokens import DeviceTokens
from fleetlift.devices.models import Device

from ..conftest import PG_ADMIN_URL, _pg_reachable, _start_postgres
from ..ports import free_port
from .harness import ServerProcess, _spawn, _stop, start_server

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SIM = Path(sys.executable).parent / "fleetlift-sim"
# Short device steps (each x0.5-1.5): an update takes about two seconds.
QUICK = ["--download-time", "0.5", "--install-time", "1", "--reboot-time", "0"]
FAST_SERVER = {"device_poll_interval_seconds": "2", "reconcile_interval_seconds": "0.5"}
RELEASED = "pending"  # the state the reconciler releases a waiting device into


# -- helpers ---------------------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], what: str, timeout: float, every: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"[:3000])


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test (dropped afterwards), or a skip."""
    if not _pg_reachable():
        _start_postgres()
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    schema = f"flroll_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in PG_ADMIN_URL else "?"
    try:
        yield f"{PG_ADMIN_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def simulator(*arguments: str) -> Iterator[subprocess.Popen[str]]:
    """``fleetlift-sim`` in the background (JSON summary, every device listed); killed if a test
    leaves it running."""
    process = subprocess.Popen(
        [str(SIM), "--json", "--per-device", "--stats-interval", "0", "--max-backoff", "2", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def stop_simulator(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Ctrl-C the simulator and read its JSON summary."""
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return dict(json.loads(stdout))


def releases(server: ServerProcess, tag: str) -> tuple[str, str]:
    """Release 1.0.0 (what the fleet runs) and 2.0.0 (what the rollout brings), patch kind."""
    ids = []
    for version in ("1.0.0", "2.0.0"):
        artifact = server.upload(f"firmware {version} ".encode() * 100, name=f"{tag}.img", version=version)
        ids.append(server.release(f"{tag}-fw", version, [{"type": "file", "artifact_id": artifact["id"]}]))
    return ids[0], ids[1]


def deploy(server: ServerProcess, release_id: str, condition: str, policy: dict[str, Any]) -> str:
    answer = server.api.post(
        "/deployments",
        json={
            "name": f"rollout {release_id}",
            "release_id": release_id,
            "target": {"condition": condition},
            "policy": policy,
        },
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def deployment(server: ServerProcess, deployment_id: str) -> dict[str, Any]:
    answer = server.api.get(f"/deployments/{deployment_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def finished(server: ServerProcess, deployment_id: str) -> dict[str, Any] | None:
    found = deployment(server, deployment_id)
    return found if found["rollout"]["state"] == "finished" else None


def events(server: ServerProcess, deployment_id: str, type_prefix: str) -> list[dict[str, Any]]:
    """Every event of a deployment with this type prefix, in seq order, through the events API."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        answer = server.api.get(
            "/events",
            params={"deployment_id": deployment_id, "type": type_prefix, "after": after, "limit": 1000},
        )
        assert answer.status_code == 200, answer.text
        page = answer.json()["items"]
        found += page
        if len(page) < 1000:
            return found
        after = page[-1]["seq"]


def waves_opened(server: ServerProcess, deployment_id: str) -> Counter[int]:
    return Counter(event["data"]["wave"] for event in events(server, deployment_id, "deployment.wave_opened"))


def releases_per_device(server: ServerProcess, deployment_id: str) -> Counter[str]:
    """How often each device of the deployment was released (moved to pending)."""
    return Counter(
        event["device_id"]
        for event in events(server, deployment_id, "device.update_state")
        if event["data"]["state"] == RELEASED
    )


def fleet_of(server: ServerProcess, condition: str, size: int) -> set[str] | None:
    """The accepted devices matching ``condition`` once all ``size`` are there."""
    answer = server.api.get("/devices", params={"status": "accepted", "condition": condition, "limit": 1000})
    assert answer.status_code == 200, answer.text
    found = {device["id"] for device in answer.json()["items"]}
    return found if len(found) == size else None


def assert_each_installed_once(summary: dict[str, Any], deployment_id: str, device_ids: set[str]) -> None:
    per_device = summary["per_device"]
    assert set(per_device) >= device_ids, "the simulator does not know some devices of the deployment"
    twice = {d: per_device[d]["installs"].get(deployment_id) for d in device_ids}
    assert all(count == 1 for count in twice.values()), {d: n for d, n in twice.items() if n != 1}
    outcomes = Counter(per_device[d]["outcomes"].get(deployment_id) for d in device_ids)
    assert outcomes == {"succeeded": len(device_ids)}, outcomes
    assert summary["reoffered_devices"] == 0


def kill_9(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=30)


# -- kill -9 mid-rollout ---------------------------------------------------------------------------

FLEET = 200
FOUR_WAVES = {"waves": [{"name": "canary", "count": 20}, {"percent": 30}, {"percent": 30}]}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Server settings naming the database: the embedded SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
    else:
        with pg_schema() as url:
            yield {"database_url": url}


def test_kill_9_while_a_wave_is_open_and_the_rollout_completes_once(
    tmp_path: Path, database: dict[str, str]
) -> None:
    servers = start_server(tmp_path / "server", **FAST_SERVER, **database)
    server = next(servers)
    try:
        old, new = releases(server, "kill")
        token = server.enrollment_token(tags={"fleet": "kill"})
        arguments = ["--server", server.base, "--devices", str(FLEET), "--enrollment-token", token]
        with simulator(*arguments, "--long-poll", "20", "--ramp", "4", "--seed", "5", *QUICK) as sim:
            fleet = wait_until(
                lambda: fleet_of(server, "tags.fleet = 'kill'", FLEET), f"{FLEET} devices admitted", 120
            )
            deployment_id = deploy(server, new, "tags.fleet = 'kill'", FOUR_WAVES)

            def second_wave_installing() -> dict[str, Any] | None:
                rollout = deployment(server, deployment_id)["rollout"]
                if rollout["current_wave"] > 1 or rollout["state"] == "finished":
                    raise AssertionError(f"wave 1 closed before the kill could happen: {rollout}")
                opened = rollout["current_wave"] == 1 and rollout["state"] == "wave_open"
                return rollout if opened and rollout["waves"][1]["in_flight"] > 0 else None

            at_kill = wait_until(second_wave_installing, "wave 1 open with devices installing", 120, 0.05)
            kill_9(server)
            time.sleep(1.0)  # the devices meet a dead server: reports and polls fail, they back off
            server.start()
            done = wait_until(lambda: finished(server, deployment_id), "the rollout to finish", 180)
            summary = stop_simulator(sim)

        assert at_kill["waves"][1]["in_flight"] > 0
        assert done["device_counts"] == {"succeeded": FLEET}, done["device_counts"]
        assert [wave["devices"] for wave in done["rollout"]["waves"]] == [20, 60, 60, 60]
        assert waves_opened(server, deployment_id) == {0: 1, 1: 1, 2: 1, 3: 1}
        assert releases_per_device(server, deployment_id) == dict.fromkeys(fleet, 1)
        assert_each_installed_once(summary, deployment_id, fleet)
        assert summary["errors"], "the devices never noticed the server was killed"
        completed = events(server, deployment_id, "deployment.completed")
        assert len(completed) == 1, completed
        device = server.api.get(f"/devices/{sorted(fleet)[0]}").json()
        assert device["release_id"] == new and old != new
    finally:
        servers.close()


# -- two replicas on one PostgreSQL ---------------------------------------------------------------


@pytest.mark.postgres
def test_two_replicas_drive_one_rollout_without_opening_or_releasing_anything_twice(tmp_path: Path) -> None:
    with pg_schema() as url:
        servers = start_server(tmp_path / "server", **FAST_SERVER, database_url=url)
        first = next(servers)
        second_port = free_port()
        second = _spawn(first.data_dir, first.env, second_port)  # same keys, same database
        try:
            _, new = releases(first, "replicas")
            token = first.enrollment_token(tags={"fleet": "replicas"})
            half = [
                "--devices",
                str(FLEET // 2),
                "--enrollment-token",
                token,
                "--long-poll",
                "20",
                "--ramp",
                "4",
                *QUICK,
            ]
            with (
                simulator("--server", first.base, "--prefix", "ra", "--seed", "1", *half) as sim_a,
                simulator("--server", f"http://127.0.0.1:{second_port}", "--prefix", "rb", *half) as sim_b,
            ):
                fleet = wait_until(
                    lambda: fleet_of(first, "tags.fleet = 'replicas'", FLEET),
                    f"{FLEET} devices admitted",
                    120,
                )
                # A concurrency limit: releases come in many small steps, each a chance for both
                # reconcilers to release the same device.
                policy = {**FOUR_WAVES, "max_concurrent": 20}
                deployment_id = deploy(first, new, "tags.fleet = 'replicas'", policy)
                done = wait_until(lambda: finished(first, deployment_id), "the rollout to finish", 240)
                summary_a = stop_simulator(sim_a)
                summary_b = stop_simulator(sim_b)

            assert done["device_counts"] == {"succeeded": FLEET}, done["device_counts"]
            assert waves_opened(first, deployment_id) == {0: 1, 1: 1, 2: 1, 3: 1}
            assert releases_per_device(first, deployment_id) == dict.fromkeys(fleet, 1)
            summary = {
                "per_device": {**summary_a["per_device"], **summary_b["per_device"]},
                "reoffered_devices": summary_a["reoffered_devices"] + summary_b["reoffered_devices"],
            }
            assert_each_installed_once(summary, deployment_id, fleet)
            # Both replicas served devices: each simulator's half succeeded through its own server.
            assert summary_a["updates"]["succeeded"] == summary_b["updates"]["succeeded"] == FLEET // 2
            log = first.log()
            assert "Traceback" not in log, log[-3000:]
        finally:
            _stop(second)
            servers.close()


# -- 10,000 devices, 10% failing: halt and roll back ----------------------------------------------

BIG_FLEET = 10_000


def installing(found: dict[str, Any]) -> dict[str, int]:
    """Devices of a deployment that started and have no outcome yet."""
    started = ("downloading", "downloaded", "installing", "rebooting", "verifying")
    return {state: n for state, n in found["device_counts"].items() if state in started and n}


def seed_fleet(database_url: str, count: int, tag: str) -> list[str]:
    """``count`` accepted devices, inserted set-based; their IDs. No release is recorded for them
    (as for devices that never finished an update here): were they recorded on the rollback
    release, the rollback would count them ``already_installed`` without asking them."""
    now = datetime.now(UTC)
    ids = [f"{tag}-{n:05d}" for n in range(count)]
    rows = [
        {
            "tenant_id": "default",
            "id": device_id,
            "name": device_id,
            "device_type": "sim-gw",
            "architecture": "arm64",
            "tags": {"fleet": tag},
            "reported": {},
            "release_id": None,
            "status": "accepted",
            "identity": {"device_id": device_id},
            "created_at": now,
            "updated_at": now,
            "row_version": 1,
        }
        for device_id in ids
    ]
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(insert(Device.__table__), rows)
    engine.dispose()
    return ids


def mint_tokens(server: ServerProcess, device_ids: list[str], path: Path) -> None:
    """Device tokens from the server's own key, as if each device had authenticated."""
    issuer = DeviceTokens(server.data_dir / "keys" / "device-tokens.pem", timedelta(hours=2), cache_size=0)
    with path.open("w") as output:
        for device_id in device_ids:
            output.write(f"{device_id} {issuer.issue(tenant_id='default', device_id=device_id)[0]}\n")


@pytest.mark.slow
def test_ten_thousand_devices_ten_percent_failing_halt_at_the_threshold_and_roll_back(
    tmp_path: Path,
) -> None:
    servers = start_server(tmp_path / "server", **FAST_SERVER)
    server = next(servers)
    started = time.monotonic()
    try:
        old, new = releases(server, "big")
        database_url = f"sqlite:///{server.data_dir / 'fleetlift.db'}"
        fleet = seed_fleet(database_url, BIG_FLEET, "big")
        tokens = tmp_path / "tokens.txt"
        mint_tokens(server, fleet, tokens)
        policy = {
            "waves": [
                # 1,000 devices released at once: about 10% of them fail, so the failures reach 5%
                # of the released devices about halfway through the wave.
                {"name": "first", "percent": 10, "error_threshold": {"percent": 5}},
                {"name": "second", "percent": 30, "error_threshold": {"percent": 5}},
            ],
            "rollback": {"on_error": "rollback_failed", "release_id": old},
        }
        arguments = ["--server", server.base, "--tokens-file", str(tokens), "--devices", str(BIG_FLEET)]
        arguments += ["--long-poll", "30", "--connections", "6", "--seed", "7", "--ramp", "10"]
        arguments += ["--failing-devices", "0.1", "--failing-version", "2.0.0", *QUICK]
        with simulator(*arguments) as sim:
            time.sleep(12)  # every device holds its long poll
            deployment_id = deploy(server, new, "tags.fleet = 'big'", policy)

            def halted() -> dict[str, Any] | None:
                found = deployment(server, deployment_id)
                return found if found["rollout"]["state"] == "halted" else None

            # Generous: on CI's two shared cores (another test process beside it) it took over 180 s once.
            parent = wait_until(halted, "the rollout to halt at its error threshold", 420, 0.5)
            rollback_id = str(
                wait_until(
                    lambda: events(server, deployment_id, "deployment.rollback_created"),
                    "the rollback deployment",
                    30,
                )[0]["data"]["rollback_deployment_id"]
            )
            rollback = wait_until(lambda: finished(server, rollback_id), "the rollback to finish", 300)
            # Devices installing when it halted finish their updates; then nothing moves any more.
            wait_until(
                lambda: not installing(deployment(server, deployment_id)),
                "the devices installing in the halted wave to finish",
                60,
            )
            summary = stop_simulator(sim)
        print(f"10,000-device rollout test: {time.monotonic() - started:.0f} s")

        # Halted in the first wave: the later waves never opened, nobody in them was released.
        waves = deployment(server, deployment_id)["rollout"]["waves"]
        assert parent["status"] == "paused", parent["status"]
        assert "error threshold" in parent["rollout"]["halted_reason"], parent["rollout"]
        assert parent["rollout"]["current_wave"] == 0, parent["rollout"]
        assert waves_opened(server, deployment_id) == {0: 1}
        assert [wave["devices"] for wave in waves] == [1000, 3000, 6000]
        for later in waves[1:]:
            assert later["waiting"] == later["devices"], f"devices of a later wave were released: {later}"
        released = releases_per_device(server, deployment_id)
        assert set(released.values()) == {1}, "a device was released twice"
        assert len(released) == 1000, len(released)

        # The rollback took exactly the devices that had failed when it halted.
        log = events(server, deployment_id, "")
        halt_seq = next(event["seq"] for event in log if event["type"] == "deployment.halted")
        failed_then = {
            event["device_id"]
            for event in log
            if event["type"] == "device.update_state"
            and event["data"]["state"] in ("failed", "rolled_back", "timed_out")
            and event["seq"] < halt_seq
        }
        rolled = server.api.get(f"/deployments/{rollback_id}/devices", params={"limit": 1000}).json()["items"]
        assert {row["device_id"] for row in rolled} == failed_then
        assert rollback["parent_deployment_id"] == deployment_id
        assert rollback["device_counts"] == {"succeeded": len(failed_then)}, rollback["device_counts"]
        threshold_count = -(-5 * 1000 // 100)  # 5% of the 1,000 released devices
        assert len(failed_then) >= threshold_count, (len(failed_then), threshold_count)

        # They run the previous release again; devices that succeeded run the new one.
        per_device = summary["per_device"]
        for device_id in sorted(failed_then)[:20]:
            assert server.api.get(f"/devices/{device_id}").json()["release_id"] == old
            assert per_device[device_id]["installed"] == {"big-fw": "1.0.0"}
        succeeded = [d for d, r in per_device.items() if r["outcomes"].get(deployment_id) == "succeeded"]
        assert server.api.get(f"/devices/{succeeded[0]}").json()["release_id"] == new
        assert summary["fleet"]["failing_devices"] == 1000
        assert summary["installs_per_device"].keys() == {"1"}, summary["installs_per_device"]
        assert summary["reoffered_devices"] == 0
    finally:
        servers.close()
