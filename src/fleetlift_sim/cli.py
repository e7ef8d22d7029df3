"""The ``fleetlift-sim`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .fleet import run_fleet
from .settings import SimSettings
from .stats import summary_line

DESCRIPTION = """\
Run many virtual fleetlift devices in one process over the real device protocol, for load
tests and demos. Each device has its own Ed25519 key, authenticates (waiting while it is pending
admission), polls for updates, walks an offered update through downloading, installing,
[rebooting,] verifying and an outcome, uploads a log when it fails, and reports inventory.
Installers are simulated; failures, rollbacks and notifications happen at the rates you choose.

Progress lines go to stderr every --stats-interval seconds; the summary goes to stdout at the end.
"""

EPILOG = """\
examples:
  fleetlift-sim --server http://127.0.0.1:8080 --devices 50 --enrollment-token TOKEN --duration 60
  fleetlift-sim --devices 10000 --ramp 60 --enrollment-token TOKEN --state-file fleet.json
  fleetlift-sim --devices 200 --failure-rate 0.1 --rollback-rate 0.05 --download --json
  fleetlift-sim --tokens-file tokens.txt --devices 10000 --long-poll 30 \\
      --failing-devices 0.1 --failing-version 2.0.0 --seed 7 --json --per-device
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except the empty ones (None, False) that the help text already explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetlift-sim", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter
    )
    fleet = parser.add_argument_group("the fleet")
    fleet.add_argument(
        "--server", metavar="URL", default="http://127.0.0.1:8080", help="Base URL of the fleetlift server."
    )
    fleet.add_argument(
        "--devices", metavar="N", type=_positive_int, default=100, help="How many virtual devices to run."
    )
    fleet.add_argument(
        "--prefix",
        metavar="PREFIX",
        help="Serials are sim-PREFIX-00001, sim-PREFIX-00002, ...; default: the state file's prefix, "
        "else a random one (the same serials with new keys would be refused by the server).",
    )
    fleet.add_argument("--device-type", default="sim-gw", help="Device type the devices announce.")
    fleet.add_argument("--architecture", default="arm64", help="Architecture the devices announce.")
    fleet.add_argument("--tenant", help="Tenant to authenticate into (default: the server's default tenant).")
    fleet.add_argument(
        "--enrollment-token",
        metavar="TOKEN",
        help="Admit the devices at once with this enrollment token; without it they stay pending "
        "(and keep retrying with backoff) until an operator accepts them.",
    )
    fleet.add_argument(
        "--tokens-file",
        metavar="PATH",
        type=Path,
        help="Pre-admitted devices: one 'DEVICE_ID TOKEN' per line (device tokens the server issued, "
        "e.g. minted by a test or benchmark). These devices never authenticate and send no "
        "inventory at start (only after an update); --devices caps how many lines are used.",
    )
    fleet.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        help="JSON file that keeps identities, private keys and installed releases across runs "
        "(created if missing, mode 0600).",
    )

    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--ramp",
        metavar="SECONDS",
        type=_seconds,
        default=0.0,
        help="Start the devices evenly spread over this many seconds.",
    )
    timing.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        type=float,
        help="Poll every this many seconds instead of the server's X-Fleetlift-Poll-Interval.",
    )
    timing.add_argument(
        "--poll-jitter",
        metavar="FRACTION",
        type=_rate,
        default=0.1,
        help="Vary each poll interval by up to this fraction.",
    )
    timing.add_argument(
        "--long-poll",
        metavar="SECONDS",
        type=int,
        default=0,
        help="Long-poll: the server holds each poll up to this many seconds (max 60) and answers "
        "as soon as an update is released to the device; the next poll follows at once. Each "
        "device holds a connection open meanwhile (0: plain polls at the interval).",
    )
    timing.add_argument(
        "--duration",
        metavar="SECONDS",
        type=float,
        help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).",
    )
    timing.add_argument(
        "--max-backoff",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="Longest wait between retries when the server is down or a device is pending.",
    )

    updates = parser.add_argument_group("updates")
    updates.add_argument(
        "--download",
        action="store_true",
        help="Really download the files through their signed links (Range-resumed, SHA-256 checked, "
        "not stored) instead of simulating the download time.",
    )
    updates.add_argument(
        "--download-time",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="Simulated download time, seconds (x0.5-1.5).",
    )
    updates.add_argument(
        "--install-time",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="Simulated install time, seconds (x0.5-1.5).",
    )
    updates.add_argument(
        "--reboot-time",
        metavar="SECONDS",
        type=_seconds,
        default=10.0,
        help="Simulated reboot time for base releases, seconds (x0.5-1.5).",
    )
    updates.add_argument(
        "--failure-rate",
        metavar="P",
        type=_rate,
        default=0.0,
        help="Probability an update fails (while downloading, installing or verifying); the log is uploaded.",
    )
    updates.add_argument(
        "--rollback-rate",
        metavar="P",
        type=_rate,
        default=0.0,
        help="Probability an update is rolled back after verifying fails; the log is uploaded.",
    )
    updates.add_argument(
        "--failing-devices",
        metavar="SHARE",
        type=_rate,
        help="Exactly round(SHARE x devices) devices, chosen with --seed, fail their updates "
        "(instead of drawing failures per update at --failure-rate): a repeatable 10%% of a fleet.",
    )
    updates.add_argument(
        "--failing-version",
        metavar="VERSION",
        help="With --failing-devices: they fail only updates to this release version (and, say, "
        "roll back to another one fine).",
    )
    updates.add_argument(
        "--defer",
        metavar="SECONDS",
        type=_seconds,
        default=0.0,
        help="A soft update (the deployment is not forced) waits this long (x0.5-1.5) before it "
        "starts, as when the hosting application defers it; forced updates start at once.",
    )
    updates.add_argument(
        "--notify-rate",
        metavar="P",
        type=_rate,
        default=0.0,
        help="Probability, per poll, that a device sends a notification (mostly info and warning).",
    )

    run = parser.add_argument_group("load and output")
    run.add_argument(
        "--connections",
        metavar="N",
        type=_positive_int,
        default=10,
        help="Most concurrent HTTP requests (the rest wait their turn here). One server process gains "
        "little from more; raise it for a scaled-out server.",
    )
    run.add_argument(
        "--request-timeout", metavar="SECONDS", type=float, default=30.0, help="Per-request timeout, seconds."
    )
    run.add_argument(
        "--stats-interval",
        metavar="SECONDS",
        type=_seconds,
        default=10.0,
        help="Print a progress line to stderr every this many seconds (0: only the final summary).",
    )
    run.add_argument("--json", action="store_true", help="Print the final summary as JSON.")
    run.add_argument(
        "--per-device",
        action="store_true",
        help="The JSON summary lists every device (by device ID): updates started per deployment, "
        "outcomes, offers after a success, releases installed.",
    )
    run.add_argument("--seed", metavar="N", type=int, help="Seed the random choices for a repeatable run.")
    return parser


