"""Benchmark: many devices download one large artifact with Range requests, from fleetlift and
from nginx serving the same file on the same machine.

Starts `fleetlift serve` on a throwaway data directory, uploads a random artifact (streamed from
disk), makes a signed download link, then runs wrk with N connections, each request asking for a
random byte range, first against fleetlift, then against nginx serving the stored file. Prints
throughput, request rate and the server's resident memory (before and peak during the load).

    python bench/download.py                      # 200 MB, 100 connections, 20 s each
    python bench/download.py --size-mb 50 --duration 5

Installs wrk and nginx from Debian when they are missing (needs root).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from machine import free_port

BIN = Path(sys.executable).parent

WRK_SCRIPT = """
math.randomseed(os.time())
local size = {size}
local span = {span}
request = function()
  local first = math.random(0, size - span)
  return wrk.format("GET", nil, {{["Range"] = "bytes=" .. first .. "-" .. (first + span - 1)}})
end
"""

NGINX_CONF = """
user root;
worker_processes 2;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /files/ {{ alias {root}/; }}
  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location /_fleetlift_blobs/ {{ internal; alias {artifact_root}/; }}
    location / {{
      proxy_pass http://127.0.0.1:{offload_port};
      proxy_set_header Host $host;
    }}
  }}
}}
"""


def ensure_tools() -> None:
    missing = [tool for tool, package in (("wrk", "wrk"), ("nginx", "nginx")) if shutil.which(tool) is None]
    if missing:
        print(f"installing {', '.join(missing)} from Debian", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def wait_for(url: str) -> None:
    for _ in range(200):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakMemory(threading.Thread):
    """Samples a process's resident memory while a load runs."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, sum(rss_kib(pid) for pid in self.pids))
            time.sleep(0.1)

    def stop(self) -> int:
        self.running = False
        self.join()
        return self.peak


def children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in result.stdout.split()]


def run_wrk(url: str, script: Path, connections: int, duration: int, pids: list[int]) -> dict[str, float]:
    memory = PeakMemory(pids)
    before = sum(rss_kib(pid) for pid in pids)
    memory.start()
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = memory.stop()
    output = result.stdout
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    units = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    assert transfer and rate, output
    return {
        "mib_per_s": float(transfer.group(1)) * units[transfer.group(2)] / 1024**2,
        "requests_per_s": float(rate.group(1)),
        "errors": float(errors.group(1)) if errors else 0.0,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": peak / 1024,
    }


def check_bytes(url: str, source: Path, size: int) -> None:
    """Both paths answer a range with exactly the stored bytes."""
    first = size // 3
    response = httpx.get(url, headers={"Range": f"bytes={first}-{first + 99_999}"}, timeout=30)
    with source.open("rb") as handle:
        handle.seek(first)
        expected = handle.read(100_000)
    assert response.status_code == 206 and response.content == expected, (url, response.status_code)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--range-mb", type=int, default=4, help="bytes each request asks for")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="fleetlift server processes")
    args = parser.parse_args()
    ensure_tools()
    size = args.size_mb * 1024 * 1024
    span = args.range_mb * 1024 * 1024

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"artifact {args.size_mb} MB, {args.connections} connections, random {args.range_mb} MB ranges, "
        f"{args.duration} s per server"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
        env.update(FLEETLIFT_DATA_DIR=str(work / "data"), FLEETLIFT_LOG_LEVEL="WARNING")
        subprocess.run([str(BIN / "fleetlift"), "migrate"], env=env, check=True, capture_output=True)
        port = free_port()
        server = subprocess.Popen(
            [
                str(BIN / "fleetlift"),
                "serve",
                "--no-migrate",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        offload_port = free_port()
        offload = subprocess.Popen(
            [str(BIN / "fleetlift"), "serve", "--no-migrate", "--port", str(offload_port)],
            env={**env, "FLEETLIFT_ACCEL_REDIRECT_PREFIX": "/_fleetlift_blobs/"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nginx = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/healthz")
            token = subprocess.run(
                [str(BIN / "fleetlift"), "token", "create", "--role", "admin", "--subject", "bench"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            source = work / "artifact.bin"
            with source.open("wb") as handle:
                for _ in range(args.size_mb):
                    handle.write(os.urandom(1024 * 1024))
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
            started = time.perf_counter()
            with source.open("rb") as handle:
                uploaded = httpx.post(
                    f"{base}/api/v1/artifacts",
                    params={"name": "bench.bin", "version": "1"},
                    content=handle,
                    headers=headers,
                    timeout=300,
                )
            upload_seconds = time.perf_counter() - started
            uploaded.raise_for_status()
            artifact = uploaded.json()
            upload_rss = sum(rss_kib(pid) for pid in [server.pid, *children(server.pid)]) / 1024
            print(
                f"upload: {args.size_mb / upload_seconds:.0f} MiB/s, "
                f"server RSS after upload {upload_rss:.0f} MiB"
            )
            link = httpx.post(
                f"{base}/api/v1/artifacts/{artifact['id']}/link", headers={"Authorization": f"Bearer {token}"}
            ).json()
            script = work / "ranges.lua"
            script.write_text(WRK_SCRIPT.format(size=size, span=span))

            server_pids = [server.pid, *children(server.pid)]
            fleetlift = run_wrk(f"{base}{link['url']}", script, args.connections, args.duration, server_pids)

            stored = next(p for p in (work / "data" / "artifacts").rglob("blob_*") if p.is_file())
            nginx_port, proxy_port = free_port(), free_port()
            (work / "nginx.conf").write_text(
                NGINX_CONF.format(
                    workdir=work,
                    port=nginx_port,
                    root=stored.parent,
                    proxy_port=proxy_port,
                    offload_port=offload_port,
                    artifact_root=work / "data" / "artifacts",
                )
            )
            nginx = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf")], stderr=subprocess.DEVNULL)
            nginx_url = f"http://127.0.0.1:{nginx_port}/files/{stored.name}"
            wait_for(nginx_url)
            nginx_pids = [nginx.pid, *children(nginx.pid)]
            reference = run_wrk(nginx_url, script, args.connections, args.duration, nginx_pids)
            wait_for(f"http://127.0.0.1:{offload_port}/healthz")
            check_bytes(f"http://127.0.0.1:{proxy_port}{link['url']}", source, size)
            check_bytes(f"{base}{link['url']}", source, size)
            offloaded = run_wrk(
                f"http://127.0.0.1:{proxy_port}{link['url']}",
                script,
                args.connections,
                args.duration,
                [*nginx_pids, offload.pid],
            )
        finally:
            for process in (server, offload):
                process.terminate()
                process.wait(timeout=10)
            if nginx is not None:
                nginx.terminate()
                nginx.wait(timeout=10)

    for name, figures in (
        ("fleetlift", fleetlift),
        ("nginx", reference),
        ("nginx+fleetlift (X-Accel-Redirect)", offloaded),
    ):
        print(
            f"{name:<36} {figures['mib_per_s']:8.0f} MiB/s {figures['requests_per_s']:8.1f} req/s "
            f"errors={figures['errors']:.0f} "
            f"RSS {figures['rss_before_mib']:.0f} -> peak {figures['rss_peak_mib']:.0f} MiB"
        )
    print(f"fleetlift alone / nginx throughput: {fleetlift['mib_per_s'] / reference['mib_per_s']:.0%}")
    print(f"fleetlift behind nginx / nginx throughput: {offloaded['mib_per_s'] / reference['mib_per_s']:.0%}")


if __name__ == "__main__":
    main()
