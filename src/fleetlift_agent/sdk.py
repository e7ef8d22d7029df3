"""A small client for hosting applications: tell the agent when updates may happen."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


class AgentRefused(Exception):
    """The agent could not act on the command in its current state."""


@dataclass(frozen=True)
class AgentStatus:
    state: str
    pending: str


class AgentClient:
    """``AgentClient(port).ready()``, ``.busy()``, ``.confirm_patch()``, ``.confirm_base()``, ``.state()``."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.base = f"http://{host}:{port}"
        self.timeout = timeout

    def _call(self, method: str, path: str) -> AgentStatus:
        request = urllib.request.Request(
            self.base + path, method=method, data=b"" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as error:
            document = json.loads(error.read() or b"{}")
            raise AgentRefused(document.get("error", f"HTTP {error.code}")) from None
        return AgentStatus(document["state"], document["pending"])

    def ready(self) -> AgentStatus:
        return self._call("POST", "/ready")

    def busy(self) -> AgentStatus:
        return self._call("POST", "/busy")

    def confirm_patch(self) -> AgentStatus:
        return self._call("POST", "/confirm-patch")

    def confirm_base(self) -> AgentStatus:
        return self._call("POST", "/confirm-base")

    def state(self) -> AgentStatus:
        return self._call("GET", "/state")
