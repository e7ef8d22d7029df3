"""The agent's resident memory: idle (admitted, polling, nothing to do) and while downloading
and installing a large code package. Runs a real server and a real agent process.

    .venv/bin/python bench/agent_memory.py [--size-mb 64] [--rate-mb 8]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from machine import free_port

BIN = Path(sys.executable).parent


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def package(size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        payload = os.urandom(size)
        info = tarfile.TarInfo("payload.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--size-mb", type=int, default=64)
    options.add_argument("--rate-mb", type=float, default=8.0)
    options.add_argument("--idle-seconds", type=float, default=15.0)
    args = options.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleetlift-agent-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env.update(
        FLEETLIFT_DATA_DIR=str(work / "server"),
        FLEETLIFT_LOG_LEVEL="WARNING",
        FLEETLIFT_DEVICE_POLL_INTERVAL_SECONDS="1",
    )
    subprocess.run([str(BIN / "fleetlift"), "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "fleetlift"), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        token = subprocess.run(
            [str(BIN / "fleetlift"), "token", "create", "--role", "admin", "--subject", "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        api = httpx.Client(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        enrollment = api.post("/enrollment-tokens", json={"name": "bench", "valid_for_hours": 1}).json()[
            "token"
        ]
        agent = subprocess.Popen(
            [
                str(BIN / "fleetlift-agent"),
                "run",
                "--server",
                base,
                "--data-dir",
                str(work / "agent"),
                "--identity",
                "device_id=bench-gw",
                "--enrollment-token",
                enrollment,
                "--poll-interval",
                "1",
                "--rate-limit",
                str(int(args.rate_mb * 1024 * 1024)),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(args.idle_seconds)
        idle_samples = []
        for _ in range(10):
            idle_samples.append(rss_kib(agent.pid)[0])
            time.sleep(0.2)
        content = package(args.size_mb * 1024 * 1024)
        artifact = api.post(
            "/artifacts",
            params={"name": "big.tar", "version": "1"},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        ).json()
        release = api.post(
            "/releases",
            json={
                "name": "big",
                "version": "1",
                "payloads": [{"type": "file", "artifact_id": artifact["id"]}],
            },
        ).json()
        deployment = api.post(
            "/deployments",
            json={
                "name": "big",
                "release_id": release["id"],
                "target": {"condition": "deviceId = 'bench-gw'"},
            },
        ).json()
        busy_samples = []
        started = time.monotonic()
        state = ""
        while time.monotonic() - started < 600:
            busy_samples.append(rss_kib(agent.pid)[0])
            rows = api.get(f"/deployments/{deployment['id']}/devices").json()["items"]
            state = rows[0]["state"] if rows else ""
            if state in ("succeeded", "failed", "rolled_back"):
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        peak = rss_kib(agent.pid)[1]
        after = rss_kib(agent.pid)[0]
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        )
        print(f"agent idle RSS:         median {sorted(idle_samples)[len(idle_samples) // 2] / 1024:.1f} MiB")
        print(
            f"agent while downloading {args.size_mb} MiB at {args.rate_mb} MiB/s and installing:"
            f" max sampled {max(busy_samples) / 1024:.1f} MiB, peak (VmHWM) {peak / 1024:.1f} MiB"
        )
        print(f"after the update ({state} in {elapsed:.1f} s): {after / 1024:.1f} MiB")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=15)
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
