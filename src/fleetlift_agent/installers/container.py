"""The container installer: one Docker container per payload, replaced beside the running one.

The steps, and where a new process finds their state after a crash (Docker itself, never memory):

    prepare   pull the image by digest (refused unless pinned) and check its platform against the
              engine's; the old container keeps running
    switch    create and start ``<name>.next`` beside ``<name>``; when the payload publishes a host
              port that the old container holds, the old one is stopped (not removed) first
    check     the image's HEALTHCHECK until healthy, else the HTTP probe, else "still running", and
              then that it stays so for the soak window
    commit    rename ``<name>`` to ``<name>.prev``, ``<name>.next`` to ``<name>``, remove
              ``<name>.prev`` (the only step that cannot be undone comes last), prune old images
    rollback  remove the new container, put the old one back under ``<name>`` and start it

Roles are carried by the container names (labels cannot change after a container is created); the
labels say which fleetlift name and deployment a container belongs to, the container it replaced
and the images kept for rolling back by hand.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fleetlift_agent.installers import InstallError, Payload, Update

log = logging.getLogger(__name__)

LABEL_NAME = "io.fleetlift.name"
LABEL_DEPLOYMENT = "io.fleetlift.deployment"
LABEL_RELEASE = "io.fleetlift.release"
LABEL_VERSION = "io.fleetlift.version"
LABEL_REPLACES = "io.fleetlift.replaces"  # id of the container that was live at switch ("" if none)
LABEL_KEEP = "io.fleetlift.keep-images"  # image ids kept for rolling back, newest first
LABEL_DROP = "io.fleetlift.drop-images"  # image ids that commit removes (fell off the kept list)
LABEL_RESTART = "io.fleetlift.restart-policy"
LABEL_ORDER = "io.fleetlift.startup-order"

NEXT_SUFFIX = ".next"
PREVIOUS_SUFFIX = ".prev"

# Docker has no "restart when unhealthy"; the label keeps the wish for a supervisor to act on.
RESTART_POLICIES = {
    "always": "unless-stopped",  # survives reboots, but a stop by the installer or an operator sticks
    "on-unhealthy": "unless-stopped",
    "on-failure": "on-failure",
    "never": "no",
}
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class RegistryCredentials:
    """Login for one registry host; the password is never logged nor shown in repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int | None
    protocol: str  # tcp, udp or sctp

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class ContainerSpec:
    """A container payload's spec, validated."""

    name: str
    image: str  # [registry/]repository[:tag]@sha256:<hex>
    repository: str
    digest: str
    env: dict[str, str]
    ports: tuple[PortMapping, ...]
    create_options: dict[str, Any]
    restart_policy: str | None
    startup_order: int


def split_pinned(image: str) -> tuple[str, str]:
    """``registry/repo[:tag]@sha256:…`` → (``registry/repo``, ``sha256:…``); InstallError unless pinned."""
    name, at, digest = image.partition("@")
    if not at or not _DIGEST.match(digest):
        raise InstallError(
            f"image {image!r} is not pinned to a digest (expected <repository>@sha256:<64 hex digits>); "
            "the agent only runs images pinned by the server"
        )
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag before the digest: the digest wins, the tag is dropped
        name = name[:colon]
    if not name:
        raise InstallError(f"image {image!r} names no repository")
    return name, digest


