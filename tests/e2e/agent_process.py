"""The fleetlift agent as a real process (`fleetlift-agent run`), for end-to-end tests."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


class AgentProcess:
    def __init__(self, server: str, data_dir: Path, device_id: str, *extra: str) -> None:
        self.server = server
        self.data_dir = data_dir
        self.device_id = device_id
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "agent.log"

    def start(self) -> AgentProcess:
        self.starts += 1
        command = [
            str(BIN / "fleetlift-agent"),
            "run",
            "--server",
            self.server,
            "--data-dir",
            str(self.data_dir),
            "--identity",
            f"device_id={self.device_id}",
            "--device-type",
            "e2e-gw",
            "--poll-interval",
            "1",
            "--log-level",
            "DEBUG",
            *self.extra,
        ]
        with self.log_path.open("a") as log:
            log.write(f"--- start {self.starts}\n")
            log.flush()
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True
            )
        return self

    def kill9(self) -> None:
        """A power cut, as far as the agent can tell."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"agent log never said {needle!r}:\n{self.log()[-4000:]}")


def code_package(version: str, check: str | None = "exit 0", padding: int = 0) -> bytes:
    """A tar.gz code package with an app file and an optional fleetlift-check script."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        members: dict[str, tuple[bytes, int]] = {"app.txt": (f"app {version}\n".encode(), 0o644)}
        if check is not None:
            members["fleetlift-check"] = (f"#!/bin/sh\n{check}\n".encode(), 0o755)
        if padding:
            members["padding.bin"] = (os.urandom(padding), 0o644)
        for name, (content, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
