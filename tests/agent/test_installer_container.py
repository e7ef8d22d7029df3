"""The container installer against a real dockerd (vfs, no bridge) and a real registry.

Every container runs with the network mode "none", except the host-port test, which serves on
loopback with the host network."""

from __future__ import annotations

import logging
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlift_agent.installers import InstallError, Payload, Update
from fleetlift_agent.installers.container import ContainerInstaller, RegistryCredentials

from ..dockerd import Dockerd, TestImages, dockerd, image_registry, test_images  # noqa: F401
from ..ports import free_port
from ..registry import PASSWORD, USER, run_registry

pytestmark = pytest.mark.docker


_OPEN: list[ContainerInstaller] = []


@pytest.fixture(autouse=True)
def _close_installers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _installer(daemon: Dockerd, **options: Any) -> ContainerInstaller:
    settings: dict[str, Any] = {
        "base_url": str(daemon.socket),  # a bare socket path is accepted as well as unix://
        "soak_seconds": 1.0,
        "health_timeout": 15.0,
        "network_mode": "none",
        "stop_timeout": 3,
        "poll_interval": 0.2,
        **options,
    }
    installer = ContainerInstaller(**settings)
    _OPEN.append(installer)
    return installer


def _update(version: str) -> Update:
    return Update(f"dep-{version}-{uuid.uuid4().hex[:8]}", "telemetry", version, "patch")


def _payload(name: str, image: str, **spec: Any) -> Payload:
    return Payload("container", name, {"type": "container", "name": name, "image": image, **spec})


def _install(installer: ContainerInstaller, update: Update, payload: Payload) -> None:
    for step in (installer.prepare, installer.switch, installer.check, installer.commit):
        step(update, payload)


def _inspect(api: Any, name: str) -> dict[str, Any] | None:
    import docker

    try:
        found: dict[str, Any] = api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    return found if found["Name"] == f"/{name}" else None


def _exists(api: Any, container_id: str) -> bool:
    import docker

    try:
        api.inspect_container(container_id)
    except docker.errors.NotFound:
        return False
    return True


def _image_present(api: Any, reference: str) -> bool:
    import docker

    try:
        api.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def _env(container: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container["Config"]["Env"])


@pytest.fixture
def api(dockerd: Dockerd) -> Iterator[Any]:  # noqa: F811
    client = dockerd.api()
    yield client
    client.close()


@pytest.fixture
def name(api: Any) -> Iterator[str]:
    """A container name of this test; its containers are removed afterwards (they share the daemon)."""
    name = f"telemetry-{uuid.uuid4().hex[:8]}"
    yield name
    for entry in api.containers(all=True, filters={"label": f"io.fleetlift.name={name}"}):
        api.remove_container(entry["Id"], force=True)


