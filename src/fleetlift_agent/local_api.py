"""The local HTTP API the hosting application's SDK talks to (loopback only, stdlib only, so it
stays small on a gateway): POST /ready, /busy, /confirm-patch, /confirm-base; GET /state. State
changes are also POSTed to an optional callback URL."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fleetlift_agent.control import Controller
from fleetlift_agent.state import AgentState, Event, IllegalTransition

COMMANDS = {
    "/ready": Event.READY,
    "/busy": Event.BUSY,
    "/confirm-patch": Event.CONFIRM_PATCH,
    "/confirm-base": Event.CONFIRM_BASE,
}


def _document(state: AgentState) -> dict[str, str]:
    return {"state": state.phase.value, "pending": state.pending.value}


class LocalApi:
    """Serves the controller on 127.0.0.1; ``callback_url`` receives every state change."""

    def __init__(self, controller: Controller, *, port: int = 0, callback_url: str | None = None) -> None:
        self.controller = controller
        self.callback_url = callback_url
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/state":
                    self._answer(200, _document(api.controller.state))
                else:
                    self._answer(404, {"error": f"no such path {self.path}"})

            def do_POST(self) -> None:
                event = COMMANDS.get(self.path)
                if event is None:
                    self._answer(404, {"error": f"no such command {self.path}"})
                    return
                try:
                    self._answer(200, _document(api.controller.apply(event)))
                except IllegalTransition as error:
                    self._answer(409, {"error": str(error), **_document(api.controller.state)})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        if callback_url:
            controller.subscribe(self._notify)

    def _notify(self, before: AgentState, after: AgentState, event: Event) -> None:
        assert self.callback_url is not None
        body = json.dumps({**_document(after), "previous": before.phase.value, "event": event.value}).encode()
        request = urllib.request.Request(
            self.callback_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        # The application polls /state as well: a missed callback loses nothing.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).close()

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
