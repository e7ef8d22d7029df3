"""The agent's journal (what survives a restart) and its key (what the server verifies)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleetlift.device_api.identity import load_device_key, verify_request_signature
from fleetlift.errors import Unauthenticated
from fleetlift_agent.identity import DeviceKey, default_identity
from fleetlift_agent.journal import FINISHED_KEPT, Journal

OFFER = {"deployment_id": "dep_1", "release": {"name": "app", "version": "2"}, "files": [], "containers": []}


def test_the_update_in_hand_survives_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    journal.begin(OFFER)
    journal.set_phase("installing")
    journal.set_step("0", "prepare")
    journal.set_step("0", "switch")
    journal.log("switched app to 2")
    again = Journal(tmp_path / "journal.json")
    current = again.current
    assert current is not None
    assert current["phase"] == "installing" and current["steps"] == {"0": "switch"}
    assert current["switched"] == ["0"] and current["log"][-1].endswith("switched app to 2")


def test_a_decided_outcome_is_queued_once_and_remembered(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    journal.begin(OFFER)
    journal.log("health check failed")
    journal.finish("rolled_back", "app is not healthy", installed=None)
    assert journal.current is None
    decided = journal.outcome_of("dep_1")
    assert decided is not None
    assert (decided["outcome"], decided["detail"]) == ("rolled_back", "app is not healthy")
    [report] = Journal(tmp_path / "journal.json").outbox()
    assert report["status"] == "rolled_back" and "health check failed" in report["log"]
    journal.sent(1)
    assert Journal(tmp_path / "journal.json").outbox() == []


def test_success_records_what_is_installed_without_a_log(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    journal.begin(OFFER)
    journal.finish("succeeded", None, installed={"package:app": "2"})
    assert journal.installed == {"package:app": "2"}
    assert journal.outbox()[0]["log"] is None


def test_old_outcomes_are_forgotten_beyond_the_limit(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    for number in range(FINISHED_KEPT + 5):
        journal.begin({**OFFER, "deployment_id": f"dep_{number}"})
        journal.finish("succeeded", None)
    assert journal.outcome_of("dep_0") is None
    assert journal.outcome_of(f"dep_{FINISHED_KEPT + 4}") is not None


def test_an_unreadable_journal_is_kept_aside_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text("{not json")
    journal = Journal(path)
    assert journal.current is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("journal.corrupt")]


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "rsa"])
def test_the_server_verifies_what_the_agent_signs(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "device-key.pem"
    key = DeviceKey.load_or_create(path, algorithm)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.dumps({"identity": {"device_id": "gw-1"}}).encode()
    public = load_device_key(key.public_pem())
    verify_request_signature(public, body, key.sign(body))
    with pytest.raises(Unauthenticated):
        verify_request_signature(public, body + b" ", key.sign(body))
    reloaded = DeviceKey.load_or_create(path, algorithm)
    assert reloaded.public_pem() == key.public_pem()  # the same device after a restart


def test_the_default_identity_does_not_expose_the_machine_id(tmp_path: Path) -> None:
    identity = default_identity()
    assert identity["mac"] and identity["hostname"]
    machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    assert not machine_id or machine_id not in json.dumps(identity)
