"""The script installer and the operator's hooks, running real shell scripts."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from fleetlift_agent.installers import InstallError, Payload, Update
from fleetlift_agent.installers.script import Hooks, ScriptConfig, ScriptInstaller

UPDATE = Update("dep-42", "modem-firmware", "7.1", "patch")

# Appends "<stage> <version> <target>" to a journal beside the device's work directory.
RECORDING = """#!/bin/sh
echo "$1 $FLEETLIFT_RELEASE_VERSION $FLEETLIFT_TARGET $FLEETLIFT_DEPLOYMENT_ID" >> "$JOURNAL_DIR/journal"
"""


def script_payload(tmp_path: Path, body: str, journal_dir: Path | None = None) -> Payload:
    if journal_dir is not None:
        body = body.replace("$JOURNAL_DIR", str(journal_dir))
    path = tmp_path / "update.sh"
    path.write_text(body)  # downloaded files arrive without an execute bit
    spec = {
        "type": "file",
        "artifact_id": "art-9",
        "filename": "update.sh",
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "installer": "script",
        "target": "modem",
    }
    return Payload("script", "modem", spec, path)


@pytest.fixture
def installer(tmp_path: Path) -> ScriptInstaller:
    return ScriptInstaller(ScriptConfig(work_dir=tmp_path / "work", timeout=5))


def journal(tmp_path: Path) -> list[str]:
    path = tmp_path / "journal"
    return path.read_text().splitlines() if path.exists() else []


def test_the_stages_run_in_order_with_the_update_in_the_environment(
    tmp_path: Path, installer: ScriptInstaller
) -> None:
    payload = script_payload(tmp_path, RECORDING, tmp_path)
    for step in (installer.prepare, installer.switch, installer.check, installer.commit):
        step(UPDATE, payload)

    assert journal(tmp_path) == [
        "install 7.1 modem dep-42",
        "check 7.1 modem dep-42",
        "commit 7.1 modem dep-42",
    ]
    assert installer.installed() == {"modem": "7.1"}
    assert not (tmp_path / "work" / "dep-42").exists()


def test_the_agents_environment_does_not_reach_the_script(
    tmp_path: Path, installer: ScriptInstaller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETLIFT_AGENT_TOKEN", "secret-device-token")
    payload = script_payload(tmp_path, f'#!/bin/sh\nenv > "{tmp_path}/env"\n')
    installer.prepare(UPDATE, payload)
    installer.switch(UPDATE, payload)

    seen = (tmp_path / "env").read_text()
    assert "secret-device-token" not in seen
    assert "FLEETLIFT_STAGE=install" in seen


def test_a_failing_install_reports_the_end_of_its_output(tmp_path: Path, installer: ScriptInstaller) -> None:
    body = '#!/bin/sh\nseq 1 5000\necho "flash write failed at block 17" >&2\nexit 4\n'
    payload = script_payload(tmp_path, body)
    installer.prepare(UPDATE, payload)

    with pytest.raises(InstallError) as failure:
        installer.switch(UPDATE, payload)
    message = str(failure.value)
    assert "install stage failed with exit status 4" in message
    assert message.rstrip().endswith("flash write failed at block 17")
    assert "\n1\n" not in message  # only the tail of the output, not all of it
    assert len(message) < 4300


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a killed orphan may linger as a zombie until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_script_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    installer = ScriptInstaller(ScriptConfig(work_dir=tmp_path / "work", timeout=0.5))
    # The child keeps the output open: the whole process group must go, or the test would hang.
    payload = script_payload(
        tmp_path, f'#!/bin/sh\necho erasing\nsleep 30 &\necho $! > "{tmp_path}/child"\nwait\n'
    )
    installer.prepare(UPDATE, payload)

    with pytest.raises(InstallError, match=r"did not finish within 0.5 s(.|\n)*erasing"):
        installer.switch(UPDATE, payload)
    child = int((tmp_path / "child").read_text())
    # SIGKILL is delivered asynchronously: on a busy machine the child may take a moment to die.
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)


def test_exit_status_3_at_check_means_the_script_has_no_check(
    tmp_path: Path, installer: ScriptInstaller
) -> None:
    body = RECORDING + '[ "$1" = check ] && exit 3\nexit 0\n'
    payload = script_payload(tmp_path, body, tmp_path)
    installer.prepare(UPDATE, payload)
    installer.switch(UPDATE, payload)

    installer.check(UPDATE, payload)
    assert journal(tmp_path)[-1].startswith("check ")


def test_a_failing_check_then_rollback_runs_the_rollback_stage(
    tmp_path: Path, installer: ScriptInstaller
) -> None:
    body = RECORDING + '[ "$1" = check ] && { echo "modem answers AT+VER with 7.0"; exit 1; }\nexit 0\n'
    payload = script_payload(tmp_path, body, tmp_path)
    installer.prepare(UPDATE, payload)
    installer.switch(UPDATE, payload)

    with pytest.raises(InstallError, match=r"check stage failed(.|\n)*AT\+VER with 7.0"):
        installer.check(UPDATE, payload)
    installer.rollback(UPDATE, payload)
    installer.rollback(UPDATE, payload)

    stages = [line.split()[0] for line in journal(tmp_path)]
    assert stages == ["install", "check", "rollback"]
    assert installer.installed() == {}


def test_rollback_after_prepare_only_does_not_run_the_script(
    tmp_path: Path, installer: ScriptInstaller
) -> None:
    payload = script_payload(tmp_path, RECORDING, tmp_path)
    installer.prepare(UPDATE, payload)
    installer.rollback(UPDATE, payload)

    assert journal(tmp_path) == []
    assert not (tmp_path / "work" / "dep-42").exists()


def test_install_that_says_it_is_unsupported_fails(tmp_path: Path, installer: ScriptInstaller) -> None:
    payload = script_payload(tmp_path, "#!/bin/sh\nexit 3\n")
    installer.prepare(UPDATE, payload)

    with pytest.raises(InstallError, match="does not support the install stage"):
        installer.switch(UPDATE, payload)


def test_finished_stages_are_not_run_again(tmp_path: Path, installer: ScriptInstaller) -> None:
    payload = script_payload(tmp_path, RECORDING, tmp_path)
    for step in (installer.prepare, installer.switch, installer.check, installer.commit):
        step(UPDATE, payload)
        step(UPDATE, payload)

    stages = [line.split()[0] for line in journal(tmp_path)]
    assert stages == ["install", "check", "check", "commit"]


def test_a_stage_cut_off_by_a_power_cut_runs_again(tmp_path: Path) -> None:
    work = tmp_path / "work"
    payload = script_payload(tmp_path, RECORDING, tmp_path)
    ScriptInstaller(ScriptConfig(work_dir=work)).prepare(UPDATE, payload)
    # The install stage had started (its marker is written first) but never finished.
    (work / "dep-42" / "modem" / "install-started.done").write_bytes(b"")

    after_restart = ScriptInstaller(ScriptConfig(work_dir=work))
    after_restart.switch(UPDATE, payload)
    after_restart.rollback(UPDATE, payload)
    stages = [line.split()[0] for line in journal(tmp_path)]
    assert stages == ["install", "rollback"]


def test_a_payload_that_is_not_a_script_is_refused(tmp_path: Path, installer: ScriptInstaller) -> None:
    payload = script_payload(tmp_path, "echo no shebang here\n")

    with pytest.raises(InstallError, match="not a script"):
        installer.prepare(UPDATE, payload)


def test_switch_without_prepare_is_an_error(tmp_path: Path, installer: ScriptInstaller) -> None:
    with pytest.raises(InstallError, match="was not prepared"):
        installer.switch(UPDATE, script_payload(tmp_path, RECORDING))


# -- hooks ------------------------------------------------------------------------------------------


def hook(hooks_dir: Path, phase: str, name: str, body: str, executable: bool = True) -> None:
    directory = hooks_dir / f"{phase}.d"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    path.chmod(0o755 if executable else 0o644)


def recording_hook(log: Path, label: str) -> str:
    variables = "$FLEETLIFT_INSTALLER $FLEETLIFT_TARGET $FLEETLIFT_RELEASE_VERSION"
    return f'#!/bin/sh\necho "{label} {variables}" >> {log}\n'


def test_hooks_run_in_name_order_with_the_update(tmp_path: Path) -> None:
    hooks_dir, log = tmp_path / "hooks", tmp_path / "hooks.log"
    hook(hooks_dir, "pre-install", "20-battery", recording_hook(log, "battery"))
    hook(hooks_dir, "pre-install", "10-disk", recording_hook(log, "disk"))
    hook(hooks_dir, "pre-install", "30-disabled", recording_hook(log, "disabled"), executable=False)
    hook(hooks_dir, "pre-install", ".hidden", recording_hook(log, "hidden"))
    hook(hooks_dir, "post-install", "50-notify", recording_hook(log, "notify"))
    hooks = Hooks(hooks_dir)
    payload = script_payload(tmp_path, RECORDING)

    hooks.pre_install(UPDATE, payload)
    hooks.post_install(UPDATE, payload)

    assert log.read_text().splitlines() == [
        "disk script modem 7.1",
        "battery script modem 7.1",
        "notify script modem 7.1",
    ]


def test_a_failing_pre_install_hook_refuses_the_update_and_stops_later_hooks(tmp_path: Path) -> None:
    hooks_dir, log = tmp_path / "hooks", tmp_path / "hooks.log"
    hook(hooks_dir, "pre-install", "10-battery", '#!/bin/sh\necho "battery at 8%, need 30%"\nexit 1\n')
    hook(hooks_dir, "pre-install", "20-later", recording_hook(log, "later"))

    with pytest.raises(InstallError, match=r"pre-install hook 10-battery failed(.|\n)*battery at 8%"):
        Hooks(hooks_dir).pre_install(UPDATE)
    assert not log.exists()


def test_a_failing_post_install_hook_is_an_install_error(tmp_path: Path) -> None:
    hooks_dir = tmp_path / "hooks"
    hook(hooks_dir, "post-install", "10-smoke", "#!/bin/sh\necho 'service did not answer' >&2\nexit 2\n")

    with pytest.raises(InstallError, match="post-install hook 10-smoke failed with exit status 2"):
        Hooks(hooks_dir).post_install(UPDATE, script_payload(tmp_path, RECORDING))


def test_a_hanging_hook_is_stopped(tmp_path: Path) -> None:
    hooks_dir = tmp_path / "hooks"
    hook(hooks_dir, "pre-install", "10-slow", "#!/bin/sh\nsleep 30\n")

    with pytest.raises(InstallError, match=r"did not finish within 0\.3 s"):
        Hooks(hooks_dir, timeout=0.3).pre_install(UPDATE)


def test_no_hooks_directory_means_no_hooks(tmp_path: Path) -> None:
    hooks = Hooks(tmp_path / "absent")
    hooks.pre_install(UPDATE)
    hooks.post_install(UPDATE)
    assert hooks.hooks("pre-install") == []
