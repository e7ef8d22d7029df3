"""The A/B slot installer with the simulated bootloader and with real bootloader commands."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fleetlift_agent.installers import InstallError, Payload, Update
from fleetlift_agent.installers.ab_slot import (
    ABSlotConfig,
    ABSlotInstaller,
    BootCommands,
    CommandBootloader,
    SimulatedBootloader,
    slot_files,
)

FACTORY = b"factory root filesystem\n" * 1000


class Device:
    """A simulated gateway: slot files, a boot selector, and a fresh agent after every boot."""

    def __init__(self, root: Path, *, boot_limit: int = 1, health: list[str] | None = None) -> None:
        self.root = root
        self.slots = slot_files(root / "slots")
        self.slots["a"].parent.mkdir(parents=True)
        self.slots["a"].write_bytes(FACTORY)
        self.boot_limit = boot_limit
        self.health = health
        self.power_on()

    def power_on(self) -> None:
        """What a supervisor does after a reboot: the bootloader runs, then a new agent process starts."""
        self.bootloader = SimulatedBootloader(
            self.root / "boot" / "selector.json", boot_limit=self.boot_limit
        )
        self.running = self.bootloader.boot()
        self.installer = ABSlotInstaller(
            ABSlotConfig(
                slots=self.slots,
                state_dir=self.root / "state",
                bootloader=self.bootloader,
                health_command=self.health,
                health_timeout=5,
            )
        )

    def selector(self) -> dict[str, Any]:
        return self.bootloader.read()


def image(tmp_path: Path, version: str, size: int = 300_000) -> tuple[Update, Payload]:
    content = (f"rootfs {version}\n".encode() * (size // 10 + 1))[:size]
    path = tmp_path / f"rootfs-{version}.img"
    path.write_bytes(content)
    spec = {
        "type": "file",
        "artifact_id": f"art-{version}",
        "filename": path.name,
        "size": size,
        "sha256": hashlib.sha256(content).hexdigest(),
        "installer": "ab-slot",
        "target": "gateway-os",
    }
    return Update(f"dep-{version}", "gateway-os", version, "base"), Payload(
        "ab-slot", "gateway-os", spec, path
    )


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path / "device")


def install_and_reboot(device: Device, update: Update, payload: Payload) -> None:
    device.installer.prepare(update, payload)
    device.installer.switch(update, payload)
    device.installer.reboot()
    device.power_on()


def test_full_flow_writes_the_passive_slot_boots_it_and_commits(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    assert device.running == "a"

    install_and_reboot(device, update, payload)
    assert device.running == "b"
    device.installer.check(update, payload)
    device.installer.commit(update, payload)

    assert device.slots["b"].read_bytes() == payload.path.read_bytes()
    assert device.slots["a"].read_bytes() == FACTORY
    assert device.selector()["active"] == "b"
    assert device.selector()["upgrade_available"] is False
    assert device.installer.installed() == {"gateway-os": "2.0"}
    device.power_on()
    assert device.running == "b"


def test_the_next_update_goes_to_the_other_slot_and_truncates_it(tmp_path: Path, device: Device) -> None:
    for version, size in (("2.0", 300_000), ("3.0", 200_000), ("4.0", 100_000)):
        update, payload = image(tmp_path, version, size)
        install_and_reboot(device, update, payload)
        device.installer.check(update, payload)
        device.installer.commit(update, payload)

    assert device.running == "b"
    assert device.slots["b"].stat().st_size == 100_000
    assert device.slots["a"].read_bytes() == image(tmp_path, "3.0", 200_000)[1].path.read_bytes()
    assert device.installer.installed() == {"gateway-os": "4.0"}


def test_installed_reports_the_committed_slot_during_a_trial_boot(tmp_path: Path, device: Device) -> None:
    first, first_payload = image(tmp_path, "2.0")
    install_and_reboot(device, first, first_payload)
    device.installer.commit(first, first_payload)
    second, second_payload = image(tmp_path, "3.0")

    install_and_reboot(device, second, second_payload)
    assert device.running == "a"
    assert device.installer.installed() == {"gateway-os": "2.0"}


def test_a_corrupt_slot_write_is_detected(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    # The bytes change between the download's verification and the slot write (a bad SD card, a bit flip).
    assert payload.path is not None
    damaged = bytearray(payload.path.read_bytes())
    damaged[1000] ^= 0xFF
    payload.path.write_bytes(bytes(damaged))

    with pytest.raises(InstallError, match=r"slot b .* reads back with SHA-256 .* expected"):
        device.installer.prepare(update, payload)
    with pytest.raises(InstallError, match="does not hold the verified image"):
        device.installer.switch(update, payload)
    assert device.selector().get("upgrade_available", False) is False


def test_a_new_slot_never_committed_falls_back_after_the_boot_limit(tmp_path: Path) -> None:
    device = Device(tmp_path / "device", boot_limit=3)
    update, payload = image(tmp_path, "2.0")
    install_and_reboot(device, update, payload)

    # The new system hangs before the agent can check it; the watchdog resets the board each time.
    booted = [device.running]
    for _ in range(3):
        device.power_on()
        booted.append(device.running)
    assert booted == ["b", "b", "b", "a"]

    with pytest.raises(InstallError, match="the new slot did not boot; the bootloader fell back to slot a"):
        device.installer.check(update, payload)
    device.installer.rollback(update, payload)
    assert not device.installer.rollback_needs_reboot()
    assert device.installer.installed() == {}  # still the factory image
    device.power_on()
    assert device.running == "a"


def test_check_before_the_reboot_says_the_new_slot_did_not_boot(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    device.installer.prepare(update, payload)
    device.installer.switch(update, payload)

    with pytest.raises(InstallError, match="fell back to slot a"):
        device.installer.check(update, payload)


def test_a_failing_health_command_rolls_back_with_a_second_reboot(tmp_path: Path) -> None:
    health = ["/bin/sh", "-c", 'echo "slot $FLEETLIFT_SLOT: modem did not come up"; exit 1']
    device = Device(tmp_path / "device", health=health)
    update, payload = image(tmp_path, "2.0")
    install_and_reboot(device, update, payload)

    with pytest.raises(InstallError, match="slot b: modem did not come up"):
        device.installer.check(update, payload)
    device.installer.rollback(update, payload)
    assert device.installer.rollback_needs_reboot()

    # The agent restarts before it could reboot: the debt survives in its state.
    restarted = ABSlotInstaller(device.installer.config)
    assert restarted.rollback_needs_reboot()

    restarted.reboot()
    device.power_on()
    assert device.running == "a"
    device.installer.rollback(update, payload)
    assert not device.installer.rollback_needs_reboot()
    device.power_on()
    assert device.running == "a"


def test_a_passing_health_command_sees_the_update(tmp_path: Path) -> None:
    record = tmp_path / "health.txt"
    health = ["/bin/sh", "-c", f'echo "$FLEETLIFT_RELEASE_VERSION $FLEETLIFT_SLOT" > {record}']
    device = Device(tmp_path / "device", health=health)
    update, payload = image(tmp_path, "2.0")
    install_and_reboot(device, update, payload)

    device.installer.check(update, payload)
    assert record.read_text() == "2.0 b\n"


def test_rollback_after_switch_before_the_reboot_keeps_the_old_slot(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    device.installer.prepare(update, payload)
    device.installer.switch(update, payload)
    assert device.selector()["upgrade_available"] is True

    device.installer.rollback(update, payload)
    assert not device.installer.rollback_needs_reboot()
    assert device.selector()["upgrade_available"] is False
    device.power_on()
    assert device.running == "a"
    assert device.installer.installed() == {}


def test_every_step_can_run_twice(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    device.installer.prepare(update, payload)
    written = device.slots["b"].stat().st_mtime_ns
    device.installer.prepare(update, payload)
    assert device.slots["b"].stat().st_mtime_ns == written  # verified already: not written again
    device.installer.switch(update, payload)
    device.installer.switch(update, payload)
    device.installer.reboot()
    device.power_on()
    for step in (device.installer.check, device.installer.commit):
        step(update, payload)
        step(update, payload)
    assert device.installer.installed() == {"gateway-os": "2.0"}

    other, other_payload = image(tmp_path, "3.0")
    device.installer.prepare(other, other_payload)
    device.installer.rollback(other, other_payload)
    device.installer.rollback(other, other_payload)
    assert device.installer.installed() == {"gateway-os": "2.0"}


def test_a_cut_off_slot_write_is_written_again(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    device.installer.prepare(update, payload)
    # Power is cut while prepare re-runs for some reason: half the slot is new, and no metadata says so.
    (device.root / "state" / "slot-b.json").unlink()
    with device.slots["b"].open("r+b") as slot:
        slot.write(b"\0" * 5000)

    device.installer.prepare(update, payload)
    assert device.slots["b"].read_bytes() == payload.path.read_bytes()


# -- a bootloader driven by commands ------------------------------------------------------------------


def command_bootloader(tmp_path: Path) -> tuple[CommandBootloader, Path]:
    """An fw_printenv/fw_setenv stand-in: an environment file edited by shell commands."""
    env = tmp_path / "uboot.env"
    env.write_text("boot_slot=a\nupgrade_available=0\nbootcount=0\n")
    log = tmp_path / "commands.log"
    set_env = f'sh -c \'printf "boot_slot=%s\\nupgrade_available=%s\\nbootcount=0\\n" "$0" "$1" > {env}\''
    commands = BootCommands(
        mark_next_boot=f"{set_env} {{slot}} 1",
        commit=f"sh -c 'sed -i s/upgrade_available=1/upgrade_available=0/ {env}'",
        mark_active=f"{set_env} {{slot}} 0",
        reboot=f"sh -c 'echo reboot >> {log}'",
        read_env=f"cat {env}",
        slot_variable="boot_slot",
    )
    slots = slot_files(tmp_path / "slots")
    return CommandBootloader(commands, slots), env


def test_command_bootloader_reads_and_sets_the_environment(tmp_path: Path) -> None:
    bootloader, env = command_bootloader(tmp_path)
    assert bootloader.booted_slot() == "a"

    bootloader.mark_next_boot("b")
    assert bootloader.environment() == {"boot_slot": "b", "upgrade_available": "1", "bootcount": "0"}
    bootloader.commit("b")
    assert "upgrade_available=0" in env.read_text()
    bootloader.reboot()
    assert (tmp_path / "commands.log").read_text() == "reboot\n"


def test_command_bootloader_drives_the_installer(tmp_path: Path) -> None:
    bootloader, env = command_bootloader(tmp_path)
    slots = slot_files(tmp_path / "slots")
    slots["a"].parent.mkdir()
    slots["a"].write_bytes(FACTORY)
    installer = ABSlotInstaller(
        ABSlotConfig(slots=slots, state_dir=tmp_path / "state", bootloader=bootloader)
    )
    update, payload = image(tmp_path, "2.0")

    installer.prepare(update, payload)
    installer.switch(update, payload)
    assert env.read_text().startswith("boot_slot=b\nupgrade_available=1\n")
    installer.reboot()  # the device would restart here; U-Boot boots slot b
    installer.check(update, payload)
    installer.commit(update, payload)
    assert "upgrade_available=0" in env.read_text()
    assert installer.installed() == {"gateway-os": "2.0"}


def test_command_placeholders_name_the_slot_and_its_device(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    commands = BootCommands(
        mark_next_boot=f"sh -c 'echo \"$0 $1\" > {seen}' {{slot}} {{device}}",
        commit="true",
        mark_active="true",
        booted="echo a",
    )
    bootloader = CommandBootloader(commands, {"a": Path("/dev/mmcblk0p2"), "b": Path("/dev/mmcblk0p3")})

    bootloader.mark_next_boot("b")
    assert seen.read_text() == "b /dev/mmcblk0p3\n"
    assert bootloader.booted_slot() == "a"


def test_a_failing_bootloader_command_is_an_install_error(tmp_path: Path) -> None:
    commands = BootCommands(
        mark_next_boot="sh -c 'echo \"Cannot access MTD device /dev/mtd1\" >&2; exit 1'",
        commit="true",
        mark_active="true",
        booted="echo a",
    )
    bootloader = CommandBootloader(commands, slot_files(tmp_path))

    with pytest.raises(InstallError, match=r"exit status 1(.|\n)*Cannot access MTD device"):
        bootloader.mark_next_boot("b")


def test_the_running_slot_is_never_written(tmp_path: Path, device: Device) -> None:
    update, payload = image(tmp_path, "2.0")
    device.installer.prepare(update, payload)
    # A stale pending record claims the running slot (say, state copied from another device).
    pending = device.root / "state" / "pending.json"
    record = json.loads(pending.read_text())
    pending.write_text(json.dumps({**record, "slot": "a", "previous": "b"}))
    (device.root / "state" / "slot-a.json").unlink(missing_ok=True)

    with pytest.raises(InstallError, match="refusing to write slot a"):
        device.installer.prepare(update, payload)
    assert device.slots["a"].read_bytes() == FACTORY
    assert os.path.getsize(device.slots["a"]) == len(FACTORY)