def parse_spec(payload: Payload) -> ContainerSpec:
    """Validate a container payload's spec; InstallError says what is wrong."""
    spec = payload.spec
    if spec.get("type", "container") != "container":
        raise InstallError(f"payload {payload.name!r} is a {spec.get('type')!r} payload, not a container")
    name = str(spec.get("name") or payload.name)
    if name != payload.name:
        raise InstallError(f"payload {payload.name!r} names a different container {name!r} in its spec")
    if not _NAME.match(name) or name.endswith((NEXT_SUFFIX, PREVIOUS_SUFFIX)):
        raise InstallError(f"{name!r} is not a usable container name")
    image = spec.get("image")
    if not isinstance(image, str) or not image:
        raise InstallError(f"container {name!r} has no image")
    repository, digest = split_pinned(image)
    env_in = spec.get("env") or {}
    if not isinstance(env_in, dict):
        raise InstallError(f"container {name!r}: env must be an object of names to values")
    env = {str(key): str(value) for key, value in env_in.items()}
    ports = []
    for entry in spec.get("ports") or []:
        try:
            container_port = int(entry["container_port"])
            host = entry.get("host_port")
            host_port = int(host) if host not in (None, "") else None
            protocol = str(entry.get("protocol") or "tcp").lower()
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InstallError(f"container {name!r}: bad port mapping {entry!r}") from error
        if protocol not in ("tcp", "udp", "sctp"):
            raise InstallError(f"container {name!r}: unknown port protocol {protocol!r}")
        ports.append(PortMapping(container_port, host_port, protocol))
    create_options = spec.get("create_options") or {}
    if not isinstance(create_options, dict):
        raise InstallError(f"container {name!r}: create_options must be an object")
    restart = spec.get("restart_policy")
    if restart is not None and restart not in RESTART_POLICIES:
        raise InstallError(
            f"container {name!r}: unknown restart policy {restart!r} "
            f"(use one of {', '.join(RESTART_POLICIES)})"
        )
    try:
        startup_order = int(spec.get("startup_order") or 0)
    except (TypeError, ValueError) as error:
        raise InstallError(f"container {name!r}: startup_order must be a number") from error
    return ContainerSpec(
        name, image, repository, digest, env, tuple(ports), create_options, restart, startup_order
    )