def test_first_install_with_no_old_container(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd)
    update = _update("1.0")
    tagged = test_images.healthy_v1.replace("@", ":v1@")  # a tag before the digest is allowed
    payload = _payload(name, tagged, env={"SITE": "plant-7"}, restart_policy="on-failure")

    installer.prepare(update, payload)
    assert _image_present(api, test_images.healthy_v1)
    installer.switch(update, payload)
    candidate = _inspect(api, f"{name}.next")
    assert candidate is not None and candidate["State"]["Running"]
    assert _inspect(api, name) is None
    labels = candidate["Config"]["Labels"]
    assert labels["io.fleetlift.name"] == name
    assert labels["io.fleetlift.deployment"] == update.deployment_id
    assert labels["io.fleetlift.version"] == "1.0"
    assert labels["io.fleetlift.replaces"] == ""
    assert _env(candidate)["SITE"] == "plant-7" and _env(candidate)["VERSION"] == "v1"
    assert candidate["HostConfig"]["NetworkMode"] == "none"
    assert candidate["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"

    installer.check(update, payload)
    installer.commit(update, payload)
    live = _inspect(api, name)
    assert live is not None and live["Id"] == candidate["Id"] and live["State"]["Running"]
    assert _inspect(api, f"{name}.next") is None
    assert installer.installed()[name] == "1.0"


def test_upgrade_keeps_v1_running_until_v2_is_healthy_and_keeps_v1_image(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd)
    _install(installer, _update("1.0"), _payload(name, test_images.healthy_v1))
    v1 = _inspect(api, name)
    assert v1 is not None

    update = _update("2.0")
    payload = _payload(name, test_images.healthy_v2)
    installer.prepare(update, payload)
    installer.switch(update, payload)
    v2 = _inspect(api, f"{name}.next")
    assert v2 is not None and v2["State"]["Running"]
    assert v2["Config"]["Labels"]["io.fleetlift.replaces"] == v1["Id"]
    installer.check(update, payload)
    still = _inspect(api, name)
    assert still is not None and still["Id"] == v1["Id"] and still["State"]["Running"]  # v1 ran throughout

    installer.commit(update, payload)
    live = _inspect(api, name)
    assert live is not None and live["Id"] == v2["Id"] and live["State"]["Running"]
    assert _env(live)["VERSION"] == "v2"
    names = {entry["Names"][0] for entry in api.containers(all=True)}
    assert not {f"/{name}.next", f"/{name}.prev"} & names
    assert not _exists(api, v1["Id"])
    assert _image_present(api, v1["Image"])  # the previous image is the rollback
    assert installer.installed()[name] == "2.0"


def test_commit_prunes_images_older_than_the_previous_one(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd, keep_previous=1)
    images = []
    for version, image in (("1.0", test_images.healthy_v1), ("2.0", test_images.healthy_v2)):
        _install(installer, _update(version), _payload(name, image))
        live = _inspect(api, name)
        assert live is not None
        images.append(live["Image"])
    plain = _payload(name, test_images.plain)  # a third version, from another repository
    _install(installer, _update("3.0"), plain)
    live = _inspect(api, name)
    assert live is not None and live["Config"]["Labels"]["io.fleetlift.keep-images"] == images[1]
    assert not _image_present(api, images[0])  # v1 fell off: older than the previous one
    assert _image_present(api, images[1])


def test_unhealthy_v3_is_rolled_back_and_v2_still_runs(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd, health_timeout=10.0)
    _install(installer, _update("2.0"), _payload(name, test_images.healthy_v2))
    v2 = _inspect(api, name)
    assert v2 is not None

    update = _update("3.0")
    payload = _payload(name, test_images.unhealthy)
    installer.prepare(update, payload)
    assert _image_present(api, test_images.unhealthy)
    installer.switch(update, payload)
    with pytest.raises(
        InstallError, match=r"is unhealthy; last health check said: config /etc/telemetry.yml"
    ):
        installer.check(update, payload)
    installer.rollback(update, payload)

    live = _inspect(api, name)
    assert live is not None and live["Id"] == v2["Id"] and live["State"]["Running"]
    assert _inspect(api, f"{name}.next") is None
    assert not [entry for entry in api.containers(all=True) if entry["Image"] == test_images.unhealthy]
    assert not _image_present(api, test_images.unhealthy)  # nothing uses it any more
    assert installer.installed()[name] == "2.0"


def test_container_that_exits_at_once_is_rolled_back(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd)
    _install(installer, _update("1.0"), _payload(name, test_images.plain))  # no HEALTHCHECK: "still running"
    old = _inspect(api, name)
    assert old is not None

    for policy, message in (("never", "exited with code 3"), ("always", "exited")):
        update = _update("2.0")
        payload = _payload(name, test_images.exits, restart_policy=policy)
        installer.prepare(update, payload)
        installer.switch(update, payload)
        with pytest.raises(InstallError) as failure:
            installer.check(update, payload)
        assert "fatal: cannot open /dev/ttyUSB0" in str(failure.value)
        assert message in str(failure.value)

        installer.rollback(update, payload)
        live = _inspect(api, name)
        assert live is not None and live["Id"] == old["Id"] and live["State"]["Running"]
        assert _inspect(api, f"{name}.next") is None


def test_not_healthy_by_the_timeout_names_the_probe(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    name: str,
) -> None:
    port = free_port()  # nothing listens there
    installer = _installer(dockerd, http_probe=f"http://127.0.0.1:{port}/healthz", health_timeout=1.5)
    update = _update("1.0")
    payload = _payload(name, test_images.plain)
    installer.prepare(update, payload)
    installer.switch(update, payload)
    with pytest.raises(
        InstallError, match=rf"not healthy after 1.5s; last probe http://127.0.0.1:{port}/healthz"
    ):
        installer.check(update, payload)
    installer.rollback(update, payload)
    assert name not in installer.installed()


def test_a_container_started_by_hand_is_replaced_and_restored(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    repository, digest = test_images.plain.split("@")
    api.pull(repository, tag=digest)
    by_hand = api.create_container(test_images.plain, name=name, host_config={"NetworkMode": "none"})
    api.start(by_hand["Id"])  # no fleetlift labels at all: it predates the agent

    installer = _installer(dockerd)
    update = _update("1.0")
    payload = _payload(name, test_images.healthy_v1)
    installer.prepare(update, payload)
    installer.switch(update, payload)
    installer.rollback(update, payload)
    live = _inspect(api, name)
    assert live is not None and live["Id"] == by_hand["Id"] and live["State"]["Running"]
    assert name not in installer.installed()  # not ours to report

    _install(installer, update, payload)
    live = _inspect(api, name)
    assert live is not None and live["Id"] != by_hand["Id"] and _env(live)["VERSION"] == "v1"
    assert not _exists(api, by_hand["Id"])
    assert live["Config"]["Labels"]["io.fleetlift.replaces"] == by_hand["Id"]
    assert installer.installed()[name] == "1.0"


def test_rollback_from_a_fresh_installer_after_switch(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    _install(_installer(dockerd), _update("1.0"), _payload(name, test_images.healthy_v1))
    v1 = _inspect(api, name)
    assert v1 is not None
    update = _update("2.0")
    payload = _payload(name, test_images.healthy_v2)
    crashed = _installer(dockerd)
    crashed.prepare(update, payload)
    crashed.switch(update, payload)
    # kill -9 here: a new process carries on with a new installer, nothing in memory survives

    _installer(dockerd).rollback(update, payload)
    live = _inspect(api, name)
    assert live is not None and live["Id"] == v1["Id"] and live["State"]["Running"]
    assert _inspect(api, f"{name}.next") is None
    assert _installer(dockerd).installed()[name] == "1.0"


def test_crash_inside_commit_can_be_rolled_back_or_committed_again(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    _install(_installer(dockerd), _update("1.0"), _payload(name, test_images.healthy_v1))
    v1 = _inspect(api, name)
    assert v1 is not None
    update = _update("2.0")
    payload = _payload(name, test_images.healthy_v2)
    installer = _installer(dockerd)
    installer.prepare(update, payload)
    installer.switch(update, payload)
    api.rename(v1["Id"], f"{name}.prev")  # commit's first rename done, then the power went out

    _installer(dockerd).rollback(update, payload)
    live = _inspect(api, name)
    assert live is not None and live["Id"] == v1["Id"] and live["State"]["Running"]

    installer.switch(update, payload)
    api.rename(v1["Id"], f"{name}.prev")
    _installer(dockerd).commit(update, payload)  # the runner re-runs commit instead
    live = _inspect(api, name)
    assert live is not None and _env(live)["VERSION"] == "v2" and live["State"]["Running"]
    assert _inspect(api, f"{name}.prev") is None
    with pytest.raises(InstallError, match="already committed"):
        _installer(dockerd).rollback(update, payload)


def test_steps_are_idempotent(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd)
    update = _update("1.0")
    payload = _payload(name, test_images.healthy_v1)
    installer.rollback(update, payload)  # nothing done yet: nothing to undo
    assert _inspect(api, name) is None

    installer.prepare(update, payload)
    installer.prepare(update, payload)
    installer.switch(update, payload)
    first = _inspect(api, f"{name}.next")
    installer.switch(update, payload)
    second = _inspect(api, f"{name}.next")
    assert first is not None and second is not None and first["Id"] == second["Id"]
    assert len([entry for entry in api.containers(all=True) if name in entry["Names"][0]]) == 1

    api.stop(second["Id"], timeout=3)  # e.g. the device rebooted between start and the journal write
    installer.switch(update, payload)
    restarted = _inspect(api, f"{name}.next")
    assert restarted is not None and restarted["Id"] == first["Id"] and restarted["State"]["Running"]

    installer.check(update, payload)
    installer.commit(update, payload)
    installer.commit(update, payload)
    installer.switch(update, payload)  # a confused re-run after commit changes nothing
    live = _inspect(api, name)
    assert live is not None and live["Id"] == first["Id"] and live["State"]["Running"]
    assert _inspect(api, f"{name}.next") is None


def test_refuses_an_image_not_pinned_to_a_digest(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    installer = _installer(dockerd)
    by_tag = test_images.healthy_v1.split("@")[0] + ":v1"
    with pytest.raises(InstallError, match="is not pinned to a digest"):
        installer.prepare(_update("1.0"), _payload(name, by_tag))
    with pytest.raises(InstallError, match="is not pinned to a digest"):
        installer.switch(_update("1.0"), _payload(name, by_tag))
    assert not _image_present(api, by_tag)


def test_refuses_an_image_for_another_platform(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    foreign = test_images.build_foreign("fleetlift/arm-only", "1.0", "linux/arm64/v8")
    installer = _installer(dockerd)
    update, payload = _update("1.0"), _payload(name, foreign)
    with pytest.raises(
        InstallError, match=r"is built for linux/arm64 but this device's Docker engine runs linux/"
    ):
        installer.prepare(update, payload)
    assert _image_present(api, foreign)
    installer.rollback(update, payload)
    assert not _image_present(api, foreign)  # the pulled image is not left behind


def test_host_port_held_by_the_old_container_stops_it_first(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    api: Any,
    name: str,
) -> None:
    port = free_port()
    installer = _installer(dockerd, network_mode="host", http_probe="http://127.0.0.1:{host_port}/")
    ports = [{"container_port": port, "host_port": port, "protocol": "tcp"}]

    def payload(version: str) -> Payload:
        return _payload(name, test_images.httpd, env={"VERSION": version, "PORT": str(port)}, ports=ports)

    def served() -> str:
        """The page on the port, waiting a little for a container that was just (re)started to listen."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 5
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/", timeout=3) as response:
                    return str(response.read().decode().strip())
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    _install(installer, _update("1.0"), payload("v1"))
    assert served() == "v1"

    update = _update("2.0")
    installer.prepare(update, payload("v2"))
    installer.switch(update, payload("v2"))
    old = _inspect(api, name)
    assert old is not None and not old["State"]["Running"]  # stopped, not removed
    installer.check(update, payload("v2"))
    assert served() == "v2"
    installer.rollback(update, payload("v2"))  # e.g. another payload of the update failed
    assert served() == "v1"

    retry = _update("2.0")
    _install(installer, retry, payload("v2"))
    assert served() == "v2"
    assert installer.installed()[name] == "2.0"


def test_pulls_from_a_registry_with_a_password_and_never_shows_it(
    dockerd: Dockerd,  # noqa: F811
    test_images: TestImages,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    with run_registry(tmp_path / "registry", "basic") as private:
        source = test_images.healthy_v1
        repository, digest = source.split("/", 1)[1].split("@")
        copied = subprocess.run(
            [
                "skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                "--dest-creds", f"{USER}:{PASSWORD}", "--preserve-digests",
                f"docker://{source}", f"docker://{private.host}/{repository}:v1",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert copied.returncode == 0, copied.stderr
        image = f"{private.host}/{repository}@{digest}"
        payload = _payload(name, image)
        caplog.set_level(logging.DEBUG)

        with pytest.raises(InstallError, match=rf"could not pull {re.escape(image)}: .*") as anonymous:
            _installer(dockerd).prepare(_update("1.0"), payload)
        wrong = {private.host: RegistryCredentials(USER, "not-" + PASSWORD)}
        with pytest.raises(InstallError, match=rf"could not pull {re.escape(image)}: .*") as refused:
            _installer(dockerd, registry_auth=wrong).prepare(_update("1.0"), payload)
        right = {private.host: RegistryCredentials(USER, PASSWORD)}
        installer = _installer(dockerd, registry_auth=right)
        _install(installer, _update("1.0"), payload)

    assert installer.installed()[name] == "1.0"
    for text in (str(anonymous.value), str(refused.value), caplog.text, repr(installer.__dict__)):
        assert PASSWORD not in text
    assert "unauthorized" in str(anonymous.value).lower() or "auth" in str(anonymous.value).lower()


def test_an_engine_that_cannot_be_reached_is_named(tmp_path: Path) -> None:
    installer = ContainerInstaller(base_url=str(tmp_path / "missing.sock"))
    _OPEN.append(installer)
    with pytest.raises(
        InstallError, match=rf"cannot reach the Docker engine at unix://{tmp_path}/missing.sock"
    ):
        installer.installed()
