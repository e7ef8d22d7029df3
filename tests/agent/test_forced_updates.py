"""Forced and soft deployments in the agent's update loop, with the hosting application in control
(``--app-control``): a soft update waits for the application's confirmation, a forced one does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetlift_agent.state import Event, Phase
from fleetlift_agent.state import transition as app_transition

from .runner_fakes import RecordingInstaller, in_thread, make_runner, offer, wait_until

INSTALL = ["prepare", "switch", "check", "commit"]


@pytest.mark.parametrize("forced", [False, None], ids=["soft", "not-said"])
def test_a_soft_update_waits_for_the_applications_confirmation(tmp_path: Path, forced: bool | None) -> None:
    installer = RecordingInstaller()
    runner, client, controller = make_runner(tmp_path, app_control=True, installer=installer)
    assert controller is not None
    controller.apply(Event.READY)
    client.offer = offer(forced=forced)
    worker = in_thread(runner.cycle)
    wait_until(lambda: controller.state.phase is Phase.WAIT_CONFIRM_PATCH, what="waiting for confirmation")
    worker.join(0.5)
    assert worker.is_alive() and installer.steps == []  # downloaded, announced, nothing applied
    assert "installing" not in client.statuses()

    controller.apply(Event.CONFIRM_PATCH)
    worker.join(10)
    assert not worker.is_alive()
    assert installer.steps == INSTALL
    assert client.statuses()[-1] == "succeeded"
    assert controller.state.phase is Phase.READY


def test_a_forced_update_is_applied_without_confirmation_even_while_the_application_is_busy(
    tmp_path: Path,
) -> None:
    installer = RecordingInstaller()
    runner, client, controller = make_runner(tmp_path, app_control=True, installer=installer)
    assert controller is not None
    assert controller.state.phase is Phase.BUSY  # a new device starts busy
    phases: list[Phase] = []
    controller.subscribe(lambda before, after, event: phases.append(after.phase))
    client.offer = offer(forced=True)

    worker = in_thread(runner.cycle)
    worker.join(10)
    assert not worker.is_alive(), "the forced update waited for the application"
    assert installer.steps == INSTALL
    assert client.statuses() == ["downloading", "downloaded", "installing", "verifying", "succeeded"]
    # The application hears it (through the local API's callback): applying, done, and busy again
    # as it had said (a later soft update waits for it).
    assert phases[-3:] == [Phase.APPLYING_PATCH, Phase.READY, Phase.BUSY]
    assert controller.state.phase is Phase.BUSY


def test_a_forced_update_also_overrides_an_application_that_stays_silent(tmp_path: Path) -> None:
    """The application went ready, the soft offer waits; a forced one for a new deployment does not."""
    runner, client, controller = make_runner(tmp_path, app_control=True)
    assert controller is not None
    controller.apply(Event.READY)
    client.offer = offer("dep-forced", forced=True)
    runner.cycle()
    assert client.reports[-1] == ("dep-forced", "succeeded")
    assert controller.state.phase is Phase.READY


def test_without_app_control_forced_and_soft_install_alike(tmp_path: Path) -> None:
    for index, forced in enumerate((True, False)):
        installer = RecordingInstaller()
        runner, client, _ = make_runner(tmp_path / str(index), installer=installer)
        client.offer = offer(forced=forced)
        runner.cycle()
        assert installer.steps == INSTALL
        assert client.statuses()[-1] == "succeeded"


def test_forced_needs_a_complete_download_and_is_refused_while_applying() -> None:
    from fleetlift_agent.state import AgentState, IllegalTransition, Pending

    assert (
        app_transition(AgentState(Phase.BUSY, Pending.PATCH_READY), Event.FORCED).phase
        is Phase.APPLYING_PATCH
    )
    assert app_transition(AgentState(Phase.READY_WITHBASE, Pending.BASE_READY), Event.FORCED).phase is (
        Phase.APPLYING_BASE
    )
    assert (
        app_transition(AgentState(Phase.WAIT_CONFIRM_PATCH, Pending.PATCH_READY), Event.FORCED).phase
        is Phase.APPLYING_PATCH
    )
    for state in (
        AgentState(Phase.INTRANSIT_PATCH, Pending.PATCH_PARTIAL),
        AgentState(Phase.READY),
        AgentState(Phase.APPLYING_PATCH, Pending.PATCH_READY),
    ):
        with pytest.raises(IllegalTransition):
            app_transition(state, Event.FORCED)