def container_config(
    spec: ContainerSpec, update: Update, *, network_mode: str | None, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The Docker Engine create body: the payload's create options with image, env, ports and labels."""
    config: dict[str, Any] = {key: value for key, value in spec.create_options.items() if key != "name"}
    config["Image"] = spec.image
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    env.update(spec.env)
    if env:
        config["Env"] = [f"{key}={value}" for key, value in env.items()]
    host_config: dict[str, Any] = dict(config.get("HostConfig") or {})
    if spec.ports:
        exposed = dict(config.get("ExposedPorts") or {})
        bindings = dict(host_config.get("PortBindings") or {})
        for port in spec.ports:
            exposed[port.key] = {}
            if port.host_port is not None:
                bindings[port.key] = [{"HostIp": "", "HostPort": str(port.host_port)}]
        config["ExposedPorts"] = exposed
        host_config["PortBindings"] = bindings
    if spec.restart_policy is not None or "RestartPolicy" not in host_config:
        policy = RESTART_POLICIES[spec.restart_policy or "always"]
        host_config["RestartPolicy"] = {"Name": policy, "MaximumRetryCount": 0}
    if network_mode is not None and "NetworkMode" not in host_config:
        host_config["NetworkMode"] = network_mode
    config["HostConfig"] = host_config
    config["Labels"] = {
        **{str(key): str(value) for key, value in (config.get("Labels") or {}).items()},
        LABEL_NAME: spec.name,
        LABEL_DEPLOYMENT: update.deployment_id,
        LABEL_RELEASE: update.release_name,
        LABEL_VERSION: update.release_version,
        LABEL_RESTART: spec.restart_policy or "always",
        LABEL_ORDER: str(spec.startup_order),
        **labels,
    }
    return config


def held_host_ports(container: Mapping[str, Any]) -> set[tuple[int, str]]:
    """(host port, protocol) pairs that a container (as inspected) publishes."""
    held: set[tuple[int, str]] = set()
    bindings = (container.get("HostConfig") or {}).get("PortBindings") or {}
    for key, entries in bindings.items():
        protocol = key.partition("/")[2] or "tcp"
        for entry in entries or []:
            host_port = str((entry or {}).get("HostPort") or "")
            if host_port.isdigit():
                held.add((int(host_port), protocol))
    return held


def _labels(container: Mapping[str, Any]) -> dict[str, str]:
    """An inspected container's labels (Docker gives null for none)."""
    return dict((container.get("Config") or {}).get("Labels") or {})


def _split_ids(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


class ContainerInstaller:
    """Installs container payloads through the Docker Engine API (the ``docker`` package).

    ``http_probe`` is a URL template used when the image has no HEALTHCHECK, with the fields
    ``{name}``, ``{host_port}`` (the payload's first published host port) and ``{container_ip}``,
    for example ``"http://127.0.0.1:{host_port}/healthz"``; any status below 400 is healthy.
    """

    kind: ClassVar[str] = "container"
    needs_reboot: ClassVar[bool] = False

    def __init__(
        self,
        *,
        base_url: str = "unix:///var/run/docker.sock",
        soak_seconds: float = 30.0,
        health_timeout: float = 120.0,
        http_probe: str | None = None,
        network_mode: str | None = None,
        registry_auth: Mapping[str, RegistryCredentials] | None = None,
        keep_previous: int = 1,
        stop_timeout: int = 10,
        poll_interval: float = 0.5,
        api_timeout: float = 300.0,
    ) -> None:
        if base_url.startswith("/"):
            base_url = f"unix://{base_url}"
        if keep_previous < 0:
            raise ValueError("keep_previous must be 0 or more")
        self.base_url = base_url
        self.soak_seconds = soak_seconds
        self.health_timeout = health_timeout
        self.http_probe = http_probe
        self.network_mode = network_mode
        self.keep_previous = keep_previous
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self._registry_auth = dict(registry_auth or {})
        self._api_timeout = api_timeout
        self._api: Any = None  # docker.APIClient, made on first use so the agent starts without dockerd
        self._errors: Any = None

    # ---- the five steps ----------------------------------------------------------------------

    def prepare(self, update: Update, payload: Payload) -> None:
        """Pull the pinned image and check it was built for this engine's platform."""
        spec = parse_spec(payload)
        image = self._pull(spec)
        engine = self._call("read the Docker engine's version", lambda api: api.version())
        image_platform = f"{image.get('Os')}/{image.get('Architecture')}"
        engine_platform = f"{engine.get('Os')}/{engine.get('Arch')}"
        if image_platform != engine_platform:
            raise InstallError(
                f"image {spec.image} is built for {image_platform} but this device's Docker engine "
                f"runs {engine_platform}"
            )
        log.info("container %s: image %s is ready", spec.name, spec.image)

    def switch(self, update: Update, payload: Payload) -> None:
        """Start the new container as ``<name>.next`` beside the old one."""
        spec = parse_spec(payload)
        next_name = spec.name + NEXT_SUFFIX
        live = self._inspect(spec.name)
        if live is not None and self._ours(live, update):
            return  # switched and committed already
        old = live
        candidate = self._inspect(next_name)
        if candidate is not None and not (
            self._ours(candidate, update) and candidate["Config"]["Image"] == spec.image
        ):
            log.warning("container %s: removing a leftover %s from an earlier update", spec.name, next_name)
            self._remove(candidate, graceful=False)
            candidate = None
        wanted = {(port.host_port, port.protocol) for port in spec.ports if port.host_port is not None}
        if old is not None and old["State"].get("Running") and wanted & held_host_ports(old):
            log.info(
                "container %s: stopping the old container first, it holds the same host ports", spec.name
            )
            self._call(
                f"stop the old container {spec.name}", lambda api: api.stop(old["Id"], self.stop_timeout)
            )
        if candidate is None:
            image = self._pull(spec)
            config = container_config(
                spec, update, network_mode=self.network_mode, labels=self._history_labels(old, image)
            )
            created = self._call(
                f"create container {next_name} from {spec.image}",
                lambda api: api.create_container_from_config(config, name=next_name),
            )
            candidate = self._inspect(created["Id"])
            if candidate is None:
                raise InstallError(f"container {next_name} vanished right after it was created")
        if not candidate["State"].get("Running"):
            self._call(f"start container {next_name}", lambda api: api.start(candidate["Id"]))
        log.info("container %s: %s started beside the old container", spec.name, next_name)

    def check(self, update: Update, payload: Payload) -> None:
        """Wait until the new container is healthy, then watch it for the soak window."""
        spec = parse_spec(payload)
        container = self._candidate(spec.name, update)
        if container is None:
            raise InstallError(
                f"container {spec.name}: there is no new container to check (switch did not run)"
            )
        label = container["Name"].lstrip("/")
        healthcheck = (container.get("Config") or {}).get("Healthcheck") or {}
        has_healthcheck = bool(healthcheck.get("Test")) and healthcheck["Test"][0] != "NONE"
        probe = None if has_healthcheck else self._probe_url(spec, container)
        started = time.monotonic()
        healthy_since: float | None = None
        last_output = ""
        while True:
            current = self._inspect(container["Id"])
            if current is None:
                raise InstallError(f"container {label} disappeared while it was being checked")
            state = current["State"]
            if state.get("Status") in ("exited", "dead"):
                what = f"exited with code {state.get('ExitCode')} {state.get('Error') or ''}".strip()
            elif state.get("Restarting"):
                what = (
                    f"exited with code {state.get('ExitCode')} and is being restarted by its restart policy"
                )
            elif current.get("RestartCount"):
                what = f"exited and was restarted {current['RestartCount']} time(s) by its restart policy"
            else:
                what = ""
            if what:
                tail = self._log_tail(container["Id"])
                raise InstallError(f"container {label} ({spec.image}) {what}; last log lines:\n{tail}")
            if not state.get("Running"):
                raise InstallError(
                    f"container {label} ({spec.image}) is not running (it is {state.get('Status')})"
                )
            now = time.monotonic()
            if has_healthcheck:
                health = state.get("Health") or {}
                entries = health.get("Log") or []
                if entries:
                    last_output = str(entries[-1].get("Output") or "").strip()
                if health.get("Status") == "unhealthy":
                    raise InstallError(
                        f"container {label} ({spec.image}) is unhealthy; "
                        f"last health check said: {last_output}"
                    )
                if health.get("Status") == "healthy" and healthy_since is None:
                    healthy_since = now
            elif probe is not None:
                ok, last_output = _http_probe(probe)
                if ok and healthy_since is None:
                    healthy_since = now
                elif not ok and healthy_since is not None:
                    raise InstallError(
                        f"container {label}: the probe {probe} failed during the soak: {last_output}"
                    )
            elif healthy_since is None:
                healthy_since = now  # running is all we can tell
            if healthy_since is not None and now - healthy_since >= self.soak_seconds:
                log.info("container %s: healthy through the %ss soak", spec.name, self.soak_seconds)
                return
            if healthy_since is None and now - started > self.health_timeout:
                what = "health check" if has_healthcheck else f"probe {probe}"
                raise InstallError(
                    f"container {label} ({spec.image}) was not healthy after {self.health_timeout:g}s; "
                    f"last {what} said: {last_output or 'nothing yet'}"
                )
            time.sleep(self.poll_interval)

    def commit(self, update: Update, payload: Payload) -> None:
        """Make the new container ``<name>``, remove the old one, prune images no longer kept."""
        spec = parse_spec(payload)
        next_name, previous_name = spec.name + NEXT_SUFFIX, spec.name + PREVIOUS_SUFFIX
        candidate = self._inspect(next_name)
        live = self._inspect(spec.name)
        previous = self._inspect(previous_name)
        if candidate is not None and self._ours(candidate, update):
            if live is not None:  # the old one: renamed, so that nothing is lost until the last step
                if previous is not None:
                    self._remove(previous, graceful=False)
                old_id = live["Id"]
                self._call(f"rename {spec.name}", lambda api: api.rename(old_id, previous_name))
                previous = live
            self._call(
                f"rename {next_name} to {spec.name}", lambda api: api.rename(candidate["Id"], spec.name)
            )
            live = candidate
        elif live is None or not self._ours(live, update):
            raise InstallError(
                f"container {spec.name}: there is no new container to commit (switch did not run)"
            )
        if previous is not None:
            self._remove(previous, graceful=True)
        for image_id in _split_ids(_labels(live).get(LABEL_DROP)):
            self._remove_image_if_unused(image_id, spec.name)
        log.info("container %s: committed %s", spec.name, update.release_version)

    def rollback(self, update: Update, payload: Payload) -> None:
        """Remove the new container and run the old one under ``<name>`` again; safe after any step."""
        spec = parse_spec(payload)
        next_name, previous_name = spec.name + NEXT_SUFFIX, spec.name + PREVIOUS_SUFFIX
        candidate = self._inspect(next_name)
        live = self._inspect(spec.name)
        previous = self._inspect(previous_name)
        new_image: str | None = None
        if live is not None and self._ours(live, update) and candidate is None and previous is None:
            raise InstallError(
                f"container {spec.name} {update.release_version} was already committed and the container "
                "it replaced is removed; there is nothing to roll back to"
            )
        for container in (candidate, live):
            if container is not None and self._ours(container, update):
                new_image = container["Image"]
                self._remove(container, graceful=True)
                if container is live:
                    live = None
        if live is None and previous is not None:
            self._call(
                f"rename {previous_name} back to {spec.name}",
                lambda api: api.rename(previous["Id"], spec.name),
            )
            live = previous
        if live is not None and not live["State"].get("Running"):
            self._call(f"start the previous container {spec.name}", lambda api: api.start(live["Id"]))
            log.info("container %s: previous container started again", spec.name)
        if new_image is None:  # prepare may have pulled it without a container being made
            pulled = self._inspect_image(spec.image)
            new_image = pulled["Id"] if pulled is not None else None
        kept = set(_split_ids(_labels(live).get(LABEL_KEEP))) if live is not None else set()
        if new_image is not None and new_image not in kept:
            self._remove_image_if_unused(new_image, spec.name)  # never one that a container uses
        log.info("container %s: rolled back", spec.name)

    def installed(self) -> dict[str, str]:
        """The fleetlift-managed containers live under their own name: name → release version (or image)."""
        listed = self._call(
            "list containers", lambda api: api.containers(all=True, filters={"label": LABEL_NAME})
        )
        result: dict[str, str] = {}
        for entry in listed:
            labels = entry.get("Labels") or {}
            names = [name.lstrip("/") for name in entry.get("Names") or []]
            if labels.get(LABEL_NAME) in names:
                result[labels[LABEL_NAME]] = labels.get(LABEL_VERSION) or entry.get("Image", "")
        return result

    def close(self) -> None:
        """Close the connections to the engine (a later step opens them again)."""
        if self._api is not None:
            self._api.close()
            self._api = None

    # ---- Docker, through one narrow door -----------------------------------------------------

    def _client(self) -> Any:
        if self._api is None:
            import docker  # the agent without containers never imports it
            import requests  # a dependency of docker

            self._errors = docker.errors
            if self.base_url.startswith("unix://"):
                _check_socket(self.base_url)
            # The API version is negotiated here: version="auto" leaks a socket when the engine is down.
            probe = docker.APIClient(base_url=self.base_url, version="1.24", timeout=self._api_timeout)
            try:
                offered = str(probe.version(api_version=False)["ApiVersion"])
            except (docker.errors.DockerException, requests.RequestException, OSError, KeyError) as error:
                raise InstallError(f"cannot reach the Docker engine at {self.base_url}: {error}") from error
            finally:
                probe.close()
            ours = docker.constants.DEFAULT_DOCKER_API_VERSION
            version = offered if docker.utils.version_lt(offered, ours) else ours
            self._api = docker.APIClient(base_url=self.base_url, version=version, timeout=self._api_timeout)
        return self._api

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        import requests  # a dependency of docker

        try:
            yield
        except InstallError:
            raise
        except self._errors.APIError as error:
            raise InstallError(f"could not {action}: {error.explanation or error}") from error
        except (self._errors.DockerException, requests.RequestException, OSError) as error:
            raise InstallError(
                f"could not {action}: the Docker engine at {self.base_url} failed: {error}"
            ) from error

    def _call(self, action: str, function: Callable[[Any], Any]) -> Any:
        api = self._client()
        with self._translated(action):
            return function(api)

    def _inspect(self, name_or_id: str) -> dict[str, Any] | None:
        api = self._client()
        with self._translated(f"inspect container {name_or_id}"):
            try:
                found: dict[str, Any] = api.inspect_container(name_or_id)
            except self._errors.NotFound:
                return None
        if found["Id"] != name_or_id and found["Name"].lstrip("/") != name_or_id:
            return None  # Docker also matches id prefixes; only the exact name counts
        return found

    def _inspect_image(self, reference: str) -> dict[str, Any] | None:
        api = self._client()
        with self._translated(f"inspect image {reference}"):
            try:
                found: dict[str, Any] = api.inspect_image(reference)
            except self._errors.NotFound:
                return None
        return found

    def _pull(self, spec: ContainerSpec) -> dict[str, Any]:
        present = self._inspect_image(spec.image)
        if present is not None:
            return present  # pulled before: a re-run needs no network
        registry = spec.repository.split("/", 1)[0] if "/" in spec.repository else "docker.io"
        credentials = self._registry_auth.get(registry)
        auth = {"username": credentials.username, "password": credentials.password} if credentials else None
        log.info("container %s: pulling %s", spec.name, spec.image)
        api = self._client()
        with self._translated(f"pull {spec.image}"):
            for event in api.pull(
                spec.repository, tag=spec.digest, stream=True, decode=True, auth_config=auth
            ):
                if isinstance(event, dict) and event.get("error"):
                    raise InstallError(f"could not pull {spec.image}: {event['error']}")
        pulled = self._inspect_image(spec.image)
        if pulled is None:
            raise InstallError(
                f"could not pull {spec.image}: the engine reports success but has no such image"
            )
        return pulled

    def _remove(self, container: Mapping[str, Any], *, graceful: bool) -> None:
        name = container["Name"].lstrip("/")
        api = self._client()
        with self._translated(f"remove container {name}"):
            try:
                if graceful and container["State"].get("Running"):
                    api.stop(container["Id"], self.stop_timeout)
                api.remove_container(container["Id"], force=True)
            except self._errors.NotFound:
                pass

    def _remove_image_if_unused(self, image_id: str, name: str) -> None:
        users = self._call("list containers", lambda api: api.containers(all=True, quiet=False))
        if any(entry.get("ImageID") == image_id for entry in users):
            return
        api = self._client()
        try:
            with self._translated(f"remove image {image_id}"):
                try:
                    api.remove_image(image_id, force=True)
                    log.info("container %s: removed image %s", name, image_id)
                except self._errors.NotFound:
                    pass
        except InstallError as error:  # pruning is housekeeping: never fail an update for it
            log.warning("container %s: %s", name, error)

    # ---- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _ours(container: Mapping[str, Any], update: Update) -> bool:
        return _labels(container).get(LABEL_DEPLOYMENT) == update.deployment_id

    def _candidate(self, name: str, update: Update) -> dict[str, Any] | None:
        for container_name in (name + NEXT_SUFFIX, name):
            found = self._inspect(container_name)
            if found is not None and self._ours(found, update):
                return found
        return None

    def _history_labels(self, old: Mapping[str, Any] | None, image: Mapping[str, Any]) -> dict[str, str]:
        """Labels for the new container: what it replaces, which images to keep and which to drop."""
        if old is None:
            return {LABEL_REPLACES: "", LABEL_KEEP: "", LABEL_DROP: ""}
        history = [old["Image"], *_split_ids(_labels(old).get(LABEL_KEEP))]
        history = [image_id for image_id in dict.fromkeys(history) if image_id != image["Id"]]
        keep, drop = history[: self.keep_previous], history[self.keep_previous :]
        return {LABEL_REPLACES: old["Id"], LABEL_KEEP: ",".join(keep), LABEL_DROP: ",".join(drop)}

    def _probe_url(self, spec: ContainerSpec, container: Mapping[str, Any]) -> str | None:
        if self.http_probe is None:
            return None
        host_ports = [port.host_port for port in spec.ports if port.host_port is not None]
        if "{host_port" in self.http_probe and not host_ports:
            raise InstallError(
                f"container {spec.name}: the HTTP probe {self.http_probe!r} needs a published host port "
                "and the payload publishes none"
            )
        networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
        addresses = [network.get("IPAddress") for network in networks.values() if network.get("IPAddress")]
        try:
            return self.http_probe.format(
                name=spec.name,
                host_port=host_ports[0] if host_ports else "",
                container_ip=addresses[0] if addresses else "",
            )
        except (KeyError, IndexError, ValueError) as error:
            raise InstallError(
                f"the HTTP probe template {self.http_probe!r} cannot be filled: {error}"
            ) from error

    def _log_tail(self, container_id: str) -> str:
        try:
            raw = self._call(
                "read the container's log",
                lambda api: api.logs(container_id, stdout=True, stderr=True, tail=_LOG_TAIL_LINES),
            )
        except InstallError as error:
            return f"(no log: {error})"
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return text.strip() or "(the container wrote nothing)"


def _check_socket(base_url: str) -> None:
    """Connect to the engine's unix socket ourselves: the docker package leaks the socket when this fails."""
    path = base_url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
    except OSError as error:
        raise InstallError(
            f"cannot reach the Docker engine at {base_url}: {error.strerror or error} (is dockerd running?)"
        ) from error


def _http_probe(url: str) -> tuple[bool, str]:
    """GET ``url`` without proxies; healthy on any status below 400."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as response:
            return response.status < 400, f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, str(getattr(error, "reason", error))
