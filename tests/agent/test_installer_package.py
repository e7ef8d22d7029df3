"""The package installer on real archives, directories and check programs."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from fleetlift_agent.installers import InstallError, Payload, Update
from fleetlift_agent.installers.package import PackageConfig, PackageInstaller

Files = dict[str, bytes | str]

PASSING_CHECK = "#!/bin/sh\ntest -f app.py\n"
FAILING_CHECK = "#!/bin/sh\necho 'database schema too new' >&2\nexit 7\n"


def _update(version: str, deployment: str | None = None) -> Update:
    return Update(deployment or f"dep-{version}", "gateway-app", version, "patch")


def _file_mode(name: str) -> int:
    return 0o755 if name.endswith("fleetlift-check") or name.endswith(".sh") else 0o644


def make_tar(path: Path, files: Files, compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = _file_mode(name)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: Files) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | _file_mode(name)) << 16
            bundle.writestr(info, content)
    return path


def payload(archive: Path, target: str = "app") -> Payload:
    spec = {
        "type": "file",
        "artifact_id": "art-1",
        "filename": archive.name,
        "size": archive.stat().st_size,
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "installer": "package",
        "target": target,
    }
    return Payload("package", target, spec, archive)


def install(installer: PackageInstaller, version: str, archive: Path) -> None:
    update, item = _update(version), payload(archive)
    for step in (installer.prepare, installer.switch, installer.check, installer.commit):
        step(update, item)


@pytest.fixture
def installer(tmp_path: Path) -> PackageInstaller:
    return PackageInstaller(PackageConfig(root=tmp_path / "packages"))


def current(tmp_path: Path) -> Path:
    return tmp_path / "packages" / "app" / "current"


def versions(tmp_path: Path) -> set[str]:
    """The version directories of the "app" target (not the installer's hidden bookkeeping)."""
    directory = tmp_path / "packages" / "app" / "versions"
    return {entry.name for entry in directory.iterdir() if not entry.name.startswith(".")}


def test_a_zip_package_is_unpacked_and_switched_to(tmp_path: Path, installer: PackageInstaller) -> None:
    archive = make_zip(tmp_path / "app.zip", {"app.py": "print('v1')\n", "lib/util.py": "X = 1\n"})
    install(installer, "1.0.0", archive)

    assert os.readlink(current(tmp_path)) == "versions/1.0.0"
    assert (current(tmp_path) / "lib" / "util.py").read_text() == "X = 1\n"
    assert installer.installed() == {"app": "1.0.0"}


@pytest.mark.parametrize("compression", ["gz", "xz", "bz2", ""])
def test_tar_packages_are_recognised_by_content(
    tmp_path: Path, installer: PackageInstaller, compression: str
) -> None:
    # A misleading name: the format comes from the bytes.
    archive = make_tar(tmp_path / "app.bin", {"app.py": "print('v1')\n"}, compression)
    install(installer, "1.0.0", archive)

    assert (current(tmp_path) / "app.py").read_text() == "print('v1')\n"


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path, installer: PackageInstaller) -> None:
    junk = tmp_path / "app.tar.gz"
    junk.write_bytes(b"this is not an archive at all" * 10)

    with pytest.raises(InstallError, match="neither a zip nor a tar"):
        installer.prepare(_update("1.0.0"), payload(junk))
    assert versions(tmp_path) == set()


