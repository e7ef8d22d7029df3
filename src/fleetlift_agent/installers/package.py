"""The package installer: code packages (zip or tar) in versioned directories behind a symlink.

<root>/<target>/versions/<version>/   one directory per unpacked version
<root>/<target>/current               symlink to versions/<version>, flipped atomically
<root>/<target>/switch.json           the version that was live before the last switch
<root>/<target>/history.json          versions in the order they were committed
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

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

CHECK_PROGRAM = "fleetlift-check"
_UNPACKING = ".unpacking-"


@dataclass(frozen=True)
class PackageConfig:
    root: Path
    keep: int = 2  # versions kept besides the current one after a commit
    # Run in the new version's directory after the switch. None: its top-level fleetlift-check, if any.
    check_command: Sequence[str] | None = None
    check_timeout: float = 120.0  # seconds


@dataclass(frozen=True)
class _Entry:
    """One archive member, validated: a relative path that stays inside the version directory."""

    path: str
    kind: str  # "dir", "file", "symlink" or "hardlink"
    mode: int
    link: str = ""  # the target of a symlink or hard link


class PackageInstaller:
    kind: ClassVar[str] = "package"
    needs_reboot: ClassVar[bool] = False

    def __init__(self, config: PackageConfig) -> None:
        if config.keep < 0:
            raise ValueError("keep must be zero or more")
        self.config = config

    # -- layout ---------------------------------------------------------------------------------

    def _base(self, payload: Payload) -> Path:
        return self.config.root / payload_target(payload)

    @staticmethod
    def _version(update: Update) -> str:
        return safe_name(update.release_version, "release version")

    @staticmethod
    def _live(base: Path) -> str | None:
        """The version ``current`` points to, or None before the first install."""
        try:
            return posixpath.basename(os.readlink(base / "current"))
        except FileNotFoundError:
            return None

    @staticmethod
    def _point_current(base: Path, version: str) -> None:
        # A new symlink renamed over the old one: readers see the old or the new version, never none.
        temporary = base / ".current.new"
        temporary.unlink(missing_ok=True)
        os.symlink(f"versions/{version}", temporary)
        os.replace(temporary, base / "current")
        fsync_directory(base)

    # -- steps ----------------------------------------------------------------------------------

    def prepare(self, update: Update, payload: Payload) -> None:
        if payload.path is None:
            raise InstallError("the package payload has no downloaded file")
        base = self._base(payload)
        version = self._version(update)
        versions = base / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        destination = versions / version
        stamp = versions / f".{version}.sha256"
        sha256 = str(payload.spec.get("sha256", ""))
        unpacked_from = stamp.read_text().strip() if stamp.exists() else None
        if destination.is_dir() and unpacked_from == sha256:
            return  # prepared already
        if destination.exists() and self._live(base) == version:
            raise InstallError(
                f"version {version} of {base.name} is live with different content; publish a new version"
            )
        for leftover in versions.glob(f"{_UNPACKING}{version}-*"):
            shutil.rmtree(leftover)
        remove_durably(destination)  # a version unpacked from other bytes, or never stamped
        staging = Path(tempfile.mkdtemp(prefix=f"{_UNPACKING}{version}-", dir=versions))
        try:
            _unpack(payload.path, staging)
            staging.chmod(0o755)
            os.rename(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(versions)
        write_durably(stamp, sha256.encode())

    def switch(self, update: Update, payload: Payload) -> None:
        base = self._base(payload)
        version = self._version(update)
        if not (base / "versions" / version).is_dir():
            raise InstallError(f"version {version} of {base.name} was not prepared")
        record = read_json(base / "switch.json")
        if record is None or record.get("deployment_id") != update.deployment_id:
            # Written before the flip, so a rollback after a restart knows where to return.
            record = {"deployment_id": update.deployment_id, "version": version, "previous": self._live(base)}
            write_json_durably(base / "switch.json", record)
        self._point_current(base, version)

    def check(self, update: Update, payload: Payload) -> None:
        base = self._base(payload)
        version = self._version(update)
        if self._live(base) != version:
            raise InstallError(f"{base.name} is not switched to version {version}")
        directory = base / "versions" / version
        if self.config.check_command is not None:
            argv: list[str | os.PathLike[str]] = list(self.config.check_command)
            what = f"the check command {self.config.check_command[0]}"
        else:
            program = directory / CHECK_PROGRAM
            if not (program.is_file() and os.access(program, os.X_OK)):
                return
            argv = [program]
            what = CHECK_PROGRAM
        environment = program_environment(
            {**update_environment(update, payload), "FLEETLIFT_PACKAGE_DIR": str(directory)}
        )
        result = run_program(argv, cwd=directory, environment=environment, timeout=self.config.check_timeout)
        if result.returncode != 0:
            raise InstallError(describe_failure(what, result, self.config.check_timeout))

    def commit(self, update: Update, payload: Payload) -> None:
        base = self._base(payload)
        version = self._version(update)
        if self._live(base) != version:
            raise InstallError(f"cannot commit version {version} of {base.name}: it is not the live one")
        history_path = base / "history.json"
        history = [str(v) for v in (read_json(history_path) or {}).get("versions", []) if v != version]
        history.append(version)
        write_json_durably(history_path, {"versions": history})
        self._prune(base, history)
        remove_durably(base / "switch.json")

    def rollback(self, update: Update, payload: Payload) -> None:
        base = self._base(payload)
        version = self._version(update)
        versions = base / "versions"
        record = read_json(base / "switch.json")
        if record is not None and record.get("version") == version:
            previous = record.get("previous")
            if previous is None:
                # Nothing was live before this version: the target goes back to not installed.
                remove_durably(base / "current")
            else:
                if not (versions / str(previous)).is_dir():
                    raise InstallError(f"cannot roll back {base.name}: version {previous} is gone")
                self._point_current(base, str(previous))
        if self._live(base) != version:
            # The failed version is never the one live, nor the one rolled back to.
            for leftover in versions.glob(f"{_UNPACKING}{version}-*"):
                shutil.rmtree(leftover)
            remove_durably(versions / version)
            remove_durably(versions / f".{version}.sha256")
        remove_durably(base / "switch.json")

    def installed(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if not self.config.root.is_dir():
            return found
        for base in sorted(self.config.root.iterdir()):
            live = self._live(base) if base.is_dir() else None
            if live is not None:
                found[base.name] = live
        return found

    def _prune(self, base: Path, history: list[str]) -> None:
        versions = base / "versions"
        live = self._live(base)
        on_disk = [entry for entry in versions.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
        recency = {name: position for position, name in enumerate(reversed(history))}
        # Most recently live first; versions this installer never committed count as oldest.
        candidates = sorted(
            (entry for entry in on_disk if entry.name != live),
            key=lambda entry: (recency.get(entry.name, len(recency)), -entry.stat().st_mtime),
        )
        for entry in candidates[self.config.keep :]:
            remove_durably(entry)
            remove_durably(versions / f".{entry.name}.sha256")
        for leftover in versions.glob(f"{_UNPACKING}*"):
            shutil.rmtree(leftover)


# -- unpacking --------------------------------------------------------------------------------------


def _unpack(archive: Path, destination: Path) -> None:
    """Unpack a zip or tar archive (by content) into ``destination``, refusing anything unsafe."""
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, destination)
    elif tarfile.is_tarfile(archive):
        _unpack_tar(archive, destination)
    else:
        raise InstallError(f"{archive.name} is neither a zip nor a tar archive")
    _refuse_links_leaving(destination)
    for directory, _, _ in os.walk(destination):
        fsync_directory(Path(directory))


def _inside(real_root: str, path: str) -> bool:
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _refuse_links_leaving(root: Path) -> None:
    """Each link was checked on its own as it was made; together (``b -> x/..`` then ``x -> .``)
    they can still lead out, which only the finished tree shows."""
    real_root = os.path.realpath(root)
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _inside(real_root, path):
                member = os.path.relpath(path, root)
                raise InstallError(
                    f"the archive's link {member} points outside the package: {os.readlink(path)}"
                )


def _member_path(name: str) -> str:
    """The normalized relative path of an archive member, or ``InstallError`` when it leaves the package."""
    if "\0" in name:
        raise InstallError(f"the archive has a member with a NUL in its name: {name!r}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InstallError(f"the archive has a member with an absolute path: {name}")
    normalized = posixpath.normpath(name)
    if normalized == ".." or normalized.startswith("../"):
        raise InstallError(f"the archive has a member outside the package (path traversal): {name}")
    return "" if normalized == "." else normalized


def _check_link(path: str, link: str, *, hard: bool) -> str:
    if link.startswith("/"):
        raise InstallError(f"the archive's link {path} points to an absolute path: {link}")
    resolved = posixpath.normpath(link if hard else posixpath.join(posixpath.dirname(path), link))
    if resolved == ".." or resolved.startswith("../"):
        raise InstallError(f"the archive's link {path} points outside the package: {link}")
    return resolved


def _special_entry(name: str) -> InstallError:
    return InstallError(f"the archive has a device file, FIFO or other special entry, refused: {name}")


def _unpack_tar(archive: Path, destination: Path) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                path = _member_path(member.name)
                mode = member.mode & 0o777
                if member.isdir():
                    _place(destination, _Entry(path, "dir", mode), None)
                elif member.isfile():
                    stream = tar.extractfile(member)
                    if stream is None:
                        raise InstallError(f"the tar archive has a file without content: {member.name}")
                    with stream:
                        _place(destination, _Entry(path, "file", mode), stream)
                elif member.issym():
                    _place(destination, _Entry(path, "symlink", mode, member.linkname), None)
                elif member.islnk():
                    _place(destination, _Entry(path, "hardlink", mode, member.linkname), None)
                else:
                    raise _special_entry(member.name)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise InstallError(f"the tar archive {archive.name} cannot be unpacked: {error}") from error


def _unpack_zip(archive: Path, destination: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                path = _member_path(info.filename)
                unix_mode = info.external_attr >> 16
                permissions = unix_mode & 0o777
                file_type = stat.S_IFMT(unix_mode)
                if info.is_dir():
                    _place(destination, _Entry(path, "dir", permissions or 0o755), None)
                elif stat.S_ISLNK(unix_mode):
                    link = bundle.read(info).decode("utf-8", errors="replace")
                    _place(destination, _Entry(path, "symlink", 0o777, link), None)
                elif file_type in (0, stat.S_IFREG):
                    with bundle.open(info) as source:
                        _place(destination, _Entry(path, "file", permissions or 0o644), source)
                else:
                    raise _special_entry(info.filename)
    except (zipfile.BadZipFile, OSError) as error:
        raise InstallError(f"the zip archive {archive.name} cannot be unpacked: {error}") from error


def _place(root: Path, entry: _Entry, source: IO[bytes] | None) -> None:
    if entry.path == "":
        return  # the archive's "./" itself
    target = root / entry.path
    # Parents are created by us or by earlier members; one of them being a symlink could redirect
    # the write outside the package, so every parent must really be inside.
    real_root = os.path.realpath(root)
    if not _inside(real_root, str(target.parent)):
        raise InstallError(f"the archive writes through a link outside the package: {entry.path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind == "dir":
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise InstallError(f"the archive has a directory over another entry: {entry.path}")
        target.mkdir(exist_ok=True)
        # Owners keep write permission so that pruning can delete the version later.
        target.chmod(entry.mode | 0o700)
    elif entry.kind == "file":
        assert source is not None
        _clear(target, entry.path)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
        # Never setuid, setgid or sticky; just the permission bits.
        target.chmod(entry.mode | 0o600)
    elif entry.kind == "symlink":
        _check_link(entry.path, entry.link, hard=False)
        _clear(target, entry.path)
        os.symlink(entry.link, target)
    else:
        linked = root / _check_link(entry.path, entry.link, hard=True)
        if not _inside(real_root, str(linked)):
            raise InstallError(f"the archive's link {entry.path} points outside the package: {entry.link}")
        if linked.is_symlink() or not linked.is_file():
            raise InstallError(f"the archive's hard link {entry.path} is not to a file in the package")
        _clear(target, entry.path)
        os.link(linked, target)


def _clear(target: Path, name: str) -> None:
    """Make room for a member that repeats an earlier one (later members win, as with tar)."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        raise InstallError(f"the archive has a file over a directory: {name}")
