"""Installers: how one payload of an update is applied on the device, one module per kind.

Every installer takes the same five steps, and the runner writes each step to the journal (with
fsync) before it starts it, so after a power cut it knows where it stopped:

    prepare   stage the new version beside the running one (pull an image, unpack a package,
              write the passive slot); the running version is untouched
    switch    make the new version the live one (start the new container, flip the symlink,
              mark the passive slot for the next boot)
    check     health over a soak window; ``InstallError`` when the new version is unhealthy
    commit    make it permanent and drop what is no longer kept
    rollback  return to the version that ran before ``switch``; safe after any step

Every step is idempotent: after a crash the runner may run the step it was in again, or roll back.
An installer whose ``switch`` needs a reboot (``needs_reboot``) is checked after the reboot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol


class InstallError(Exception):
    """A step failed; the message says why in words an operator understands."""


@dataclass(frozen=True)
class Update:
    """The update a payload belongs to."""

    deployment_id: str
    release_name: str
    release_version: str
    release_kind: str  # "patch" or "base"


@dataclass(frozen=True)
class Payload:
    """One payload as an installer sees it.

    ``spec`` is the server's entry for it (a container's image, env, ports, create options; a
    file's artifact id, filename, size, SHA-256, installer and target). ``path`` is the
    downloaded and verified file for file payloads, None for containers.
    """

    installer: str  # "container", "package", "ab-slot" or "script"
    name: str  # container name, package name or slot set
    spec: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


class Installer(Protocol):
    kind: ClassVar[str]
    needs_reboot: ClassVar[bool]

    def prepare(self, update: Update, payload: Payload) -> None: ...

    def switch(self, update: Update, payload: Payload) -> None: ...

    def check(self, update: Update, payload: Payload) -> None: ...

    def commit(self, update: Update, payload: Payload) -> None: ...

    def rollback(self, update: Update, payload: Payload) -> None: ...

    def installed(self) -> dict[str, str]:
        """What this installer has live now, name → version (reported in the inventory)."""
        ...
