"""A runner whose server side is a script: polls answer what the test offers, reports are kept.

Files, the journal, the application state machine and the installers' bookkeeping are real; only
the HTTP calls and the download are replaced."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetlift_agent.client import AuthSettings, DeviceClient, PollAnswer
from fleetlift_agent.control import Controller
from fleetlift_agent.identity import DeviceKey
from fleetlift_agent.installers import Payload, Update
from fleetlift_agent.journal import Journal
from fleetlift_agent.runner import Runner, RunnerSettings, Wakeup


class ScriptedClient(DeviceClient):
    """Answers polls with ``offer`` (None: nothing to do) and records every call."""

    def __init__(self, data_dir: Path, device_id: str = "gw-1", tenant_id: str = "default") -> None:
        key = DeviceKey.load_or_create(data_dir / "device-key.pem")
        super().__init__(
            "http://fleetlift.invalid",
            key,
            AuthSettings(identity={"device_id": device_id}, device_type="gw", architecture="x86_64"),
        )
        self.device_id = device_id
        self.tenant_id = tenant_id
        self.offer: dict[str, Any] | None = None
        self.polls: list[float] = []
        self.reports: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def poll(self, etag: str | None = None, wait: int = 0) -> PollAnswer:
        with self._lock:
            self.polls.append(time.monotonic())
            offer = self.offer
        return PollAnswer(offer, False, "etag-1" if offer else None, None)

    def report(self, deployment_id: str, status: str, detail: str | None = None) -> None:
        with self._lock:
            self.reports.append((deployment_id, status))
            if status in ("succeeded", "failed", "rolled_back", "already_installed"):
                self.offer = None  # the server stops offering a finished deployment

    def upload_log(self, deployment_id: str, log: str) -> None:
        pass

    def send_inventory(self, inventory: dict[str, Any]) -> None:
        pass

    def statuses(self) -> list[str]:
        with self._lock:
            return [status for _, status in self.reports]


class LocalFiles:
    """The download: the offered content is already here (size and hash are the offer's)."""

    def __init__(self, directory: Path, content: bytes) -> None:
        self.directory = directory
        self.content = content
        directory.mkdir(parents=True, exist_ok=True)

    def fetch(self, url: str, *, size: int, sha256: str, name: str, **_: Any) -> Path:
        path = self.path_for(name)
        path.write_bytes(self.content)
        return path

    def prune(self, keep: set[str]) -> None:
        pass

    def path_for(self, name: str) -> Path:
        return self.directory / name


class Trusting:
    def verify(self, tuf_target: str, path: Path) -> None:
        pass


class RecordingInstaller:
    """An installer that only writes down the steps it was asked for."""

    kind = "script"
    needs_reboot = False

    def __init__(self) -> None:
        self.steps: list[str] = []

    def prepare(self, update: Update, payload: Payload) -> None:
        self.steps.append("prepare")

    def switch(self, update: Update, payload: Payload) -> None:
        self.steps.append("switch")

    def check(self, update: Update, payload: Payload) -> None:
        self.steps.append("check")

    def commit(self, update: Update, payload: Payload) -> None:
        self.steps.append("commit")

    def rollback(self, update: Update, payload: Payload) -> None:
        self.steps.append("rollback")

    def installed(self) -> dict[str, str]:
        return {}


CONTENT = b"#!/bin/sh\nexit 0\n"


def offer(
    deployment_id: str = "dep-1", *, forced: bool | None = None, version: str = "2.0"
) -> dict[str, Any]:
    """A poll answer for a patch with one script file; ``forced`` as the server says it (None: absent)."""
    answer: dict[str, Any] = {
        "deployment_id": deployment_id,
        "state": "notified",
        "release": {"id": "rel-1", "name": "app", "version": version, "kind": "patch"},
        "containers": [],
        "files": [
            {
                "type": "file",
                "artifact_id": "art-1",
                "filename": "install.sh",
                "size": len(CONTENT),
                "sha256": hashlib.sha256(CONTENT).hexdigest(),
                "url": "/artifacts/art-1",
                "tuf_target": "art-1/install.sh",
                "installer": "script",
                "target": "app",
            }
        ],
        "poll_interval_seconds": 60,
    }
    if forced is not None:
        answer["forced"] = forced
    return answer


def make_runner(
    data_dir: Path,
    *,
    app_control: bool = False,
    poll_interval: int = 300,
    wakeup: Wakeup | None = None,
    installer: RecordingInstaller | None = None,
    device_id: str = "gw-1",
) -> tuple[Runner, ScriptedClient, Controller | None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    client = ScriptedClient(data_dir, device_id=device_id)
    controller = Controller(data_dir / "app-state.json") if app_control else None
    runner = Runner(
        client=client,
        journal=Journal(data_dir / "journal.json"),
        fetcher=LocalFiles(data_dir / "downloads", CONTENT),
        verifier=Trusting(),
        installers={"script": installer or RecordingInstaller()},  # type: ignore[dict-item]
        controller=controller,
        wakeup=wakeup,
        settings=RunnerSettings(poll_interval=poll_interval, app_control=app_control, inventory_interval=1e9),
        data_dir=data_dir,
    )
    return runner, client, controller


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], timeout: float = 10, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} never held within {timeout}s")