def test_executable_bits_survive_and_the_check_runs_in_the_new_version(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    check = '#!/bin/sh\npwd > "$FLEETLIFT_PACKAGE_DIR/../../ran-in"\n'
    install(installer, "1.0.0", make_tar(tmp_path / "a.tgz", {"app.py": "", "fleetlift-check": check}))

    new_dir = tmp_path / "packages" / "app" / "versions" / "1.0.0"
    assert os.access(new_dir / "fleetlift-check", os.X_OK)
    assert (tmp_path / "packages" / "app" / "ran-in").read_text().strip() == str(new_dir)


def test_a_failing_check_rolls_back_to_the_previous_version(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    install(
        installer, "1.0.0", make_tar(tmp_path / "v1.tgz", {"app.py": "v1", "fleetlift-check": PASSING_CHECK})
    )
    broken = make_tar(tmp_path / "v2.tgz", {"app.py": "v2", "fleetlift-check": FAILING_CHECK})
    update, item = _update("2.0.0"), payload(broken)
    installer.prepare(update, item)
    installer.switch(update, item)

    with pytest.raises(InstallError, match="exit status 7") as failure:
        installer.check(update, item)
    assert "database schema too new" in str(failure.value)

    installer.rollback(update, item)
    assert (current(tmp_path) / "app.py").read_text() == "v1"
    assert versions(tmp_path) == {"1.0.0"}
    assert installer.installed() == {"app": "1.0.0"}


def test_a_check_that_hangs_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    installer = PackageInstaller(PackageConfig(root=tmp_path / "packages", check_timeout=0.5))
    hanging = "#!/bin/sh\necho starting\nsleep 30\n"
    archive = make_tar(tmp_path / "v1.tgz", {"app.py": "", "fleetlift-check": hanging})
    update, item = _update("1.0.0"), payload(archive)
    installer.prepare(update, item)
    installer.switch(update, item)

    with pytest.raises(InstallError, match=r"did not finish within 0.5 s(.|\n)*starting"):
        installer.check(update, item)


def test_a_configured_check_command_replaces_fleetlift_check(tmp_path: Path) -> None:
    command = ["/bin/sh", "-c", "grep -q v2 app.py || { echo wrong version; exit 1; }"]
    installer = PackageInstaller(PackageConfig(root=tmp_path / "packages", check_command=command))
    install(installer, "1.0.0", make_tar(tmp_path / "v1.tgz", {"app.py": "v2"}))
    update, item = _update("1.1.0"), payload(make_tar(tmp_path / "v11.tgz", {"app.py": "v1"}))
    installer.prepare(update, item)
    installer.switch(update, item)

    with pytest.raises(InstallError, match="wrong version"):
        installer.check(update, item)


def test_rollback_works_from_a_new_installer_after_a_restart(tmp_path: Path) -> None:
    config = PackageConfig(root=tmp_path / "packages")
    install(PackageInstaller(config), "1.0.0", make_zip(tmp_path / "v1.zip", {"app.py": "v1"}))
    update, item = _update("2.0.0"), payload(make_zip(tmp_path / "v2.zip", {"app.py": "v2"}))
    before_restart = PackageInstaller(config)
    before_restart.prepare(update, item)
    before_restart.switch(update, item)
    assert (current(tmp_path) / "app.py").read_text() == "v2"

    after_restart = PackageInstaller(config)
    after_restart.rollback(update, item)

    assert (current(tmp_path) / "app.py").read_text() == "v1"
    assert "2.0.0" not in versions(tmp_path)


def test_rolling_back_the_first_install_leaves_nothing_installed(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    update, item = _update("1.0.0"), payload(make_zip(tmp_path / "v1.zip", {"app.py": "v1"}))
    installer.prepare(update, item)
    installer.switch(update, item)
    installer.rollback(update, item)

    assert not current(tmp_path).is_symlink()
    assert installer.installed() == {}
    assert versions(tmp_path) == set()


def test_rollback_after_prepare_only_removes_the_unpacked_version(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    install(installer, "1.0.0", make_zip(tmp_path / "v1.zip", {"app.py": "v1"}))
    update, item = _update("2.0.0"), payload(make_zip(tmp_path / "v2.zip", {"app.py": "v2"}))
    installer.prepare(update, item)
    installer.rollback(update, item)
    installer.rollback(update, item)

    assert os.readlink(current(tmp_path)) == "versions/1.0.0"
    assert versions(tmp_path) == {"1.0.0"}


def test_every_step_can_run_twice(tmp_path: Path, installer: PackageInstaller) -> None:
    install(installer, "1.0.0", make_zip(tmp_path / "v1.zip", {"app.py": "v1"}))
    update, item = _update("2.0.0"), payload(make_zip(tmp_path / "v2.zip", {"app.py": "v2"}))
    for step in (installer.prepare, installer.switch):
        step(update, item)
        step(update, item)
    # A switch re-run after the flip must still remember 1.0.0 as the version to return to.
    installer.rollback(update, item)
    installer.rollback(update, item)
    assert (current(tmp_path) / "app.py").read_text() == "v1"

    for step in (installer.prepare, installer.switch, installer.check, installer.commit):
        step(update, item)
        step(update, item)
    assert (current(tmp_path) / "app.py").read_text() == "v2"
    assert versions(tmp_path) >= {"1.0.0", "2.0.0"}


def test_prepare_again_after_a_crash_midway_unpacks_cleanly(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    versions_dir = tmp_path / "packages" / "app" / "versions"
    half_done = versions_dir / ".unpacking-1.0.0-abc"
    half_done.mkdir(parents=True)
    (half_done / "app.py").write_text("trunc")
    unstamped = versions_dir / "1.0.0"
    unstamped.mkdir()
    (unstamped / "stale.py").write_text("from an older attempt")

    install(installer, "1.0.0", make_zip(tmp_path / "v1.zip", {"app.py": "v1"}))

    assert sorted(p.name for p in unstamped.iterdir()) == ["app.py"]
    assert not half_done.exists()


def test_commit_keeps_the_configured_number_of_previous_versions(tmp_path: Path) -> None:
    installer = PackageInstaller(PackageConfig(root=tmp_path / "packages", keep=2))
    for number in range(1, 6):
        archive = make_zip(tmp_path / f"v{number}.zip", {"app.py": f"v{number}"})
        install(installer, f"{number}.0", archive)

    assert versions(tmp_path) == {"5.0", "4.0", "3.0"}
    assert os.readlink(current(tmp_path)) == "versions/5.0"


def test_pruning_follows_the_order_versions_were_live_not_their_names(tmp_path: Path) -> None:
    installer = PackageInstaller(PackageConfig(root=tmp_path / "packages", keep=1))
    for version in ("9.0", "10.0", "2.0"):
        install(installer, version, make_zip(tmp_path / f"{version}.zip", {"app.py": version}))

    assert versions(tmp_path) == {"2.0", "10.0"}


READER = """
import os, sys
marker, stop = sys.argv[1], sys.argv[2]
reads, failures = 0, []
open(stop + ".ready", "w").close()
while not os.path.exists(stop):
    try:
        open(marker).read()
    except OSError as error:
        failures.append(type(error).__name__)
    reads += 1
print(reads, " ".join(failures[:5]))
"""


def test_switch_is_atomic_for_a_reader_of_current(tmp_path: Path, installer: PackageInstaller) -> None:
    files: Files = {f"module{n}.py": "x" * 1000 for n in range(20)}
    first = payload(make_zip(tmp_path / "v1.zip", {**files, "COMPLETE": "1"}))
    second = payload(make_zip(tmp_path / "v2.zip", {**files, "COMPLETE": "2"}))
    update_one, update_two = _update("1.0"), _update("2.0")
    install(installer, "1.0", first.path)
    installer.prepare(update_two, second)

    # The reader is another process, as the application using the package would be.
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(current(tmp_path) / "COMPLETE"), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while not Path(f"{stop}.ready").exists():
            time.sleep(0.01)
        for _ in range(60):
            installer.switch(update_two, second)
            installer.switch(update_one, first)
    finally:
        stop.touch()
        output, _ = reader.communicate(timeout=30)
    reads, _, failures = output.strip().partition(" ")
    assert int(reads) > 10
    assert failures.strip() == ""


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../../evil.sh", "path traversal"),
        ("lib/../../evil.sh", "path traversal"),
        ("/etc/cron.d/evil", "absolute path"),
    ],
)
def test_a_zip_slip_archive_is_refused(
    tmp_path: Path, installer: PackageInstaller, member: str, message: str
) -> None:
    archive = make_zip(tmp_path / "evil.zip", {"app.py": "ok", member: "#!/bin/sh\nrm -rf /\n"})

    with pytest.raises(InstallError, match=message):
        installer.prepare(_update("6.6.6"), payload(archive))
    assert not (tmp_path / "evil.sh").exists()
    assert not (tmp_path / "packages" / "evil.sh").exists()
    assert list((tmp_path / "packages" / "app" / "versions").iterdir()) == []  # no half-unpacked leftovers


def test_a_tar_with_a_traversing_member_is_refused(tmp_path: Path, installer: PackageInstaller) -> None:
    archive = make_tar(tmp_path / "evil.tgz", {"../outside.txt": "pwned"})

    with pytest.raises(InstallError, match="path traversal"):
        installer.prepare(_update("6.6.6"), payload(archive))
    assert not (tmp_path / "packages" / "app" / "outside.txt").exists()


def _tar_with(path: Path, *members: tarfile.TarInfo | tuple[str, str]) -> Path:
    """A tar.gz of members in this order: special entries as TarInfo, files as (name, content)."""
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1].encode())
                tar.addfile(info, io.BytesIO(member[1].encode()))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("link", "message"),
    [
        (_link("etc", "/etc"), "absolute path"),
        (_link("up", "../../.."), "points outside"),
        (_link("sneaky", "lib/../../x"), "points outside"),
        (_link("hard", "../../secret", tarfile.LNKTYPE), "points outside"),
    ],
)
def test_links_pointing_outside_are_refused(
    tmp_path: Path, installer: PackageInstaller, link: tarfile.TarInfo, message: str
) -> None:
    archive = _tar_with(tmp_path / "links.tgz", link)

    with pytest.raises(InstallError, match=message):
        installer.prepare(_update("6.6.6"), payload(archive))


