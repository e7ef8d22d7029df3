"""What every benchmark prints about where it ran, and a free local port for the servers it starts.
The scripts run as ``python bench/<name>.py``, so this module sits beside them on ``sys.path``."""

from __future__ import annotations

import os
import platform
import socket
from datetime import UTC, datetime
from pathlib import Path


def machine(*components: str) -> str:
    """CPU, cores, Python, the given component versions, OS, load average and the time."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    parts = [model, f"{os.cpu_count()} cores", f"Python {platform.python_version()}", *components]
    parts += [platform.platform(), f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"]
    return ", ".join(parts) + f", {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
