"""A real Docker engine for the tests: Debian's dockerd on a private socket, vfs storage, no bridge and
no iptables, started once per test session (per xdist worker: each worker owns its daemon), and
small images made without internet from busybox-static, pushed to a real registry (tests.registry).

Fixtures (import them into a test module, or list this module in ``pytest_plugins``):

    dockerd          -> Dockerd          the daemon: ``base_url``, ``api()`` (a docker.APIClient)
    image_registry   -> Registry         a plain docker-registry on 127.0.0.1 (tests.registry)
    test_images      -> TestImages       pinned references ``127.0.0.1:<port>/fleetlift/…@sha256:…``
                                         and ``build(...)`` for more

Containers from these images are meant to run with ``network_mode="none"`` (or "host" to serve on
loopback); the images only have busybox (sh, sleep, httpd, wget, ...).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .registry import Registry, run_registry, unavailable_reason

BUSYBOX = Path("/bin/busybox")
BUSYBOX_LINKS = (
    "sh", "sleep", "wget", "httpd", "cat", "echo", "true", "false", "test", "mkdir", "touch", "ls",
    "kill", "env",
)  # fmt: skip
# A long-running main process that exits at once on SIGTERM (PID 1 ignores signals it does not trap).
SERVE_FOREVER = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"


@dataclass
class Dockerd:
    """A running dockerd of our own."""

    root: Path  # data-root, exec-root, socket, pid file and log live under it
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def api(self) -> Any:
        """A low-level docker.APIClient talking to this daemon; the caller closes it."""
        import docker

        return docker.APIClient(base_url=self.base_url, version="auto", timeout=120)


def _ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = sock.recv(1024).split(b"\r\n", 1)[0]
            return b" 200" in status
    except OSError:
        return False


def _reason(log: Path) -> str:
    """The line of dockerd's log that says why it stopped."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "level=fatal" in line or "level=error" in line:
            match = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
            return match.group(1) if match else line
    plain = [line for line in lines if "level=" not in line]  # what dockerd printed before logging started
    return (plain or lines or ["dockerd wrote nothing to its log"])[-1]


def _our_processes(root: Path) -> list[int]:
    """Processes whose command line names our root (containerd and its shims), dockerd's group aside."""
    found = []
    marker = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _unmount_under(root: Path) -> None:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=30)


