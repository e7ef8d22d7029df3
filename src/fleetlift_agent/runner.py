"""The agent's update loop: authenticate, poll, download and verify, ask the hosting application,
install through the installers, report — with every step journaled so a power cut at any moment
ends in a resumed update or a clean rollback, and the server hears what happened."""

from __future__ import annotations

import logging
import platform
import random
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleetlift_agent import __version__
from fleetlift_agent.client import DeviceClient, NotAdmitted, PollAnswer, ProtocolError, ServerUnavailable
from fleetlift_agent.control import Controller
from fleetlift_agent.identity import free_disk_bytes
from fleetlift_agent.installers import Installer, InstallError, Payload, Update
from fleetlift_agent.journal import Journal
from fleetlift_agent.state import Event, IllegalTransition, Pending, Phase

log = logging.getLogger("fleetlift_agent")

# The agent exits with this code after asking for a reboot; a supervisor (systemd, the tests)
# starts it again, as the machine would after a real reboot.
REBOOT_EXIT_CODE = 75

FINAL_SERVER_STATES = frozenset({"succeeded", "failed", "rolled_back", "already_installed", "skipped"})


class RebootRequested(Exception):
    """An installer needs the device to boot again before the update can go on."""


class Fetcher(Protocol):
    def fetch(
        self,
        url: str,
        *,
        size: int,
        sha256: str,
        name: str,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Path: ...

    def prune(self, keep: set[str]) -> object: ...

    def path_for(self, name: str) -> Path: ...


class Verifier(Protocol):
    def verify(self, tuf_target: str, path: Path) -> None: ...


class InstallHooks(Protocol):
    def pre_install(self, update: Update) -> None: ...

    def post_install(self, update: Update) -> None: ...


class Rebooter(Protocol):
    def reboot(self) -> None: ...


class Wakeup(Protocol):
    """Tells the agent to poll now (``mqtt.CheckSubscriber``): watched once the device ID is known."""

    def watch(self, tenant_id: str, device_id: str, wake: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


class UpdateFailed(Exception):
    """The update cannot go on; ``status`` is what the server is told (failed or rolled_back)."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class TryAgainLater(Exception):
    """The update is intact but cannot go on now (server unreachable, link expired)."""


@dataclass
class RunnerSettings:
    poll_interval: int | None = None  # None: as the server suggests
    long_poll: int = 0  # seconds the server may hold a poll (0: plain polling)
    app_control: bool = False  # True: the hosting application confirms through the local API
    inventory_interval: float = 3600.0
    inventory_dir: Path | None = None  # executables printing key=value lines (added to the inventory)
    backoff_cap: float = 300.0
    jitter: float = 0.2


@dataclass
class Runner:
    client: DeviceClient
    journal: Journal
    fetcher: Fetcher
    verifier: Verifier
    installers: Mapping[str, Installer]
    hooks: InstallHooks | None = None
    controller: Controller | None = None
    settings: RunnerSettings = field(default_factory=RunnerSettings)
    data_dir: Path = Path(".")
    stop: threading.Event = field(default_factory=threading.Event)
    wakeup: Wakeup | None = None

    _server_interval: int = 60
    _failures: int = 0
    _etag: str | None = None
    _inventory_sent_at: float = 0.0
    _state_changed: threading.Event = field(default_factory=threading.Event)
    _woken: threading.Event = field(default_factory=threading.Event)
    _watching: bool = False

    def __post_init__(self) -> None:
        if self.controller is not None:
            self.controller.subscribe(lambda before, after, event: self._state_changed.set())

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Run until ``stop`` is set. Raises ``RebootRequested`` when the device must boot again."""
        self.recover()
        try:
            while not self.stop.is_set():
                delay = self.cycle()
                self._watch_for_wakeups()
                self.pause(delay)
        finally:
            if self.wakeup is not None:
                self.wakeup.close()

    def wake(self) -> None:
        """Poll now instead of at the end of the current wait (any thread may call it)."""
        self._woken.set()

    def request_stop(self) -> None:
        """Stop after the current step (any thread, signal handlers included)."""
        self.stop.set()
        self._woken.set()

    def pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, less when stopped or woken (a wake-up during the cycle counts)."""
        if self.wakeup is None:
            self.stop.wait(delay)
            return
        deadline = time.monotonic() + delay
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Slices of a second at most: a stop set without request_stop() is noticed too.
            if self._woken.wait(min(remaining, 1.0)):
                self._woken.clear()
                if not self.stop.is_set():
                    log.debug("woken up: polling now")
                return

    def _watch_for_wakeups(self) -> None:
        """Once authenticated, the device ID and tenant name the topic to subscribe to."""
        if self.wakeup is None or self._watching or self.client.device_id is None:
            return
        self._watching = True
        tenant = self.client.tenant_id or self.client.auth.tenant or "default"
        try:
            self.wakeup.watch(tenant, self.client.device_id, self.wake)
        except Exception as error:  # optional: without it the agent polls as before
            log.warning("cannot listen for check messages: %s", error)

    def cycle(self) -> float:
        """One round: catch up with the server, poll, work on what it offers. The seconds to wait."""
        try:
            self.flush_outbox()
            self.maybe_send_inventory()
            # With an update in hand, ask for the full answer: its links may have expired.
            etag = None if self.journal.current is not None else self._etag
            answer = self.client.poll(etag, wait=0 if etag is None else self.settings.long_poll)
            log.debug(
                "poll: %s",
                "unchanged"
                if answer.unchanged
                else "nothing"
                if answer.instructions is None
                else "an update",
            )
            self._failures = 0
            self._remember_interval(answer)
            if answer.instructions is not None:
                self._etag = answer.etag
                self.handle(answer.instructions)
                return 0.0
            if not answer.unchanged:
                self._etag = None  # nothing offered: forget the last offer's ETag
        except NotAdmitted as error:
            log.info("not admitted yet (%s); asking again in %ss", error, self.interval())
            return self.interval()
        except (ServerUnavailable, TryAgainLater) as error:
            self._failures += 1
            delay = self.backoff()
            log.warning("%s; trying again in %.0fs", error, delay)
            return delay
        except ProtocolError as error:
            log.error("the server refused a request: %s", error)
            return self.interval()
        return 0.0 if self.settings.long_poll else self.interval()

    def interval(self) -> float:
        base = self.settings.poll_interval or self._server_interval
        return max(base * random.uniform(1 - self.settings.jitter, 1 + self.settings.jitter), 0.1)

    def backoff(self) -> float:
        """Exponential with full jitter, so a fleet coming back does not arrive in step."""
        ceiling = min(self.settings.backoff_cap, 2.0 ** min(self._failures, 16))
        return random.uniform(ceiling / 2, ceiling)

    def _remember_interval(self, answer: PollAnswer) -> None:
        if answer.poll_interval:
            self._server_interval = answer.poll_interval

    def _note(self, line: str) -> None:
        """A line for the update's log (uploaded when it fails) and the agent's own log."""
        log.info("%s", line)
        self.journal.log(line)

    # --- reports and inventory ------------------------------------------------------------

    def flush_outbox(self) -> None:
        """Send the outcomes decided while the server could not be reached, oldest first."""
        for entry in self.journal.outbox():
            if entry.get("log"):
                self.client.upload_log(entry["deployment_id"], entry["log"])
            self.client.report(entry["deployment_id"], entry["status"], entry.get("detail"))
            self.journal.sent(1)

    def progress(self, deployment_id: str, status: str, detail: str | None = None) -> None:
        """A progress report: useful, not essential, so an unreachable server does not stop the work."""
        self._note(f"{status}{': ' + detail if detail else ''}")
        try:
            self.client.report(deployment_id, status, detail)
        except (ServerUnavailable, ProtocolError, NotAdmitted) as error:
            log.info("progress report %s not delivered: %s", status, error)

    def inventory(self) -> dict[str, Any]:
        installed: dict[str, str] = dict(self.journal.installed)
        for kind, installer in self.installers.items():
            try:
                installed.update(
                    {f"{kind}:{name}": version for name, version in installer.installed().items()}
                )
            except Exception as error:  # an engine that is down must not stop the inventory
                log.warning("cannot list what the %s installer has installed: %s", kind, error)
        document: dict[str, Any] = {
            "os": platform.system(),
            "os_release": _os_release(),
            "kernel": platform.release(),
            "architecture": self.client.auth.architecture,
            "device_type": self.client.auth.device_type,
            "agent_version": __version__,
            "installed": installed,
            "disk_free_bytes": free_disk_bytes(self.data_dir),
            "app_control": self.settings.app_control,
        }
        if self.controller is not None:
            document["app_state"] = self.controller.state.phase.value
        if self.settings.inventory_dir is not None:
            document.update(_run_inventory_scripts(self.settings.inventory_dir))
        return document

    def maybe_send_inventory(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._inventory_sent_at < self.settings.inventory_interval:
            return
        self.client.send_inventory(self.inventory())
        self._inventory_sent_at = time.monotonic()

    # --- an offer -------------------------------------------------------------------------

    def handle(self, instructions: dict[str, Any]) -> None:
        deployment_id = str(instructions["deployment_id"])
        decided = self.journal.outcome_of(deployment_id)
        if decided is not None:
            if instructions.get("state") not in FINAL_SERVER_STATES:
                # The server did not hear the outcome (lost report, restored backup): say it again.
                self.journal.queue_report(deployment_id, decided["outcome"], decided.get("detail"))
                self.flush_outbox()
            return
        current = self.journal.current
        if current is not None and current["deployment_id"] != deployment_id:
            log.info("finishing %s before looking at %s", current["deployment_id"], deployment_id)
            self.work_on_current()
            return
        if current is None:
            if self._already_installed(instructions):
                self.journal.begin(instructions)
                self.journal.finish("already_installed", "this release is installed already")
                self.flush_outbox()
                return
            self.journal.begin(instructions)
            self._note(f"offered {_describe(instructions)}")
        else:
            self.journal.refresh_instructions(instructions)  # fresh links for a resumed download
        self.work_on_current()
        self.flush_outbox()
        self.maybe_send_inventory(force=True)

    def _already_installed(self, instructions: dict[str, Any]) -> bool:
        installed = self.journal.installed
        keys = _installed_entries(instructions)
        return bool(keys) and all(installed.get(key) == value for key, value in keys.items())

    # --- working through the journal ------------------------------------------------------

    def recover(self) -> None:
        """After a start: whatever the journal says was under way is resumed or rolled back."""
        current = self.journal.current
        if current is None:
            return
        phase = current["phase"]
        log.warning("resuming deployment %s, interrupted while %s", current["deployment_id"], phase)
        self._note(f"agent restarted while {phase}")
        if phase == "installing" and current["switched"]:
            # Killed between switch and check: the new version was never proven healthy.
            self.journal.set_phase("rolling_back")
            self._note("the install was interrupted after the switch; rolling back")
        elif phase == "verifying" and not self._needs_reboot(current):
            self.journal.set_phase("rolling_back")
            self._note("the health check was interrupted; rolling back")
        try:
            self.work_on_current()
        except (ServerUnavailable, TryAgainLater) as error:
            log.warning("cannot finish the interrupted update yet: %s", error)

    def work_on_current(self) -> None:
        current = self.journal.current
        if current is None:
            return
        instructions = current["instructions"]
        deployment_id = current["deployment_id"]
        update = _update_of(instructions)
        try:
            if current["phase"] == "downloading":
                self._offer_to_app(update)
                self._download_all(deployment_id, instructions)
                self.journal.set_phase("downloaded")
                self.progress(deployment_id, "downloaded")
                self._app(Event.DOWNLOADED)
            if self.journal.current is not None and self.journal.current["phase"] == "downloaded":
                if instructions.get("forced") is True:
                    self._force(update)
                else:
                    self._wait_for_confirmation(update)
                self.journal.set_phase("installing")
            current = self.journal.current
            assert current is not None
            payloads = self._payloads(instructions)
            if current["phase"] == "installing":
                self._install(update, payloads, current["steps"])
            current = self.journal.current
            if current is not None and current["phase"] == "rebooting":
                self.journal.set_phase("verifying")
            current = self.journal.current
            if current is not None and current["phase"] == "verifying":
                self._verify(update, payloads)
            current = self.journal.current
            if current is not None and current["phase"] == "committing":
                self._commit(update, payloads)
            current = self.journal.current
            if current is not None and current["phase"] == "rolling_back":
                self._roll_back(update, payloads, current, "rolled back after an interruption")
        except UpdateFailed as failure:
            current = self.journal.current
            if current is not None and current["switched"]:
                self.journal.set_phase("rolling_back")
                self._roll_back(update, self._payloads(instructions), current, failure.detail)
            else:
                self._finish_failed(update, "failed", failure.detail)

    # --- download -------------------------------------------------------------------------

    def _download_all(self, deployment_id: str, instructions: dict[str, Any]) -> list[Path]:
        files = list(instructions.get("files", []))
        if not files:
            return []
        self.progress(deployment_id, "downloading")
        paths: list[Path] = []
        total = sum(int(f["size"]) for f in files) or 1
        done_before = 0
        last_reported = [0.0]

        def report(done: int, size: int) -> None:
            overall = (done_before + done) * 100 // total
            if time.monotonic() - last_reported[0] >= 5:
                last_reported[0] = time.monotonic()
                self.progress(deployment_id, "downloading", f"{overall}%")

        for entry in files:
            from fleetlift_agent.download import CorruptDownload, DownloadError, LinkExpired, NoSpace
            from fleetlift_agent.trust import TrustUnavailable, UntrustedTarget

            try:
                path = self.fetcher.fetch(
                    self.client.absolute(entry["url"]),
                    size=int(entry["size"]),
                    sha256=str(entry["sha256"]),
                    name=_download_name(entry),
                    progress=report,
                    should_stop=self.stop.is_set,
                )
            except LinkExpired as error:
                raise TryAgainLater(f"download link expired ({error}); asking for a fresh one") from None
            except CorruptDownload as error:
                raise UpdateFailed("failed", f"{entry['filename']}: {error}") from None
            except NoSpace as error:
                raise UpdateFailed("failed", f"no room for {entry['filename']}: {error}") from None
            except DownloadError as error:
                raise TryAgainLater(f"download of {entry['filename']} interrupted: {error}") from None
            try:
                self.verifier.verify(str(entry["tuf_target"]), path)
            except TrustUnavailable as error:
                raise TryAgainLater(f"TUF metadata unreachable: {error}") from None
            except UntrustedTarget as error:
                path.unlink(missing_ok=True)
                raise UpdateFailed(
                    "failed", f"{entry['filename']} failed TUF verification: {error}"
                ) from None
            self._note(f"downloaded and verified {entry['filename']} ({entry['size']} bytes)")
            paths.append(path)
            done_before += int(entry["size"])
        return paths

    # --- the hosting application ----------------------------------------------------------

    def _app(self, event: Event) -> None:
        if self.controller is None:
            return
        try:
            self.controller.apply(event)
        except IllegalTransition as error:
            log.info("application state unchanged: %s", error)

    def _offer_to_app(self, update: Update) -> None:
        if self.controller is None:
            return
        state = self.controller.state
        if update.release_kind == "base":
            if state.pending in (Pending.NONE,):
                self._app(Event.BASE_OFFERED)
            return
        if state.pending in (Pending.BASE_PARTIAL, Pending.BASE_READY):
            raise UpdateFailed(
                "failed", "a patch cannot be applied: the device waits for a base image after a failed patch"
            )
        if state.pending is Pending.NONE:
            self._app(Event.PATCH_OFFERED)

    def _wait_for_confirmation(self, update: Update) -> None:
        """Announce the downloaded update and wait until the application confirms it."""
        if self.controller is None:
            return
        applying = Phase.APPLYING_BASE if update.release_kind == "base" else Phase.APPLYING_PATCH
        announced = False
        while not self.stop.is_set():
            self._state_changed.clear()
            phase = self.controller.state.phase
            if phase is applying:
                return
            if phase in (Phase.READY_WITHPATCH, Phase.READY_WITHBASE):
                self._app(Event.ANNOUNCE)
                if not announced:
                    self._note("waiting for the application to confirm")
                    announced = True
                continue
            self._state_changed.wait(1.0)
        raise TryAgainLater("stopping while waiting for the application")

    def _force(self, update: Update) -> None:
        """A forced deployment: applied as soon as it is downloaded, without asking the application
        (which hears the move to APPLYING_* through the local API's callback)."""
        if self.controller is None:
            return
        phase = self.controller.state.phase
        if phase not in (Phase.APPLYING_PATCH, Phase.APPLYING_BASE):
            self._note("forced update: applying without the application's confirmation")
            if phase is Phase.BUSY:
                self.journal.mark("app_was_busy")  # and busy it is again afterwards
            self._app(Event.FORCED)

    # --- install, verify, commit, roll back -----------------------------------------------

    def _installer(self, payload: Payload) -> Installer:
        installer = self.installers.get(payload.installer)
        if installer is None:
            raise UpdateFailed("failed", f"this device has no {payload.installer} installer")
        return installer

    def _payloads(self, instructions: dict[str, Any]) -> list[Payload]:
        payloads = [
            Payload("container", str(spec["name"]), dict(spec))
            for spec in sorted(instructions.get("containers", []), key=lambda c: c.get("startup_order", 0))
        ]
        for entry in instructions.get("files", []):
            payloads.append(
                Payload(
                    str(entry.get("installer") or "package"),
                    str(entry.get("target") or instructions["release"]["name"]),
                    dict(entry),
                    self.fetcher.path_for(_download_name(entry)),
                )
            )
        return payloads

    def _install(self, update: Update, payloads: list[Payload], steps: dict[str, str]) -> None:
        deployment_id = update.deployment_id
        self.progress(deployment_id, "installing")
        if self.hooks is not None and not steps:
            try:
                self.hooks.pre_install(update)
            except InstallError as error:
                raise UpdateFailed("failed", f"pre-install hook refused the update: {error}") from None
        for index, payload in enumerate(payloads):
            self._installer(payload)  # an unknown installer fails before anything changes
            key = str(index)
            self.journal.set_step(key, "prepare")
            try:
                self._installer(payload).prepare(update, payload)
            except InstallError as error:
                self._note(f"prepare of {payload.name} failed: {error}")
                self._clean_prepared(update, payloads[: index + 1])
                raise UpdateFailed("failed", f"{payload.name}: {error}") from None
        for index, payload in enumerate(payloads):
            self.journal.set_step(str(index), "switch")
            try:
                self._installer(payload).switch(update, payload)
            except InstallError as error:
                raise UpdateFailed("rolled_back", f"switching {payload.name} failed: {error}") from None
        if any(self._installer(p).needs_reboot for p in payloads):
            self.journal.set_phase("rebooting")
            self.progress(deployment_id, "rebooting")
            self._reboot(payloads)
        self.journal.set_phase("verifying")

    def _verify(self, update: Update, payloads: list[Payload]) -> None:
        self.progress(update.deployment_id, "verifying")
        for index, payload in enumerate(payloads):
            self.journal.set_step(str(index), "check")
            try:
                self._installer(payload).check(update, payload)
            except InstallError as error:
                raise UpdateFailed("rolled_back", f"{payload.name} is not healthy: {error}") from None
        if self.hooks is not None:
            try:
                self.hooks.post_install(update)
            except InstallError as error:
                raise UpdateFailed("rolled_back", f"post-install hook failed: {error}") from None
        self.journal.set_phase("committing")

    def _commit(self, update: Update, payloads: list[Payload]) -> None:
        for index, payload in enumerate(payloads):
            self.journal.set_step(str(index), "commit")
            try:
                self._installer(payload).commit(update, payload)
            except InstallError as error:
                # The new version runs and is healthy; a failed clean-up does not undo it.
                self._note(f"commit of {payload.name} incomplete: {error}")
            self.journal.set_step(str(index), "done")
        current = self.journal.current
        assert current is not None
        self.journal.finish("succeeded", None, installed=_installed_entries(current["instructions"]))
        self._app(Event.REBOOTED if update.release_kind == "base" else Event.INTEGRITY_OK)
        if current.get("app_was_busy"):
            self._app(Event.BUSY)
        self._cleanup_downloads()

    def _roll_back(
        self, update: Update, payloads: list[Payload], current: dict[str, Any], reason: str
    ) -> None:
        switched = {int(key) for key in current["switched"]}
        problems: list[str] = []
        needs_reboot = False
        for index in sorted(range(len(payloads)), reverse=True):
            payload = payloads[index]
            installer = self.installers.get(payload.installer)
            if installer is None:
                continue
            try:
                installer.rollback(update, payload)
            except InstallError as error:
                problems.append(f"{payload.name}: {error}")
            if index in switched and getattr(installer, "rollback_needs_reboot", lambda: False)():
                needs_reboot = True
        if needs_reboot and not current.get("rollback_rebooted"):
            self._note("rolling back needs a reboot into the previous slot")
            self.journal.mark("rollback_rebooted")
            self._reboot(payloads)
        detail = reason + (f"; rollback problems: {'; '.join(problems)}" if problems else "")
        self._note(f"rolled back: {detail}")
        self._finish_failed(update, "rolled_back" if switched else "failed", detail)

    def _clean_prepared(self, update: Update, payloads: list[Payload]) -> None:
        for payload in payloads:
            installer = self.installers.get(payload.installer)
            if installer is not None:
                try:
                    installer.rollback(update, payload)
                except InstallError as error:
                    self._note(f"cleaning up {payload.name}: {error}")

    def _finish_failed(self, update: Update, status: str, detail: str) -> None:
        log.error("deployment %s %s: %s", update.deployment_id, status, detail)
        self._note(f"{status}: {detail}")
        current = self.journal.current
        if current is not None:
            self.journal.finish(status, detail)
        if update.release_kind == "base":
            self._app(Event.REBOOTED)  # the old base runs again
        else:
            self._app(Event.INTEGRITY_FAILED)
        if current is not None and current.get("app_was_busy"):
            self._app(Event.BUSY)
        self._cleanup_downloads()

    def _reboot(self, payloads: list[Payload]) -> None:
        for payload in payloads:
            installer = self.installers.get(payload.installer)
            if installer is not None and installer.needs_reboot:
                reboot = getattr(installer, "reboot", None)
                if callable(reboot):
                    reboot()
                break
        raise RebootRequested("the device must boot again to go on with the update")

    def _needs_reboot(self, current: dict[str, Any]) -> bool:
        return any(
            getattr(self.installers.get(p.installer), "needs_reboot", False)
            for p in self._payloads(current["instructions"])
        )

    def _cleanup_downloads(self) -> None:
        try:
            self.fetcher.prune(set())
        except OSError as error:
            log.warning("cannot clean the download directory: %s", error)


def _update_of(instructions: dict[str, Any]) -> Update:
    release = instructions["release"]
    return Update(
        deployment_id=str(instructions["deployment_id"]),
        release_name=str(release["name"]),
        release_version=str(release["version"]),
        release_kind=str(release.get("kind", "patch")),
    )


def _download_name(entry: Mapping[str, Any]) -> str:
    return f"{entry['artifact_id']}-{str(entry['sha256'])[:16]}"


def _installed_entries(instructions: dict[str, Any]) -> dict[str, str]:
    """What a successful install leaves on the device, as the journal remembers it."""
    version = str(instructions["release"]["version"])
    entries = {f"container:{c['name']}": str(c["image"]) for c in instructions.get("containers", [])}
    for entry in instructions.get("files", []):
        installer = entry.get("installer") or "package"
        target = entry.get("target") or instructions["release"]["name"]
        entries[f"{installer}:{target}"] = version
    entries[f"release:{instructions['release']['name']}"] = version
    return entries


def _describe(instructions: dict[str, Any]) -> str:
    release = instructions["release"]
    return f"{release['name']} {release['version']} ({release.get('kind', 'patch')})"


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _run_inventory_scripts(directory: Path) -> dict[str, str]:
    """Executables in ``directory`` print ``key=value`` lines; a failing script is skipped."""
    found: dict[str, str] = {}
    if not directory.is_dir():
        return found
    for script in sorted(directory.iterdir()):
        if not script.is_file():
            continue
        try:
            result = subprocess.run([str(script)], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("inventory script %s: %s", script.name, error)
            continue
        if result.returncode != 0:
            log.warning("inventory script %s exited with %s", script.name, result.returncode)
            continue
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip():
                found[key.strip()] = value.strip()
    return found
