"""The local API and SDK a hosting application uses, over real loopback HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleetlift_agent.control import Controller
from fleetlift_agent.local_api import LocalApi
from fleetlift_agent.sdk import AgentClient, AgentRefused
from fleetlift_agent.state import Event, Phase


@pytest.fixture
def callbacks() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/agent-events", received
    server.shutdown()
    server.server_close()


def test_the_application_drives_an_update(
    tmp_path: Path, callbacks: tuple[str, list[dict[str, str]]]
) -> None:
    url, received = callbacks
    controller = Controller(tmp_path / "state.json")
    api = LocalApi(controller, callback_url=url)
    api.start()
    try:
        client = AgentClient(api.port)
        assert client.state().state == "BUSY"  # a new agent waits for the application
        assert client.ready().state == "READY"
        controller.apply(Event.PATCH_OFFERED)  # the server asked for an update
        controller.apply(Event.DOWNLOADED)
        controller.apply(Event.ANNOUNCE)
        assert client.state().state == "WAIT_CONFIRM_PATCH"
        with pytest.raises(AgentRefused, match="no base"):
            client.confirm_base()
        assert client.confirm_patch().state == "APPLYING_PATCH"
        with pytest.raises(AgentRefused, match="too late"):
            client.busy()
        controller.apply(Event.INTEGRITY_OK)
        assert client.busy().state == "BUSY"
    finally:
        api.stop()
    assert [event["state"] for event in received] == [
        "READY",
        "INTRANSIT_PATCH",
        "READY_WITHPATCH",
        "WAIT_CONFIRM_PATCH",
        "APPLYING_PATCH",
        "READY",
        "BUSY",
    ]


def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "state.json")
    controller.apply(Event.READY)
    controller.apply(Event.BASE_OFFERED)
    restarted = Controller(tmp_path / "state.json")
    assert restarted.state.phase is Phase.INTRANSIT_BASE
    (tmp_path / "state.json").write_text("not json")
    assert Controller(tmp_path / "state.json").state.phase is Phase.BUSY  # unreadable: the safe default
