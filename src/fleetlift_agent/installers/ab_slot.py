"""The A/B slot installer: a root-filesystem image written to the passive slot, tried at the next
boot, kept only once it booted and passed the check.

The bootloader is behind a small Protocol: ``SimulatedBootloader`` (a JSON boot selector, for
development and tests) or ``CommandBootloader`` (configured commands: U-Boot's fw_setenv as Mender
uses it, RAUC, GRUB environment tools).

Across the reboot the runner does::

    prepare → switch → journal "rebooting" → installer.reboot()
    ... the device restarts (in the simulation: the agent process exits, and whatever restarts it
    calls SimulatedBootloader.boot() first, as the bootloader would at power-on) ...
    check → commit, or rollback (then reboot() again when rollback_needs_reboot(), and rollback()
    once more after that reboot to finish)
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from fleetlift_agent.fsutil import read_json, remove_durably, write_durably, write_json_durably
from fleetlift_agent.installers import InstallError, Payload, Update
from fleetlift_agent.installers.support import (
    describe_failure,
    payload_target,
    program_environment,
    run_program,
    safe_name,
    update_environment,
)

CHUNK = 1 << 20


class Bootloader(Protocol):
    """What the installer needs from the bootloader. Slots are named as in the installer's config."""

    def booted_slot(self) -> str:
        """The slot the running system booted from."""
        ...

    def mark_next_boot(self, slot: str) -> None:
        """Try ``slot`` at the next boot, falling back to the active slot if it is never committed."""
        ...

    def commit(self, slot: str) -> None:
        """``slot`` (running, on trial) is good: boot it from now on."""
        ...

    def mark_active(self, slot: str) -> None:
        """Boot ``slot`` from now on without a trial; cancels a pending upgrade."""
        ...

    def reboot(self) -> None:
        """Restart the device (or, simulated, do nothing: the supervisor restarts the agent)."""
        ...


class SimulatedBootloader:
    """A bootloader played with files: the boot selector (JSON) and the slot that booted.

    ``boot()`` is what the bootloader does at power-on; whatever starts the agent in a simulation
    (a supervisor, a test) calls it before the agent, once per simulated reboot.
    """

    def __init__(self, selector: Path, *, slots: tuple[str, str] = ("a", "b"), boot_limit: int = 1) -> None:
        self.selector = selector
        self.booted_file = selector.with_name(f"{selector.stem}.booted")
        self.slots = slots
        self.boot_limit = boot_limit
        self.reboots_requested = 0

    def read(self) -> dict[str, Any]:
        """The boot selector: active, next, upgrade_available, bootcount, boot_limit."""
        return read_json(self.selector) or {
            "active": self.slots[0],
            "next": None,
            "upgrade_available": False,
            "bootcount": 0,
            "boot_limit": self.boot_limit,
        }

    def _write(self, **changes: Any) -> None:
        write_json_durably(self.selector, {**self.read(), **changes})

    def boot(self) -> str:
        """Power-on: choose the slot to boot, count the trial, record what booted; returns the slot."""
        selector = self.read()
        slot = str(selector["active"])
        if selector["upgrade_available"] and selector["next"]:
            if selector["bootcount"] < selector["boot_limit"]:
                slot = str(selector["next"])
                self._write(bootcount=selector["bootcount"] + 1)
            else:
                # The new slot had its tries and was never committed: back to the one that worked.
                self._write(upgrade_available=False, next=None, bootcount=0)
        write_durably(self.booted_file, slot.encode())
        return slot

    def booted_slot(self) -> str:
        try:
            return self.booted_file.read_text().strip()
        except FileNotFoundError:
            return str(self.read()["active"])  # never booted in the simulation: the factory slot runs

    def mark_next_boot(self, slot: str) -> None:
        self._write(next=slot, upgrade_available=True, bootcount=0, boot_limit=self.boot_limit)

    def commit(self, slot: str) -> None:
        self._write(active=slot, next=None, upgrade_available=False, bootcount=0)

    def mark_active(self, slot: str) -> None:
        self._write(active=slot, next=None, upgrade_available=False, bootcount=0)

    def reboot(self) -> None:
        self.reboots_requested += 1


