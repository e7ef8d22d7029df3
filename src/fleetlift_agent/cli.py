"""`fleetlift-agent run --server URL --data-dir DIR`: the device agent as a long-running process.

Kept on argparse and the standard library so that a gateway pays only for what it uses: the
Docker client is imported when a container payload arrives, TUF when a file is verified."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from fleetlift_agent import __version__
from fleetlift_agent.client import AuthSettings, DeviceClient
from fleetlift_agent.control import Controller
from fleetlift_agent.download import Downloader
from fleetlift_agent.fsutil import write_json_durably
from fleetlift_agent.identity import DeviceKey, default_architecture, default_identity
from fleetlift_agent.installers import Installer, Payload, Update
from fleetlift_agent.journal import Journal
from fleetlift_agent.runner import REBOOT_EXIT_CODE, RebootRequested, Runner, RunnerSettings, Wakeup
from fleetlift_agent.trust import TargetVerifier

log = logging.getLogger("fleetlift_agent")


class LazyInstaller:
    """Builds the real installer on first use: an agent that never gets a container never
    imports the Docker client nor needs a running engine."""

    kind: ClassVar[str] = ""
    needs_reboot: ClassVar[bool] = False

    def __init__(self, build: Callable[[], Installer]) -> None:
        self._build = build
        self._installer: Installer | None = None

    def _real(self) -> Installer:
        if self._installer is None:
            self._installer = self._build()
        return self._installer

    def prepare(self, update: Update, payload: Payload) -> None:
        self._real().prepare(update, payload)

    def switch(self, update: Update, payload: Payload) -> None:
        self._real().switch(update, payload)

    def check(self, update: Update, payload: Payload) -> None:
        self._real().check(update, payload)

    def commit(self, update: Update, payload: Payload) -> None:
        self._real().commit(update, payload)

    def rollback(self, update: Update, payload: Payload) -> None:
        self._real().rollback(update, payload)

    def installed(self) -> dict[str, str]:
        return {} if self._installer is None else self._installer.installed()


class LazyContainerInstaller(LazyInstaller):
    kind = "container"


class LazyPackageInstaller(LazyInstaller):
    kind = "package"


class LazyScriptInstaller(LazyInstaller):
    kind = "script"


def _key_values(pairs: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--identity takes key=value, not {pair!r}")
        found[key] = value
    return found


def _identity(data_dir: Path, given: dict[str, str]) -> dict[str, str]:
    """The identity is settled on first start and kept, so a renamed host stays the same device."""
    path = data_dir / "identity.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        if not given or given.items() <= stored.items():
            return stored
    identity = given or default_identity()
    write_json_durably(path, identity)
    return identity


def _container_installer(args: argparse.Namespace) -> Installer:
    from fleetlift_agent.installers.container import ContainerInstaller

    options: dict[str, Any] = {"base_url": args.docker_url} if args.docker_url else {}
    return ContainerInstaller(
        **options,
        soak_seconds=args.soak,
        health_timeout=args.health_timeout,
        http_probe=args.http_probe,
        network_mode=args.container_network,
    )


def _package_installer(args: argparse.Namespace) -> Installer:
    from fleetlift_agent.installers.package import PackageConfig, PackageInstaller

    return PackageInstaller(
        PackageConfig(root=args.package_root or args.data_dir / "packages", keep=args.keep)
    )


def _script_installer(args: argparse.Namespace) -> Installer:
    from fleetlift_agent.installers.script import ScriptConfig, ScriptInstaller

    return ScriptInstaller(ScriptConfig(work_dir=args.data_dir / "scripts"))


def _ab_installer(args: argparse.Namespace) -> Installer:
    """A/B slots: simulated with files (each start of the agent plays a power-on of the
    bootloader), or driven by the commands of a real bootloader from a JSON file."""
    from fleetlift_agent.installers.ab_slot import (
        ABSlotConfig,
        ABSlotInstaller,
        BootCommands,
        Bootloader,
        CommandBootloader,
        SimulatedBootloader,
        slot_files,
    )

    data_dir: Path = args.data_dir
    bootloader: Bootloader
    if args.bootloader == "command":
        if args.bootloader_commands is None:
            raise SystemExit("--bootloader command needs --bootloader-commands FILE")
        document = json.loads(args.bootloader_commands.read_text())
        slots = {name: Path(path) for name, path in document.pop("slots").items()}
        bootloader = CommandBootloader(BootCommands(**document), slots)
    else:
        slots = slot_files(args.slots_dir or data_dir / "slots")
        simulated = SimulatedBootloader(data_dir / "boot-selector.json", boot_limit=args.boot_limit)
        log.info("simulated bootloader booted slot %s", simulated.boot())
        bootloader = simulated
    return ABSlotInstaller(
        ABSlotConfig(
            slots=slots,
            state_dir=data_dir / "ab-slot",
            bootloader=bootloader,
            health_command=shlex.split(args.ab_health_command) if args.ab_health_command else None,
        )
    )


def build(args: argparse.Namespace) -> tuple[Runner, Controller | None]:
    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    key = DeviceKey.load_or_create(data_dir / "device-key.pem", args.key_type)
    identity = _identity(data_dir, _key_values(args.identity))
    client = DeviceClient(
        args.server,
        key,
        AuthSettings(
            identity=identity,
            device_type=args.device_type,
            architecture=args.architecture,
            tenant=args.tenant,
            enrollment_token=args.enrollment_token,
        ),
        timeout=args.timeout,
    )
    installers: dict[str, Installer] = {
        "container": LazyContainerInstaller(lambda: _container_installer(args)),
        "package": LazyPackageInstaller(lambda: _package_installer(args)),
        "script": LazyScriptInstaller(lambda: _script_installer(args)),
        "ab-slot": _ab_installer(args),
    }
    from fleetlift_agent.installers.script import Hooks

    controller = Controller(data_dir / "app-state.json") if args.app_control else None
    wakeup: Wakeup | None = None
    if args.mqtt_url and args.iothub_connection_string:
        raise SystemExit("--mqtt-url and an IoT Hub connection string: choose one channel")
    if args.mqtt_url:
        from fleetlift_agent.mqtt import CheckSubscriber

        try:
            wakeup = CheckSubscriber(args.mqtt_url, topic_prefix=args.mqtt_topic_prefix)
        except ValueError as error:
            raise SystemExit(f"--mqtt-url: {error}") from None
    elif args.iothub_connection_string:
        from fleetlift_agent.iothub import IotHubChannel

        try:
            hub = IotHubChannel(
                args.iothub_connection_string, ca_file=args.iothub_ca_file, websockets=args.iothub_websockets
            )
        except ValueError as error:
            raise SystemExit(f"IoT Hub connection string: {error}") from None
        except (RuntimeError, OSError) as error:
            raise SystemExit(f"IoT Hub: {error}") from None
        client.observers.append(hub.observe)
        wakeup = hub
    runner = Runner(
        client=client,
        journal=Journal(data_dir / "journal.json"),
        fetcher=Downloader(
            data_dir / "downloads",
            rate_limit=args.rate_limit,
            max_bytes=args.max_download_bytes,
            min_free_bytes=args.min_free_bytes,
        ),
        verifier=TargetVerifier(args.server, args.tenant or "default", data_dir, root_path=args.tuf_root),
        installers=installers,
        hooks=Hooks(args.hooks_dir or data_dir / "hooks"),
        controller=controller,
        wakeup=wakeup,
        settings=RunnerSettings(
            poll_interval=args.poll_interval,
            long_poll=args.long_poll,
            app_control=args.app_control,
            inventory_interval=args.inventory_interval,
            inventory_dir=args.inventory_dir,
        ),
        data_dir=data_dir,
    )
    return runner, controller


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fleetlift-agent", description="The fleetlift device agent.")
    root.add_argument("--version", action="version", version=f"fleetlift-agent {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Run the agent (until SIGTERM).")
    run.add_argument("--server", required=True, help="The fleetlift server, e.g. https://updates.example.com")
    run.add_argument(
        "--data-dir", required=True, type=Path, help="Where the agent keeps its key and journal."
    )
    run.add_argument("--tenant", default=None, help="The tenant to join (default: the server's).")
    run.add_argument("--device-type", default="generic", help="This device's type, as releases name it.")
    run.add_argument("--architecture", default=default_architecture(), help="Default: this machine's.")
    run.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="An identity attribute (repeatable); default: machine ID digest, MAC and hostname.",
    )
    run.add_argument("--key-type", choices=["ed25519", "ecdsa-p256", "rsa"], default="ed25519")
    run.add_argument("--enrollment-token", default=None, help="Join without a manual accept.")
    run.add_argument("--tuf-root", type=Path, default=None, help="The TUF root the device ships with.")
    run.add_argument("--poll-interval", type=int, default=None, help="Seconds; default: as the server says.")
    run.add_argument("--long-poll", type=int, default=0, help="Seconds the server may hold a poll (0-60).")
    run.add_argument("--timeout", type=float, default=30.0, help="Seconds for each request.")
    run.add_argument("--inventory-interval", type=float, default=3600.0)
    run.add_argument("--inventory-dir", type=Path, default=None, help="Scripts printing key=value lines.")
    run.add_argument("--app-control", action="store_true", help="The hosting application confirms updates.")
    run.add_argument(
        "--mqtt-url",
        default=os.environ.get("FLEETLIFT_AGENT_MQTT_URL") or None,
        help="mqtt[s]://user:password@broker: poll at once when the server says so (docs/mqtt.md);"
        " default: $FLEETLIFT_AGENT_MQTT_URL, which keeps the password out of the process list.",
    )
    run.add_argument("--mqtt-topic-prefix", default="fleetlift", help="As the server's topic prefix.")
    run.add_argument(
        "--iothub-connection-string",
        default=os.environ.get("FLEETLIFT_AGENT_IOTHUB_CONNECTION_STRING") or None,
        help="HostName=...;DeviceId=...;SharedAccessKey=...[;GatewayHostName=...]: use Azure IoT Hub "
        "as the channel (needs the iothub extra; "
        "docs/iothub.md); default: $FLEETLIFT_AGENT_IOTHUB_CONNECTION_STRING (keeps the key out of "
        "the process list).",
    )
    run.add_argument(
        "--iothub-ca-file",
        type=Path,
        default=None,
        help="PEM CA certificates to trust for the hub, e.g. an IoT Edge gateway's (GatewayHostName=).",
    )
    run.add_argument(
        "--iothub-websockets", action="store_true", help="MQTT over WebSockets on 443 instead of 8883."
    )
    run.add_argument("--local-api-port", type=int, default=8765, help="Loopback port of the local API.")
    run.add_argument("--callback-url", default=None, help="Where state changes are POSTed.")
    run.add_argument("--rate-limit", type=int, default=None, help="Download bytes per second.")
    run.add_argument("--max-download-bytes", type=int, default=None, help="What downloads may hold on disk.")
    run.add_argument("--min-free-bytes", type=int, default=64 * 1024 * 1024, help="Free disk to leave.")
    run.add_argument("--hooks-dir", type=Path, default=None, help="pre-install.d/ and post-install.d/.")
    run.add_argument("--package-root", type=Path, default=None, help="Where code packages are installed.")
    run.add_argument("--keep", type=int, default=2, help="Previous package versions kept for rollback.")
    run.add_argument("--docker-url", default=None, help="Docker Engine API, e.g. unix:///run/docker.sock")
    run.add_argument(
        "--http-probe", default=None, help="For images without HEALTHCHECK: a URL that must answer 2xx."
    )
    run.add_argument("--container-network", default=None, help="Network mode of new containers.")
    run.add_argument("--soak", type=float, default=30.0, help="Seconds a new container must stay healthy.")
    run.add_argument("--health-timeout", type=float, default=120.0, help="Seconds to become healthy.")
    run.add_argument("--slots-dir", type=Path, default=None, help="A/B slots (simulated: files).")
    run.add_argument(
        "--boot-limit", type=int, default=3, help="Boots of an unconfirmed slot before falling back."
    )
    run.add_argument("--ab-health-command", default=None, help="Run after booting the new slot; 0 = healthy.")
    run.add_argument("--bootloader", choices=["simulated", "command"], default="simulated")
    run.add_argument(
        "--bootloader-commands", type=Path, default=None, help="JSON file of bootloader commands."
    )
    run.add_argument("--log-level", default="INFO")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        # Azure's device SDK warns of every dropped connection with a traceback; the channel logs
        # each outage once in its own words.
        logging.getLogger("azure.iot.device").setLevel(logging.ERROR)
    runner, controller = build(args)
    local_api: Any = None
    if controller is not None:
        from fleetlift_agent.local_api import LocalApi

        local_api = LocalApi(controller, port=args.local_api_port, callback_url=args.callback_url)
        local_api.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        runner.run()
    except RebootRequested as reboot:
        log.warning("%s: exiting for the reboot", reboot)
        return REBOOT_EXIT_CODE
    finally:
        if local_api is not None:
            local_api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
