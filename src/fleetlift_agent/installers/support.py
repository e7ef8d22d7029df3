"""What the file installers share: running a device owner's program with a timeout and a
bounded output tail, the names installers may create, and the FLEETLIFT_* environment."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetlift_agent.installers import InstallError, Payload, Update

OUTPUT_TAIL_BYTES = 4096
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")


@dataclass(frozen=True)
class ProgramResult:
    returncode: int | None  # None when it was killed at the timeout
    output: str  # the last OUTPUT_TAIL_BYTES of stdout and stderr, interleaved

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def program_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: the agent's own variables (tokens, keys) never reach a program."""
    environment = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": "C.UTF-8"}
    environment.update(extra)
    return environment


def run_program(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path,
    environment: Mapping[str, str],
    timeout: float,
) -> ProgramResult:
    """Run ``argv`` to completion or until ``timeout`` seconds (then its whole process group is killed)."""
    # Output goes to a file, not a pipe: a chatty program never blocks and memory stays bounded.
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                [os.fspath(part) for part in argv],
                cwd=cwd,
                env=dict(environment),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            raise InstallError(f"cannot run {os.fspath(argv[0])}: {error.strerror}") from error
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - OUTPUT_TAIL_BYTES))
        tail = output.read().decode("utf-8", errors="replace")
    if size > OUTPUT_TAIL_BYTES:
        tail = "…" + tail
    return ProgramResult(returncode, tail)


def describe_failure(what: str, result: ProgramResult, timeout: float) -> str:
    """``what`` failed, in a sentence with the end of its output."""
    if result.timed_out:
        reason = f"{what} did not finish within {timeout:g} s"
    else:
        reason = f"{what} failed with exit status {result.returncode}"
    output = result.output.strip()
    return f"{reason}; its output ends with:\n{output}" if output else f"{reason} (no output)"


def safe_name(value: str, what: str) -> str:
    """``value`` if it can be one path component we create, else ``InstallError``."""
    if not _SAFE_NAME.fullmatch(value):
        raise InstallError(
            f"{what} {value!r} cannot name a directory on the device "
            "(letters, digits and . _ + ~ - only, not starting with a dot)"
        )
    return value


def payload_target(payload: Payload) -> str:
    target = payload.spec.get("target") or payload.name
    return safe_name(str(target), "target")


def update_environment(update: Update, payload: Payload | None) -> dict[str, str]:
    """The FLEETLIFT_* variables scripts and hooks see."""
    environment = {
        "FLEETLIFT_DEPLOYMENT_ID": update.deployment_id,
        "FLEETLIFT_RELEASE_NAME": update.release_name,
        "FLEETLIFT_RELEASE_VERSION": update.release_version,
        "FLEETLIFT_RELEASE_KIND": update.release_kind,
    }
    if payload is not None:
        environment["FLEETLIFT_TARGET"] = str(payload.spec.get("target") or payload.name)
        environment["FLEETLIFT_INSTALLER"] = payload.installer
    return environment