def test_links_inside_the_package_are_kept(tmp_path: Path, installer: PackageInstaller) -> None:
    archive = _tar_with(
        tmp_path / "links.tgz",
        _link("bin/run", "../lib/run.sh"),
        ("lib/run.sh", "#!/bin/sh\n"),
        ("data.txt", "data"),
        _link("copy.txt", "data.txt", tarfile.LNKTYPE),
    )
    install(installer, "1.0.0", archive)

    assert os.readlink(current(tmp_path) / "bin" / "run") == "../lib/run.sh"
    assert (current(tmp_path) / "bin" / "run").read_text() == "#!/bin/sh\n"
    assert (current(tmp_path) / "copy.txt").stat().st_nlink == 2


def test_writing_through_a_symlinked_directory_is_refused(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # Each link alone stays inside; together "b/x" would land in the parent of the package.
    archive = _tar_with(
        tmp_path / "chain.tgz",
        _link("a", "."),
        _link("b", "a/.."),
        ("b/x", "pwned"),
    )

    with pytest.raises(InstallError, match="through a link outside"):
        installer.prepare(_update("6.6.6"), payload(archive))
    assert not (tmp_path / "packages" / "app" / "versions" / "x").exists()


@pytest.mark.parametrize(
    "links",
    [
        [_link("a", "."), _link("b", "a/..")],
        # Harmless when made, outside once "x" exists.
        [_link("b", "x/.."), _link("x", ".")],
        [_link("a", "."), _link("b", "a/.."), _link("c", "b/versions", tarfile.LNKTYPE)],
    ],
)
def test_links_that_only_lead_outside_together_are_refused(
    tmp_path: Path, installer: PackageInstaller, links: list[tarfile.TarInfo]
) -> None:
    archive = _tar_with(tmp_path / "chain.tgz", *links)

    with pytest.raises(InstallError, match="points outside the package"):
        installer.prepare(_update("6.6.6"), payload(archive))
    assert list((tmp_path / "packages" / "app" / "versions").iterdir()) == []


def test_device_files_are_refused(tmp_path: Path, installer: PackageInstaller) -> None:
    device = tarfile.TarInfo("dev/sda")
    device.type = tarfile.BLKTYPE
    device.devmajor, device.devminor = 8, 0
    archive = _tar_with(tmp_path / "dev.tgz", device)

    with pytest.raises(InstallError, match="device file"):
        installer.prepare(_update("6.6.6"), payload(archive))


def test_setuid_bits_are_dropped(tmp_path: Path, installer: PackageInstaller) -> None:
    with tarfile.open(tmp_path / "suid.tar", "w") as tar:
        info = tarfile.TarInfo("tool")
        info.mode = 0o4755
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    install(installer, "1.0.0", tmp_path / "suid.tar")

    mode = (current(tmp_path) / "tool").stat().st_mode
    assert not mode & stat.S_ISUID
    assert mode & 0o777 == 0o755


def test_a_version_that_cannot_name_a_directory_is_refused(
    tmp_path: Path, installer: PackageInstaller
) -> None:
    archive = make_zip(tmp_path / "v.zip", {"app.py": ""})
    with pytest.raises(InstallError, match="release version"):
        installer.prepare(_update("../1.0"), payload(archive))