@dataclass(frozen=True)
class BootCommands:
    """Commands for a real bootloader. Each is split like a shell line (no shell runs it), then
    ``{slot}`` is replaced by the slot's name and ``{device}`` by its path.

    Mender-style U-Boot, with slots named by partition number ({"2": /dev/mmcblk0p2, "3": ...});
    ``fw_setenv -s -`` sets several variables in one write, so a power cut never leaves half::

        BootCommands(
            mark_next_boot="sh -c '{ echo mender_boot_part {slot}; echo upgrade_available 1; "
            "echo bootcount 0; } | fw_setenv -s -'",
            commit="fw_setenv upgrade_available 0",
            mark_active="sh -c '{ echo mender_boot_part {slot}; echo upgrade_available 0; } "
            "| fw_setenv -s -'",
            read_env="fw_printenv",
            slot_variable="mender_boot_part",
        )

    The bootloader variable that names the boot slot equals the running slot except between
    ``mark_next_boot`` and the reboot; a ``booted`` command that asks the kernel is exact.
    """

    mark_next_boot: str
    commit: str
    mark_active: str
    reboot: str = "reboot"
    # The booted slot: printed by ``booted`` if set, else the ``slot_variable`` line of ``read_env``.
    booted: str | None = None
    read_env: str = "fw_printenv"
    slot_variable: str = "boot_slot"
    timeout: float = 60.0


class CommandBootloader:
    def __init__(self, commands: BootCommands, slots: Mapping[str, Path]) -> None:
        self.commands = commands
        self.slots = dict(slots)

    def _run(self, line: str, slot: str = "") -> str:
        device = str(self.slots.get(slot, ""))
        argv = [part.replace("{slot}", slot).replace("{device}", device) for part in shlex.split(line)]
        timeout = self.commands.timeout
        result = run_program(argv, cwd=Path("/"), environment=program_environment({}), timeout=timeout)
        if result.returncode != 0:
            raise InstallError(describe_failure(f"the bootloader command {argv[0]}", result, timeout))
        return result.output

    def environment(self) -> dict[str, str]:
        """The bootloader environment as ``read_env`` prints it (name=value lines)."""
        lines = self._run(self.commands.read_env).splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def booted_slot(self) -> str:
        if self.commands.booted is not None:
            return self._run(self.commands.booted).strip()
        variable = self.commands.slot_variable
        try:
            return self.environment()[variable].strip()
        except KeyError:
            raise InstallError(f"the bootloader environment has no {variable}") from None

    def mark_next_boot(self, slot: str) -> None:
        self._run(self.commands.mark_next_boot, slot)

    def commit(self, slot: str) -> None:
        self._run(self.commands.commit, slot)

    def mark_active(self, slot: str) -> None:
        self._run(self.commands.mark_active, slot)

    def reboot(self) -> None:
        self._run(self.commands.reboot)


def slot_files(slots_dir: Path) -> dict[str, Path]:
    """Simulated slots: ``<slots_dir>/a.img`` and ``<slots_dir>/b.img``."""
    return {"a": slots_dir / "a.img", "b": slots_dir / "b.img"}


@dataclass(frozen=True)
class ABSlotConfig:
    slots: Mapping[str, Path]  # exactly two: slot name → image file or block device
    state_dir: Path  # per-slot metadata and the pending update
    bootloader: Bootloader
    health_command: Sequence[str] | None = None  # run by check on the new slot; exit 0 = healthy
    health_timeout: float = 300.0