def _stop(daemon: Dockerd) -> None:
    try:
        with contextlib.closing(daemon.api()) as api:
            for container in api.containers(all=True, quiet=True):
                api.remove_container(container["Id"], force=True)
    except Exception:  # the daemon may be gone already; the kills below still clean up
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.process.pid, signal.SIGTERM)
    try:
        daemon.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait(timeout=10)
    for pid in _our_processes(daemon.root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _unmount_under(daemon.root)
    shutil.rmtree(daemon.root, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A dockerd of this session (of this xdist worker), stopped and cleaned away at the end."""
    binary = shutil.which("dockerd")
    if binary is None:
        pytest.skip(
            "docker leg skipped: dockerd is not installed (scripts/install-test-tools.sh installs docker.io)"
        )
    # A short path of our own: unix socket paths are limited to 108 bytes, and containerd adds to it.
    root = Path(tempfile.mkdtemp(prefix="fl-dockerd-", dir="/tmp"))
    log_path = root / "dockerd.log"
    command = [
        binary,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'docker.pid'}",
        f"--host=unix://{root / 'docker.sock'}",
        "--insecure-registry=127.0.0.0/8",
        "--shutdown-timeout=2",
        "--log-level=warn",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    daemon = Dockerd(root, process)
    deadline = time.monotonic() + 60
    while not _ping(daemon.socket):
        if process.poll() is not None or time.monotonic() > deadline:
            reason = _reason(log_path)
            _stop(daemon)
            pytest.skip(f"docker leg skipped: dockerd did not start: {reason}")
        time.sleep(0.05)
    try:
        yield daemon
    finally:
        _stop(daemon)


@pytest.fixture(scope="session")
def image_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain (no auth) docker-registry on loopback for this session."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"docker leg skipped: {reason}")
    with run_registry(tmp_path_factory.mktemp("docker-registry")) as registry:
        yield registry


def busybox_rootfs(path: Path) -> Path:
    """A tar of a root file system with only busybox-static and its applet links."""
    if not BUSYBOX.exists():
        pytest.skip("docker leg skipped: /bin/busybox is missing (install busybox-static)")
    with tarfile.open(path, "w") as tar:
        for directory in ("bin", "etc", "tmp", "www"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in BUSYBOX_LINKS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        hosts = b"127.0.0.1 localhost\n"
        info = tarfile.TarInfo("etc/hosts")
        info.size = len(hosts)
        tar.addfile(info, io.BytesIO(hosts))
    return path


def _dockerfile_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "]"


@dataclass
class TestImages:
    """Images in ``image_registry``, each a pinned reference; ``build`` makes more."""

    __test__ = False  # not a test class

    dockerd: Dockerd
    registry: Registry
    rootfs: Path
    built: dict[str, str] = field(default_factory=dict)

    def build(
        self,
        repository: str,
        tag: str,
        *,
        cmd: list[str],
        env: dict[str, str] | None = None,
        healthcheck: list[str] | None = None,
        health_retries: int = 2,
    ) -> str:
        """Import the busybox root file system with CMD/ENV/HEALTHCHECK, push it, forget it locally.

        Returns ``<registry>/<repository>@sha256:<manifest digest>``; the local copy is removed so
        that an installer really pulls it.
        """
        changes = [f"CMD {_dockerfile_list(cmd)}"]
        for key, value in (env or {}).items():
            changes.append(f"ENV {key}={value}")
        if healthcheck is not None:
            changes.append(
                f"HEALTHCHECK --interval=1s --timeout=2s --retries={health_retries} "
                f"CMD {_dockerfile_list(healthcheck)}"
            )
        name = f"{self.registry.host}/{repository}"
        with contextlib.closing(self.dockerd.api()) as api:
            api.import_image(src=str(self.rootfs), repository=name, tag=tag, changes=changes)
            digest = None
            for event in api.push(name, tag=tag, stream=True, decode=True):
                if event.get("error"):
                    raise RuntimeError(f"docker push {name}:{tag} failed: {event['error']}")
                digest = (event.get("aux") or {}).get("Digest") or digest
            if digest is None:
                raise RuntimeError(f"docker push {name}:{tag} reported no digest")
            api.remove_image(f"{name}:{tag}", force=True)
        reference = f"{name}@{digest}"
        self.built[f"{repository}:{tag}"] = reference
        return reference

    def build_foreign(self, repository: str, tag: str, platform: str = "linux/arm64/v8") -> str:
        """An image for another platform (an OCI layout pushed with skopeo); pinned reference."""
        from fleetlift.images.rules import Platform

        from .oci_layout import build_image

        os_, architecture, *variant = platform.split("/")
        layout = self.rootfs.parent / f"layout-{repository.replace('/', '-')}-{tag}"
        built = build_image(layout, tag, [Platform(os_, architecture, variant[0] if variant else None)])
        self.registry.push(layout, tag, repository)
        return f"{self.registry.host}/{repository}@{built.manifests[platform]}"

    # The standard set, built once per session.
    @property
    def healthy_v1(self) -> str:
        return self.built["fleetlift/telemetry:v1"]

    @property
    def healthy_v2(self) -> str:
        return self.built["fleetlift/telemetry:v2"]

    @property
    def healthy_v3(self) -> str:
        return self.built["fleetlift/telemetry:v3"]

    @property
    def unhealthy(self) -> str:
        return self.built["fleetlift/telemetry:unhealthy"]

    @property
    def exits(self) -> str:
        return self.built["fleetlift/telemetry:exits"]

    @property
    def plain(self) -> str:
        """No HEALTHCHECK; runs until stopped."""
        return self.built["fleetlift/plain:v1"]

    @property
    def httpd(self) -> str:
        """No HEALTHCHECK; serves "$VERSION" on 127.0.0.1:$PORT (run it with the host network)."""
        return self.built["fleetlift/httpd:v1"]


@pytest.fixture(scope="session")
def test_images(
    dockerd: Dockerd, image_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> TestImages:
    """The standard images: healthy v1/v2/v3 (HEALTHCHECK on /tmp/ready), unhealthy, exits, plain, httpd."""
    workdir = tmp_path_factory.mktemp("images")
    images = TestImages(dockerd, image_registry, busybox_rootfs(workdir / "rootfs.tar"))
    healthy = f"echo telemetry $VERSION starting; touch /tmp/ready; {SERVE_FOREVER}"
    ready = ["/bin/test", "-f", "/tmp/ready"]
    for version in ("v1", "v2", "v3"):
        images.build(
            "fleetlift/telemetry",
            version,
            cmd=["/bin/sh", "-c", healthy],
            env={"VERSION": version},
            healthcheck=ready,
        )
    images.build(
        "fleetlift/telemetry",
        "unhealthy",
        cmd=["/bin/sh", "-c", f"echo telemetry starting without its config; {SERVE_FOREVER}"],
        env={"VERSION": "unhealthy"},
        healthcheck=["/bin/sh", "-c", "echo 'config /etc/telemetry.yml not found' && false"],
    )
    images.build(
        "fleetlift/telemetry",
        "exits",
        cmd=["/bin/sh", "-c", "echo 'fatal: cannot open /dev/ttyUSB0' >&2; exit 3"],
        env={"VERSION": "exits"},
    )
    images.build("fleetlift/plain", "v1", cmd=["/bin/sh", "-c", SERVE_FOREVER])
    images.build(
        "fleetlift/httpd",
        "v1",
        cmd=[
            "/bin/sh",
            "-c",
            'mkdir -p /tmp/www && echo "$VERSION" > /tmp/www/index.html && '
            'httpd -f -p "127.0.0.1:$PORT" -h /tmp/www & trap "kill $!; exit 0" TERM; wait $!',
        ],
        env={"VERSION": "v1", "PORT": "8080"},
    )
    return images