def settings_from(arguments: argparse.Namespace) -> SimSettings:
    return SimSettings(
        server=arguments.server,
        devices=arguments.devices,
        prefix=arguments.prefix,
        device_type=arguments.device_type,
        architecture=arguments.architecture,
        tenant=arguments.tenant,
        enrollment_token=arguments.enrollment_token,
        state_file=arguments.state_file,
        ramp_seconds=arguments.ramp,
        poll_interval_seconds=arguments.poll_interval,
        poll_jitter=arguments.poll_jitter,
        long_poll_seconds=arguments.long_poll,
        download_files=arguments.download,
        download_seconds=arguments.download_time,
        install_seconds=arguments.install_time,
        reboot_seconds=arguments.reboot_time,
        failure_rate=arguments.failure_rate,
        failing_devices=arguments.failing_devices,
        failing_version=arguments.failing_version,
        defer_seconds=arguments.defer,
        rollback_rate=arguments.rollback_rate,
        notify_rate=arguments.notify_rate,
        connections=arguments.connections,
        request_timeout_seconds=arguments.request_timeout,
        max_backoff_seconds=arguments.max_backoff,
        duration_seconds=arguments.duration,
        stats_interval_seconds=arguments.stats_interval,
        seed=arguments.seed,
        tokens_file=arguments.tokens_file,
        per_device=arguments.per_device,
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        settings = settings_from(arguments)
    except ValueError as problem:
        parser.error(str(problem))
    try:
        summary = asyncio.run(run_fleet(settings, progress=_progress))
    except (OSError, ValueError) as problem:  # an unreadable state file, say
        print(f"fleetlift-sim: {problem}", file=sys.stderr)
        return 1
    if arguments.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
