"""The agent's journal: where the update in hand stands, written with fsync before each step.

After a power cut the runner reads it and knows which step was under way, so it can resume the
download, roll the installers back, or finish a step that is safe to repeat. It also keeps what
is installed, the outcomes already decided (so a repeated offer is answered, not re-installed)
and the reports the server has not received yet (sent when it is reachable again)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleetlift_agent.fsutil import write_json_durably

FINISHED_KEPT = 100
LOG_LINES_KEPT = 2000


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._document = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            document = {}
        except ValueError:
            # Written atomically, so a torn file is not expected; keep it for a human and start clean.
            self.path.rename(self.path.with_suffix(f".corrupt-{int(time.time())}"))
            document = {}
        document.setdefault("current", None)
        document.setdefault("finished", {})
        document.setdefault("installed", {})
        document.setdefault("outbox", [])
        return dict(document)

    def _save(self) -> None:
        write_json_durably(self.path, self._document)

    @contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            yield self._document
            self._save()

    # --- the update in hand ---------------------------------------------------------------

    @property
    def current(self) -> dict[str, Any] | None:
        with self._lock:
            current = self._document["current"]
            return None if current is None else dict(current)

    def begin(self, instructions: dict[str, Any]) -> None:
        with self._changing() as document:
            document["current"] = {
                "deployment_id": instructions["deployment_id"],
                "instructions": instructions,
                "phase": "downloading",
                "steps": {},
                "switched": [],
                "log": [],
                "started_at": time.time(),
            }

    def set_phase(self, phase: str) -> None:
        with self._changing() as document:
            document["current"]["phase"] = phase

    def set_step(self, payload_key: str, step: str) -> None:
        """Record that ``step`` of a payload is about to run (or, for ``done``, has run)."""
        with self._changing() as document:
            current = document["current"]
            current["steps"][payload_key] = step
            if step == "switch" and payload_key not in current["switched"]:
                current["switched"].append(payload_key)

    def refresh_instructions(self, instructions: dict[str, Any]) -> None:
        """Fresh download links for the same deployment (the old ones expire)."""
        with self._changing() as document:
            document["current"]["instructions"] = instructions

    def mark(self, flag: str) -> None:
        """Set a flag on the update in hand (e.g. that the rollback's reboot was asked for)."""
        with self._changing() as document:
            document["current"][flag] = True

    def log(self, line: str) -> None:
        stamped = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + " " + line
        with self._changing() as document:
            if document["current"] is None:
                return
            lines = document["current"]["log"]
            lines.append(stamped)
            del lines[:-LOG_LINES_KEPT]

    def finish(self, outcome: str, detail: str | None, installed: dict[str, str] | None = None) -> None:
        """Close the update in hand: its outcome is decided and queued for the server."""
        with self._changing() as document:
            current = document["current"]
            deployment_id = current["deployment_id"]
            document["finished"][deployment_id] = {"outcome": outcome, "detail": detail, "at": time.time()}
            while len(document["finished"]) > FINISHED_KEPT:
                oldest = min(document["finished"], key=lambda key: document["finished"][key]["at"])
                del document["finished"][oldest]
            if installed:
                document["installed"].update(installed)
            log = "\n".join(current["log"]) if outcome not in ("succeeded", "already_installed") else None
            document["outbox"].append(
                {"deployment_id": deployment_id, "status": outcome, "detail": detail, "log": log}
            )
            document["current"] = None

    # --- what is decided and installed ----------------------------------------------------

    def outcome_of(self, deployment_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._document["finished"].get(deployment_id)
            return None if found is None else dict(found)

    @property
    def installed(self) -> dict[str, str]:
        with self._lock:
            return dict(self._document["installed"])

    # --- reports the server has not received yet ------------------------------------------

    def queue_report(self, deployment_id: str, status: str, detail: str | None = None) -> None:
        with self._changing() as document:
            document["outbox"].append(
                {"deployment_id": deployment_id, "status": status, "detail": detail, "log": None}
            )

    def outbox(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._document["outbox"]]

    def sent(self, count: int) -> None:
        """The first ``count`` queued reports reached the server."""
        with self._changing() as document:
            del document["outbox"][:count]
