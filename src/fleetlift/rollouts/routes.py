"""HTTP routes of the operator actions on a rollout: start, pause, resume, cancel, retry, approve."""

# No ``from __future__ import annotations``: each action's endpoint is made in a closure, and
# FastAPI must see its annotations (the audited permission dependency) evaluated, not as strings.
from collections.abc import Callable
from typing import Annotated, Protocol

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from fleetlift.api.deps import AuditIntent, IfMatch, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.deployments.routes import with_etag
from fleetlift.deployments.schemas import DeploymentRead
from fleetlift.deployments.service import DeploymentView
from fleetlift.rollouts import service

router = APIRouter(prefix="/deployments", tags=["deployments"])


class _Action(Protocol):
    def __call__(
        self, *, session: Session, caller: Caller, deployment_id: str, if_match: str | None
    ) -> DeploymentView: ...


_ACTIONS: dict[str, tuple[_Action, str, str]] = {
    "start": (
        service.start,
        "Start a deployment",
        "Starts a draft: its devices are assigned (as `waiting`) and the first wave opens, or a "
        "scheduled deployment now instead of at its `start_at`. 409 when it already started.",
    ),
    "pause": (
        service.pause,
        "Pause a rollout",
        "No wave opens and no device is released while paused; devices released but not started "
        "are no longer offered, devices installing finish. 409 unless active.",
    ),
    "resume": (
        service.resume,
        "Resume a rollout",
        "Goes on where it stopped. A rollout its error threshold halted is resumed with `retry` "
        "(its failures would halt it again at once): 409. 409 unless paused.",
    ),
    "cancel": (
        service.cancel,
        "Cancel a rollout",
        "Devices that have not started installing (waiting, pending, notified, downloading, "
        "downloaded) are cancelled; devices installing, rebooting or verifying finish. 409 when "
        "already cancelled.",
    ),
    "retry": (
        service.retry,
        "Retry failed devices",
        "Failed, rolled back and timed out devices go back to pending with one more attempt; a "
        "halted rollout goes on from its current wave (and a rollout paused by the halt becomes "
        "active). 409 when no device failed.",
    ),
    "approve": (
        service.approve,
        "Approve the next wave",
        "Opens the approval gate of the wave the rollout waits at (`awaiting_approval`), or of "
        "the next gated wave ahead of the open one. 409 when no wave awaits approval.",
    ),
}


def _route(name: str, action: _Action) -> Callable[..., DeploymentRead]:
    intent = AuditIntent(
        action=f"deployments.{name}", resource_type="deployment", resource_param="deployment_id"
    )

    def endpoint(
        deployment_id: str,
        session: SessionDep,
        response: Response,
        caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_CONTROL, audit=intent)],
        if_match: IfMatch = None,
    ) -> DeploymentRead:
        view = action(session=session, caller=caller, deployment_id=deployment_id, if_match=if_match)
        return with_etag(response, view)

    endpoint.__name__ = f"{name}_deployment"
    return endpoint


for _name, (_action, _summary, _description) in _ACTIONS.items():
    router.add_api_route(
        f"/{{deployment_id}}/{_name}",
        _route(_name, _action),
        methods=["POST"],
        response_model=DeploymentRead,
        **operation(
            Permission.DEPLOYMENTS_CONTROL,
            summary=_summary,
            description=_description + " Audited; honors `If-Match`.",
            errors=(404, 409, 412),
        ),
    )