class ABSlotInstaller:
    kind: ClassVar[str] = "ab-slot"
    needs_reboot: ClassVar[bool] = True

    def __init__(self, config: ABSlotConfig) -> None:
        if len(config.slots) != 2:
            raise ValueError("an A/B slot set has exactly two slots")
        self.config = config
        self.bootloader = config.bootloader

    # -- bookkeeping ------------------------------------------------------------------------------

    @property
    def _pending_path(self) -> Path:
        return self.config.state_dir / "pending.json"

    def _metadata_path(self, slot: str) -> Path:
        return self.config.state_dir / f"slot-{safe_name(slot, 'slot')}.json"

    def slot_metadata(self, slot: str) -> dict[str, Any] | None:
        """What was written to ``slot`` and verified: target, version, sha256, deployment_id."""
        return read_json(self._metadata_path(slot))

    def _booted(self) -> str:
        booted = self.bootloader.booted_slot()
        if booted not in self.config.slots:
            known = ", ".join(sorted(self.config.slots))
            raise InstallError(f"the bootloader reports slot {booted!r}, which is not one of {known}")
        return booted

    def _other(self, slot: str) -> str:
        return next(name for name in self.config.slots if name != slot)

    def _pending(self, update: Update) -> dict[str, Any] | None:
        pending = read_json(self._pending_path)
        if pending is not None and pending.get("deployment_id") == update.deployment_id:
            return pending
        return None

    def _require_pending(self, update: Update) -> dict[str, Any]:
        pending = self._pending(update)
        if pending is None:
            raise InstallError(f"deployment {update.deployment_id} was not prepared for a slot")
        return pending

    # -- steps ----------------------------------------------------------------------------------

    def prepare(self, update: Update, payload: Payload) -> None:
        if payload.path is None:
            raise InstallError("the slot image payload has no downloaded file")
        expected = str(payload.spec.get("sha256", "")).lower()
        if not expected:
            raise InstallError("the slot image payload has no SHA-256 to verify the written slot against")
        target = payload_target(payload)
        pending = self._pending(update)
        if pending is None:
            booted = self._booted()
            pending = {
                "deployment_id": update.deployment_id,
                "target": target,
                "version": update.release_version,
                "slot": self._other(booted),
                "previous": booted,
            }
            write_json_durably(self._pending_path, pending)
        slot = str(pending["slot"])
        if slot == self._booted():
            raise InstallError(f"refusing to write slot {slot}: it is the running system")
        metadata = self.slot_metadata(slot)
        if metadata is not None and metadata.get("sha256") == expected:
            return  # written and verified already
        # Forget what the slot held before touching it, so a cut-off write is never taken as good.
        remove_durably(self._metadata_path(slot))
        device = self.config.slots[slot]
        size = _write_image(payload.path, device)
        actual = _digest(device, size)
        if actual != expected:
            raise InstallError(
                f"slot {slot} ({device}) reads back with SHA-256 {actual}, expected {expected}: "
                "the write was corrupted or the storage is failing"
            )
        write_json_durably(
            self._metadata_path(slot),
            {
                "target": target,
                "version": update.release_version,
                "sha256": expected,
                "size": size,
                "deployment_id": update.deployment_id,
            },
        )

    def switch(self, update: Update, payload: Payload) -> None:
        pending = self._require_pending(update)
        slot = str(pending["slot"])
        metadata = self.slot_metadata(slot)
        if metadata is None or metadata.get("sha256") != str(payload.spec.get("sha256", "")).lower():
            raise InstallError(f"slot {slot} does not hold the verified image of this update")
        self.bootloader.mark_next_boot(slot)

    def reboot(self) -> None:
        """Restart into the slot marked by ``switch`` (or by a rollback)."""
        self.bootloader.reboot()

    def check(self, update: Update, payload: Payload) -> None:
        pending = self._require_pending(update)
        slot, booted = str(pending["slot"]), self._booted()
        if booted != slot:
            raise InstallError(
                f"the new slot did not boot; the bootloader fell back to slot {booted} (expected slot {slot})"
            )
        if self.config.health_command is None:
            return
        environment = program_environment({**update_environment(update, payload), "FLEETLIFT_SLOT": slot})
        command, timeout = self.config.health_command, self.config.health_timeout
        result = run_program(command, cwd=Path("/"), environment=environment, timeout=timeout)
        if result.returncode != 0:
            raise InstallError(describe_failure(f"the health command {command[0]}", result, timeout))

    def commit(self, update: Update, payload: Payload) -> None:
        pending = self._pending(update)
        if pending is None:
            return  # committed already
        slot = str(pending["slot"])
        if self._booted() != slot:
            raise InstallError(f"cannot commit slot {slot}: the device is running slot {self._booted()}")
        self.bootloader.commit(slot)
        write_json_durably(self.config.state_dir / "active.json", {"slot": slot})
        remove_durably(self._pending_path)

    def rollback(self, update: Update, payload: Payload) -> None:
        """Make the old slot the one that boots. When the new slot is running, the runner must then
        call ``reboot()`` and, after it, ``rollback()`` again (see ``rollback_needs_reboot``)."""
        pending = self._pending(update)
        if pending is None:
            return  # never prepared, or rolled back already
        previous = str(pending["previous"])
        self.bootloader.mark_active(previous)
        if self._booted() == previous:
            remove_durably(self._pending_path)
        # Otherwise the record stays until the device runs the old slot again, so that a restart
        # in between still knows a reboot is owed.

    def rollback_needs_reboot(self) -> bool:
        """True while a rolled-back update's slot is still the one running."""
        pending = read_json(self._pending_path)
        return pending is not None and self._booted() == pending["slot"]

    def installed(self) -> dict[str, str]:
        active = read_json(self.config.state_dir / "active.json")
        slot = str(active["slot"]) if active else self._booted()
        metadata = self.slot_metadata(slot)
        if metadata is None:
            return {}  # the factory image, never written by the agent
        return {str(metadata["target"]): str(metadata["version"])}


def _write_image(image: Path, device: Path) -> int:
    """Stream ``image`` into ``device`` (a file or a block device), durably; returns its size."""
    device.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(device, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        written = 0
        with image.open("rb") as source:
            while chunk := source.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    count = os.write(descriptor, view)
                    view = view[count:]
                    written += count
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.ftruncate(descriptor, written)  # a smaller image than the last one leaves no tail
        os.fsync(descriptor)
        # Drop the cached pages so that verifying reads what the storage holds, not memory.
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    return written


def _digest(device: Path, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``device`` (a block device is larger than its image)."""
    digest = hashlib.sha256()
    remaining = size
    with device.open("rb") as source:
        while remaining > 0:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()
