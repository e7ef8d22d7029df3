"""The script installer (the payload is a program the device runs, one stage at a time) and the
operator's pre- and post-install hooks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fleetlift_agent.fsutil import (
    fsync_directory,
    read_json,
    remove_durably,
    write_durably,
    write_json_durably,
)
from fleetlift_agent.installers import InstallError, Payload, Update
from fleetlift_agent.installers.support import (
    describe_failure,
    payload_target,
    program_environment,
    run_program,
    safe_name,
    update_environment,
)

# Exit status meaning "this stage is not supported by the script" (check, commit, rollback).
NOT_SUPPORTED = 3

# -- the script installer -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptConfig:
    work_dir: Path  # one directory per deployment and target lives here while it installs
    timeout: float = 600.0  # seconds, for each stage


class ScriptInstaller:
    """Runs the payload as ``<script> install|check|commit|rollback``.

    Stages that completed are remembered (a marker beside the script), so a stage re-run after a
    power cut does not run a finished stage twice; a stage cut off midway runs again, so scripts
    should tolerate that. Exit status 3 means "this stage is not supported": no check, nothing to
    commit or roll back. For ``install`` it is an error.
    """

    kind: ClassVar[str] = "script"
    needs_reboot: ClassVar[bool] = False

    def __init__(self, config: ScriptConfig) -> None:
        self.config = config

    def _dir(self, update: Update, payload: Payload) -> Path:
        deployment = safe_name(update.deployment_id, "deployment id")
        return self.config.work_dir / deployment / payload_target(payload)

    def _script(self, directory: Path) -> Path:
        return directory / "script"

    def prepare(self, update: Update, payload: Payload) -> None:
        if payload.path is None:
            raise InstallError("the script payload has no downloaded file")
        with payload.path.open("rb") as handle:
            magic = handle.read(4)
        if not (magic.startswith(b"#!") or magic == b"\x7fELF"):
            name = payload.spec.get("filename", payload.path.name)
            raise InstallError(f"{name} is not a script (no #! line) nor a program")
        directory = self._dir(update, payload)
        directory.mkdir(parents=True, exist_ok=True)
        script = self._script(directory)
        temporary = directory / ".script.new"
        with payload.path.open("rb") as source, temporary.open("wb") as destination:
            shutil.copyfileobj(source, destination, 1 << 20)
            destination.flush()
            os.fsync(destination.fileno())
        temporary.chmod(0o700)
        os.replace(temporary, script)
        fsync_directory(directory)

    def _stage(self, update: Update, payload: Payload, stage: str) -> bool:
        """Run ``<script> <stage>``; False when the script does not support the stage."""
        directory = self._dir(update, payload)
        script = self._script(directory)
        if not script.is_file():
            raise InstallError(f"the script for {payload_target(payload)} was not prepared")
        environment = program_environment({**update_environment(update, payload), "FLEETLIFT_STAGE": stage})
        timeout = self.config.timeout
        result = run_program([script, stage], cwd=directory, environment=environment, timeout=timeout)
        if result.returncode == NOT_SUPPORTED:
            return False
        if result.returncode != 0:
            raise InstallError(describe_failure(f"the script's {stage} stage", result, timeout))
        return True

    def _done(self, directory: Path, stage: str) -> Path:
        return directory / f"{stage}.done"

    def _mark(self, directory: Path, stage: str) -> None:
        write_durably(self._done(directory, stage), b"")

    def switch(self, update: Update, payload: Payload) -> None:
        directory = self._dir(update, payload)
        if self._done(directory, "install").exists():
            return
        # Rollback must know the script may have changed something, even if install is cut off.
        self._mark(directory, "install-started")
        if not self._stage(update, payload, "install"):
            raise InstallError("the script says it does not support the install stage (exit status 3)")
        self._mark(directory, "install")

    def check(self, update: Update, payload: Payload) -> None:
        self._stage(update, payload, "check")  # exit status 3: the script has no check, which passes

    def commit(self, update: Update, payload: Payload) -> None:
        directory = self._dir(update, payload)
        if not directory.exists():
            return  # committed already
        if not self._done(directory, "commit").exists():
            self._stage(update, payload, "commit")
            self._mark(directory, "commit")
        record = self.config.work_dir / "installed.json"
        installed = read_json(record) or {}
        installed[payload_target(payload)] = update.release_version
        write_json_durably(record, installed)
        self._forget(directory)

    def rollback(self, update: Update, payload: Payload) -> None:
        directory = self._dir(update, payload)
        if not directory.exists():
            return  # rolled back already, or never prepared
        needs_undo = self._done(directory, "install-started").exists()
        if needs_undo and not self._done(directory, "rollback").exists():
            self._stage(update, payload, "rollback")
            self._mark(directory, "rollback")
        self._forget(directory)

    def _forget(self, directory: Path) -> None:
        remove_durably(directory)
        with contextlib.suppress(OSError):  # the deployment's directory, once its last target is done
            directory.parent.rmdir()

    def installed(self) -> dict[str, str]:
        record = read_json(self.config.work_dir / "installed.json") or {}
        return {str(target): str(version) for target, version in record.items()}


# -- hooks ------------------------------------------------------------------------------------------


class Hooks:
    """The device owner's executables in ``<hooks_dir>/pre-install.d/`` and ``post-install.d/``.

    They run in name order with the FLEETLIFT_* variables of the update (plus FLEETLIFT_INSTALLER
    and FLEETLIFT_TARGET when a payload is given). Hidden files and files without an execute bit are
    skipped, so an owner can disable a hook with ``chmod -x``. The first failure stops the rest.
    """

    def __init__(self, hooks_dir: Path, timeout: float = 300.0) -> None:
        self.hooks_dir = hooks_dir
        self.timeout = timeout

    def pre_install(self, update: Update, payload: Payload | None = None) -> None:
        """Before prepare; a failing hook refuses the update before anything changed."""
        self._run("pre-install", update, payload)

    def post_install(self, update: Update, payload: Payload | None = None) -> None:
        """After switch and check; a failing hook means the update is rolled back."""
        self._run("post-install", update, payload)

    def hooks(self, phase: str) -> list[Path]:
        """The hooks that run for ``phase``, in order."""
        directory = self.hooks_dir / f"{phase}.d"
        if not directory.is_dir():
            return []
        return sorted(
            (
                entry
                for entry in directory.iterdir()
                if not entry.name.startswith(".") and entry.is_file() and os.access(entry, os.X_OK)
            ),
            key=lambda entry: entry.name,
        )

    def _run(self, phase: str, update: Update, payload: Payload | None) -> None:
        environment = program_environment({**update_environment(update, payload), "FLEETLIFT_HOOK": phase})
        for hook in self.hooks(phase):
            result = run_program([hook], cwd=hook.parent, environment=environment, timeout=self.timeout)
            if result.returncode != 0:
                raise InstallError(describe_failure(f"the {phase} hook {hook.name}", result, self.timeout))
