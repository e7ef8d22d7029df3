"""Use cases of the IoT Hub slice: hubs, device sync, edge deployments as hub configurations, their
status, and update triggers through the hub.

Database work runs in worker threads (``anyio.to_thread``), each piece in a transaction of its own;
hub calls run on the event loop between them, so no transaction stays open while the hub answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.adapters.iothub import (
    ConfigOperationLimiter,
    ConnectionString,
    DeviceNotOnline,
    EntraTokenProvider,
    IotHubClient,
    IotHubConflict,
    IotHubError,
    IotHubNotFound,
    IotHubQuotaExceeded,
    SasTokenProvider,
    Throttled,
)
from fleetlift.adapters.iothub.auth import AsyncTokenCredential, AuthProvider
from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import transaction, utcnow
from fleetlift.deployments import repository as deployments_repository
from fleetlift.deployments import service as deployments
from fleetlift.deployments.models import Deployment
from fleetlift.deployments.rules import DeviceReport, DeviceUpdateState, Phase
from fleetlift.errors import Conflict, FieldError, FleetliftError, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.ids import new_id
from fleetlift.images.rules import parse_image_reference
from fleetlift.iothub import repository, rules
from fleetlift.iothub.models import IotHub, IotHubConfiguration
from fleetlift.iothub.schemas import (
    ApplyResult,
    IotHubCreate,
    IotHubDelivery,
    IotHubDeploymentRead,
    IotHubUpdate,
    MethodTriggerRequest,
    MethodTriggerResult,
    RevisionRead,
    SyncResult,
    TriggerOutcome,
)
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.registries import service as registries
from fleetlift.releases import repository as releases
from fleetlift.releases.models import Release
from fleetlift.rollouts.schemas import RolloutPolicy
from fleetlift.secrets_box import SecretBox

log = logging.getLogger("fleetlift.iothub")

T = TypeVar("T")

MAX_CONFIGURATIONS = 100  # per hub, whatever the tier
AZURE_HOST_SUFFIX = ".azure-devices.net"
PAGE_SIZE = 100
TRIGGER_CONCURRENCY = 16
LIMIT_RETRY = timedelta(minutes=5)  # how soon a revision refused for the 100-configuration limit tries again
LIMIT_CODE = "ConfigurationCountLimitExceeded"

_S = DeviceUpdateState


async def _db(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking database work in a worker thread."""
    return await anyio.to_thread.run_sync(partial(function, *args, **kwargs))


def _context(tenant_id: str, hub_id: str) -> str:
    return f"iothub/{tenant_id}/{hub_id}"


# --- clients ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubAccess:
    """What it takes to reach one hub (the connection string still sealed)."""

    tenant_id: str
    hub_id: str
    host_name: str
    auth: str
    sealed_connection_string: str | None = field(repr=False)
    sync_condition: str | None = None


def access_of(hub: IotHub) -> HubAccess:
    """The reachability facts of a hub row, detached from its session."""
    return HubAccess(
        hub.tenant_id, hub.id, hub.host_name, hub.auth, hub.sealed_connection_string, hub.sync_condition
    )


class HubClients:
    """The one place IoT Hub clients are made: one per hub, kept for the process (each holds the hub's
    configuration-operation limiter, which must be shared by everything that talks to that hub).
    Tests set ``transport`` (an emulator) and ``options`` before the first client is made."""

    def __init__(
        self,
        box: SecretBox,
        *,
        allow_any_host: bool = False,
        transport: Any = None,
        entra_credential: AsyncTokenCredential | None = None,
        **options: Any,
    ) -> None:
        self.box = box
        self.allow_any_host = allow_any_host
        self.transport = transport
        self.entra_credential = entra_credential
        # A configuration operation waits at most a minute for its turn: the worker then moves on and
        # the revision reports its place in the queue.
        self.options: dict[str, Any] = {"config_max_wait_seconds": 60.0, **options}
        # Each hub's client with the sealed connection string it was made from: a hub given a new
        # one (on any replica) gets a new client here at its next use.
        self._clients: dict[tuple[str, str], tuple[str | None, IotHubClient]] = {}
        self._replaced: list[IotHubClient] = []

    def check_host(self, host_name: str) -> None:
        """Refuse a host that is not an IoT hub's (unless any host is allowed, for emulators)."""
        if not self.allow_any_host and not host_name.lower().endswith(AZURE_HOST_SUFFIX):
            raise InvalidInput(
                f"the hub's host name must end in {AZURE_HOST_SUFFIX}",
                errors=[FieldError("body.host_name", f"not an IoT hub host name (*{AZURE_HOST_SUFFIX})")],
            )

    def _auth(self, access: HubAccess) -> AuthProvider:
        if access.auth == "entra":
            return EntraTokenProvider(self.entra_credential)
        if access.sealed_connection_string is None:
            raise InvalidInput(f"hub '{access.hub_id}' has no stored connection string")
        try:
            text = self.box.open(
                access.sealed_connection_string, context=_context(access.tenant_id, access.hub_id)
            )
        except ValueError:
            # Sealed under another secrets key: the data directory's key was replaced, or the
            # database is shared with a server that has a key of its own.
            raise Conflict(
                f"the stored connection string of hub '{access.hub_id}' cannot be opened with this "
                "server's secrets key; give it its connection string again (PATCH /api/v1/iothub/hubs/"
                f"{access.hub_id})"
            ) from None
        return SasTokenProvider(ConnectionString.parse(text))

    def client(self, access: HubAccess) -> IotHubClient:
        """The hub's client, made on first use."""
        key = (access.tenant_id, access.hub_id)
        existing = self._clients.get(key)
        if existing is not None and existing[0] == access.sealed_connection_string:
            return existing[1]
        self.check_host(access.host_name)
        made = IotHubClient(access.host_name, self._auth(access), transport=self.transport, **self.options)
        if existing is not None:
            self._replaced.append(existing[1])  # closed with the others (it may be mid-call now)
        self._clients[key] = (access.sealed_connection_string, made)
        return made

    def limiter(self, tenant_id: str, hub_id: str) -> ConfigOperationLimiter | None:
        """The configuration-operation limiter of a hub whose client exists in this process."""
        existing = self._clients.get((tenant_id, hub_id))
        return None if existing is None else existing[1].config_limiter

    def rate_per_minute(self) -> float:
        """Configuration operations per minute a new client allows."""
        return float(self.options.get("config_ops_per_minute", 20))

    async def forget(self, tenant_id: str, hub_id: str) -> None:
        """Close and drop a hub's client (the hub was deleted)."""
        existing = self._clients.pop((tenant_id, hub_id), None)
        if existing is not None:
            await existing[1].aclose()

    async def aclose(self) -> None:
        """Close every client."""
        clients = [client for _, client in self._clients.values()] + self._replaced
        self._clients, self._replaced = {}, []
        for client in clients:
            await client.aclose()


# --- hubs ---------------------------------------------------------------------------------------


def create_hub(*, session: Session, clients: HubClients, caller: Caller, data: IotHubCreate) -> IotHub:
    """Register a hub; its connection string is checked, then sealed before it is stored."""
    key_name: str | None = None
    sealed_text: str | None = None
    if data.auth == "sas":
        assert data.connection_string is not None  # the schema requires it for sas
        text = data.connection_string.get_secret_value()
        parsed = ConnectionString.parse(text)  # errors name the problem, never the value
        host_name, key_name, sealed_text = parsed.host_name, parsed.key_name, text
    else:
        assert data.host_name is not None
        host_name = data.host_name
    clients.check_host(host_name)
    _check_name_free(session, caller.tenant_id, data.name)
    now = utcnow()
    hub = IotHub(
        tenant_id=caller.tenant_id,
        id=new_id("hub_"),
        name=data.name,
        host_name=host_name,
        auth=data.auth,
        key_name=key_name,
        sync_condition=data.sync_condition,
        sync_interval_seconds=data.sync_interval_seconds,
        last_sync_counts={},
        created_by=caller.subject,
        created_at=now,
        updated_at=now,
    )
    if sealed_text is not None:
        hub.sealed_connection_string = clients.box.seal(
            sealed_text, context=_context(caller.tenant_id, hub.id)
        )
    repository.add(session, hub)
    audit.record(
        session,
        caller=caller,
        action="iothub.hubs.create",
        resource_type="iothub",
        resource_id=hub.id,
        status_code=201,
        # The host and policy name only: never the key or the connection string.
        details={"host_name": host_name, "auth": data.auth, "key_name": key_name},
    )
    session.commit()
    return hub


def update_hub(
    *,
    session: Session,
    clients: HubClients,
    caller: Caller,
    hub_id: str,
    data: IotHubUpdate,
    if_match: str | None,
) -> IotHub:
    """Rename a hub, change its sync settings, or give it a rotated connection string (same host).
    Every replica's client is remade from the new one at its next use (see ``HubClients.client``)."""
    hub = _hub(session, caller.tenant_id, hub_id)
    check_if_match(if_match, hub.row_version)
    details: dict[str, Any] = {"changed": sorted(data.model_fields_set)}
    if data.connection_string is not None:
        if hub.auth != "sas":
            raise InvalidInput(
                f"hub '{hub_id}' authenticates with Entra ID; it takes no connection string",
                errors=[FieldError("body.connection_string", "not for a hub with auth 'entra'")],
            )
        text = data.connection_string.get_secret_value()
        parsed = ConnectionString.parse(text)  # errors name the problem, never the value
        if parsed.host_name.lower() != hub.host_name.lower():
            raise InvalidInput(
                f"the connection string is for {parsed.host_name}, not this hub's {hub.host_name}; "
                "register the other hub on its own",
                errors=[FieldError("body.connection_string", "names another hub")],
            )
        hub.sealed_connection_string = clients.box.seal(text, context=_context(caller.tenant_id, hub.id))
        hub.key_name = parsed.key_name
        details["key_name"] = parsed.key_name  # the policy's name only: never the key
    if data.name is not None and data.name != hub.name:
        _check_name_free(session, caller.tenant_id, data.name)
        hub.name = data.name
    if "sync_condition" in data.model_fields_set:
        hub.sync_condition = data.sync_condition
    if data.sync_interval_seconds is not None:
        hub.sync_interval_seconds = data.sync_interval_seconds
    hub.updated_at = utcnow()
    audit.record(
        session,
        caller=caller,
        action="iothub.hubs.update",
        resource_type="iothub",
        resource_id=hub.id,
        status_code=200,
        details=details,
    )
    session.commit()
    return hub


def _check_name_free(session: Session, tenant_id: str, name: str) -> None:
    if repository.hub_by_name(session, tenant_id=tenant_id, name=name) is not None:
        raise Conflict(f"a hub named '{name}' exists already in this tenant")


def get_hub(*, session: Session, caller: Caller, hub_id: str) -> IotHub:
    """One hub of the caller's tenant."""
    return _hub(session, caller.tenant_id, hub_id)


def _hub(session: Session, tenant_id: str, hub_id: str) -> IotHub:
    hub = repository.get_hub(session, tenant_id=tenant_id, hub_id=hub_id)
    if hub is None:
        raise NotFound(f"no IoT hub '{hub_id}' in this tenant")
    return hub


def list_hubs(*, session: Session, caller: Caller, page: PageRequest) -> Page[IotHub]:
    """The tenant's hubs by ID."""
    rows = repository.list_hubs(
        session, tenant_id=caller.tenant_id, after=page.after[0] if page.after else None, limit=page.limit
    )
    return page_of(rows, page, lambda row: [row.id])


def delete_hub(*, session: Session, caller: Caller, hub_id: str, force: bool, if_match: str | None) -> None:
    """Forget a hub; refused while it delivers live deployments unless ``force`` (their
    configurations then stay in the hub, and the synced devices stay in fleetlift)."""
    hub = _hub(session, caller.tenant_id, hub_id)
    check_if_match(if_match, hub.row_version)
    live = repository.count_active_deliveries(session, tenant_id=caller.tenant_id, hub_id=hub_id)
    if live and not force:
        raise Conflict(
            f"hub '{hub_id}' delivers {live} deployment(s); delete or cancel them first, "
            "or delete with force=true (their configurations then stay in the hub)",
            extra={"active_deliveries": live},
        )
    repository.delete_hub(session, hub)
    audit.record(
        session,
        caller=caller,
        action="iothub.hubs.delete",
        resource_type="iothub",
        resource_id=hub_id,
        status_code=204,
        details={"forced": bool(live and force), "active_deliveries": live},
    )
    session.commit()


# --- device sync --------------------------------------------------------------------------------

_DEVICE_ID = re.compile(r"[A-Za-z0-9\-.:_%#*?!(),=@$']{1,128}")


def _without_metadata(value: Any) -> Any:
    """Reported properties without the hub's ``$metadata`` / ``$version`` bookkeeping."""
    if isinstance(value, Mapping):
        return {key: _without_metadata(item) for key, item in value.items() if not str(key).startswith("$")}
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def device_row(
    twin: Mapping[str, Any], *, tenant_id: str, hub_id: str, now: datetime
) -> dict[str, Any] | None:
    """The fleetlift device row for one device twin, or None for a twin fleetlift cannot hold.

    Device type: ``tags.deviceType``, else ``properties.reported.deviceType``, else ``iothub-device``.
    Architecture: ``properties.reported.architecture``, else ``tags.architecture``, else ``unknown``.
    """
    device_id = twin.get("deviceId")
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        return None
    tags = _mapping(twin.get("tags"))
    reported = _without_metadata(_mapping(_mapping(twin.get("properties")).get("reported")))
    capabilities = _mapping(twin.get("capabilities"))
    return {
        "tenant_id": tenant_id,
        "id": device_id,
        "name": device_id,
        "device_type": _text(tags.get("deviceType"), 100)
        or _text(reported.get("deviceType"), 100)
        or "iothub-device",
        "architecture": _text(reported.get("architecture"), 50)
        or _text(tags.get("architecture"), 50)
        or "unknown",
        "tags": dict(tags),
        "reported": reported,
        # The hub is these devices' identity provider: they are admitted as they arrive.
        "status": "accepted",
        "identity": {"iothub": hub_id, "edge": bool(capabilities.get("iotEdge"))},
        "created_at": now,
        "updated_at": now,
        "row_version": 1,
    }


def _load_access(sessions: sessionmaker[Session], tenant_id: str, hub_id: str) -> HubAccess:
    with sessions() as session:
        return access_of(_hub(session, tenant_id, hub_id))


def _write_page(sessions: sessionmaker[Session], rows: list[dict[str, Any]]) -> int:
    with transaction(sessions) as session:
        return repository.upsert_devices(session, rows)


def _finish_sync(
    sessions: sessionmaker[Session],
    *,
    tenant_id: str,
    hub_id: str,
    caller: Caller | None,
    synced: int,
    pages: int,
    changed: int,
    error: str | None,
) -> int:
    with transaction(sessions) as session:
        # Every device seen is now one of this hub's, so the rest were not listed this time.
        missing = max(repository.count_hub_devices(session, tenant_id=tenant_id, hub_id=hub_id) - synced, 0)
        counts = {"synced": synced, "pages": pages, "changed": changed, "missing": missing}
        repository.record_sync(
            session,
            tenant_id=tenant_id,
            hub_id=hub_id,
            at=utcnow(),
            status="failed" if error else "ok",
            error=error,
            counts=counts,
        )
        if caller is not None and error is None:
            audit.record(
                session,
                caller=caller,
                action="iothub.hubs.sync",
                resource_type="iothub",
                resource_id=hub_id,
                details=counts,
            )
    return missing


async def sync_devices(
    *,
    sessions: sessionmaker[Session],
    clients: HubClients,
    tenant_id: str,
    hub_id: str,
    caller: Caller | None = None,
    page_size: int = PAGE_SIZE,
) -> SyncResult:
    """Import the hub's devices (``SELECT * FROM devices [WHERE sync_condition]``), page by page,
    one upsert per page, so a big hub is never held in memory."""
    access = await _db(_load_access, sessions, tenant_id, hub_id)
    query = "SELECT * FROM devices" + (f" WHERE {access.sync_condition}" if access.sync_condition else "")
    synced = pages = changed = 0
    batch: dict[str, dict[str, Any]] = {}
    try:
        client = clients.client(access)  # inside: a hub whose credentials fail shows it in last_sync
        async for twin in client.query_twins(query, page_size=page_size):
            row = device_row(twin, tenant_id=tenant_id, hub_id=hub_id, now=utcnow())
            if row is not None:
                batch[row["id"]] = row  # one row per ID: PostgreSQL refuses to upsert a row twice
            if len(batch) >= page_size:
                changed += await _db(_write_page, sessions, list(batch.values()))
                synced, pages, batch = synced + len(batch), pages + 1, {}
        if batch:
            changed += await _db(_write_page, sessions, list(batch.values()))
            synced, pages = synced + len(batch), pages + 1
    except FleetliftError as error:
        await _db(
            _finish_sync,
            sessions,
            tenant_id=tenant_id,
            hub_id=hub_id,
            caller=None,
            synced=synced,
            pages=pages,
            changed=changed,
            error=error.detail[:1000],
        )
        raise
    missing = await _db(
        _finish_sync,
        sessions,
        tenant_id=tenant_id,
        hub_id=hub_id,
        caller=caller,
        synced=synced,
        pages=pages,
        changed=changed,
        error=None,
    )
    log.info("iothub devices synced", extra={"hub_id": hub_id, "synced": synced, "missing": missing})
    return SyncResult(hub_id=hub_id, synced=synced, pages=pages, missing=missing)


# --- edge deployments ---------------------------------------------------------------------------


def _modules(release: Release) -> list[rules.EdgeModule]:
    if not release.payloads:
        raise InvalidInput("an IoT Edge deployment needs a release with container payloads")
    if any(payload.get("type") != "container" for payload in release.payloads):
        raise InvalidInput(
            f"release '{release.name}' {release.version} has payloads other than containers; "
            "only container images can be delivered as an IoT Edge deployment",
            errors=[FieldError("body.iothub", "the release must be all container payloads")],
        )
    return [rules.module_from_payload(payload) for payload in release.payloads]


def _target(deployment: Deployment) -> str:
    return rules.hub_target_condition(
        None, list(deployment.target_device_ids), deployment.target_condition, edge_only=True
    )


def spec_hash(deployment: Deployment, release: Release, *, layered: bool) -> str:
    """A digest of everything a configuration is made of, registry credentials aside."""
    spec = {
        "release": release.id,
        "payloads": release.payloads,
        "target": _target(deployment),
        "priority": deployment.priority,
        "labels": dict(deployment.labels),
        "layered": layered,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def queue_delivery(
    session: Session,
    *,
    caller: Caller,
    deployment: Deployment,
    release: Release,
    delivery: IotHubDelivery,
    policy: RolloutPolicy,
) -> IotHubConfiguration:
    """Check that a new deployment can be an IoT Edge deployment, and queue its first configuration
    (in the caller's transaction: the revision exists exactly when the deployment does)."""
    if repository.get_hub(session, tenant_id=caller.tenant_id, hub_id=delivery.hub_id) is None:
        raise InvalidInput(
            f"no IoT hub '{delivery.hub_id}' in this tenant",
            errors=[FieldError("body.iothub.hub_id", "unknown hub")],
        )
    if policy.waves or policy.max_concurrent is not None or policy.maintenance is not None:
        raise InvalidInput(
            "an IoT Hub deployment takes the default rollout policy: the hub applies a configuration to "
            "every targeted device at once; phase a rollout as several deployments with priorities",
            errors=[FieldError("body.policy", "waves, max_concurrent and maintenance are not available")],
        )
    modules = _modules(release)
    # Built once now so a release or target the hub cannot take is refused at once, not later.
    rules.edge_manifest(modules, registries={}, layered=delivery.layered)
    now = utcnow()
    row = IotHubConfiguration(
        tenant_id=caller.tenant_id,
        deployment_id=deployment.id,
        revision=1,
        hub_id=delivery.hub_id,
        configuration_id=rules.configuration_id(deployment.id, 1),
        layered=delivery.layered,
        state="queued",
        spec_hash=spec_hash(deployment, release, layered=delivery.layered),
        attempts=0,
        hub_counts={},
        created_at=now,
        updated_at=now,
    )
    repository.add(session, row)
    session.flush()  # the deployment's targeting, next in this transaction, asks whether it has one
    return row


def _registry_key(host: str) -> str:
    # Registry credential names are twin keys: no '.', '$' or spaces.
    return re.sub(r"[^A-Za-z0-9_-]", "_", host)


def _document(
    session: Session, box: SecretBox, revision: IotHubConfiguration, deployment: Deployment
) -> dict[str, Any]:
    release = releases.get(session, tenant_id=deployment.tenant_id, release_id=deployment.release_id)
    if release is None:
        raise InvalidInput(f"release '{deployment.release_id}' is gone")
    modules = _modules(release)
    stored = registries.credentials_by_registry(session=session, box=box, tenant_id=deployment.tenant_id)
    logins: dict[str, rules.RegistryLogin] = {}
    for module in modules:
        host = parse_image_reference(module.image_digest_ref).registry
        if host in stored:
            credentials = stored[host]
            logins[_registry_key(host)] = rules.RegistryLogin(
                address=host, username=credentials.username, password=credentials.password
            )
    manifest = rules.edge_manifest(modules, registries=logins, layered=revision.layered)
    labels = {
        **dict(deployment.labels),
        "fleetlift.deployment": deployment.id,
        "fleetlift.revision": str(revision.revision),
    }
    return rules.configuration_document(
        revision.configuration_id,
        manifest,
        target_condition=_target(deployment),
        priority=deployment.priority,
        labels=labels,
    )


def _deployment_live(deployment: Deployment) -> bool:
    return deployment.deleted_at is None and deployment.phase != Phase.CANCELLED.value


def _publishable(deployment: Deployment, now: datetime) -> bool:
    # The hub cannot pause a configuration: one already there stays while the deployment is paused,
    # but nothing new is published for it until it runs again.
    return (
        _deployment_live(deployment)
        and deployment.phase == Phase.ACTIVE.value
        and (deployment.start_at is None or deployment.start_at <= now)
    )


def _due(revision: IotHubConfiguration, now: datetime) -> bool:
    return revision.next_attempt_at is None or revision.next_attempt_at <= now


@dataclass(frozen=True)
class Work:
    """One hub call the worker is to make for a revision."""

    deployment_id: str
    revision: int
    configuration_id: str


@dataclass
class HubPlan:
    publish: list[Work] = field(default_factory=list)
    retire: list[Work] = field(default_factory=list)
    status: list[Work] = field(default_factory=list)


def _plan(
    sessions: sessionmaker[Session],
    *,
    tenant_id: str,
    hub_id: str,
    now: datetime,
    status_before: datetime | None,
) -> HubPlan:
    """Bring the revisions in line with their deployments (new revisions for changed deployments,
    retirement for deleted or cancelled ones), and list the hub calls that are due."""
    plan = HubPlan()
    with transaction(sessions) as session:
        by_deployment: dict[str, list[tuple[IotHubConfiguration, Deployment]]] = {}
        for revision, deployment in repository.hub_deliveries(session, tenant_id=tenant_id, hub_id=hub_id):
            by_deployment.setdefault(deployment.id, []).append((revision, deployment))
        for pairs in by_deployment.values():
            pairs.sort(key=lambda pair: pair[0].revision)
            deployment = pairs[0][1]
            if not _deployment_live(deployment):
                for revision, _ in pairs:
                    if revision.state == "retiring":
                        continue  # on its way out already, with its own backoff
                    # Queued or failed revisions never reached the hub, unless an attempt's answer got lost.
                    in_hub = revision.state == "applied" or revision.attempts > 0
                    revision.state = "retiring" if in_hub else "retired"
                    revision.retired_at = None if in_hub else now
                    revision.next_attempt_at = None
                    revision.updated_at = now
                continue
            latest = pairs[-1][0]
            if deployment.phase == Phase.DRAFT.value:
                continue
            release = releases.get(session, tenant_id=tenant_id, release_id=deployment.release_id)
            if release is None:
                continue
            try:
                wanted = spec_hash(deployment, release, layered=latest.layered)
            except InvalidInput as error:
                latest.state, latest.last_error, latest.updated_at = "failed", error.detail[:1000], now
                continue
            if latest.spec_hash != wanted:
                if latest.state == "queued":
                    latest.spec_hash = wanted  # not in the hub yet: it is built from the deployment as it is
                else:
                    number = latest.revision + 1
                    repository.add(
                        session,
                        IotHubConfiguration(
                            tenant_id=tenant_id,
                            deployment_id=deployment.id,
                            revision=number,
                            hub_id=hub_id,
                            configuration_id=rules.configuration_id(deployment.id, number),
                            layered=latest.layered,
                            state="queued",
                            spec_hash=wanted,
                            attempts=0,
                            hub_counts={},
                            created_at=now,
                            updated_at=now,
                        ),
                    )
        session.flush()
        for revision, deployment in repository.hub_deliveries(session, tenant_id=tenant_id, hub_id=hub_id):
            work = Work(deployment.id, revision.revision, revision.configuration_id)
            if revision.state == "retiring" and _due(revision, now):
                plan.retire.append(work)
            elif (revision.state == "queued" and _publishable(deployment, now) and _due(revision, now)) or (
                revision.state == "failed"
                and revision.last_error_code == LIMIT_CODE
                and _publishable(deployment, now)
                and _due(revision, now)
            ):
                plan.publish.append(work)
            elif (
                revision.state == "applied"
                and _deployment_live(deployment)
                and (
                    status_before is None
                    or revision.refreshed_at is None
                    or revision.refreshed_at <= status_before
                )
            ):
                plan.status.append(work)
    # The newest applied revision of a deployment is the one whose status counts.
    newest: dict[str, Work] = {}
    for work in plan.status:
        if work.deployment_id not in newest or newest[work.deployment_id].revision < work.revision:
            newest[work.deployment_id] = work
    plan.status = list(newest.values())
    return plan


def _revision(session: Session, tenant_id: str, work: Work) -> IotHubConfiguration:
    row = session.get(IotHubConfiguration, (tenant_id, work.deployment_id, work.revision))
    if row is None:
        raise NotFound(f"revision {work.revision} of deployment '{work.deployment_id}' is gone")
    return row


def _build(sessions: sessionmaker[Session], box: SecretBox, tenant_id: str, work: Work) -> dict[str, Any]:
    with sessions() as session:
        revision = _revision(session, tenant_id, work)
        deployment = deployments_repository.get(
            session, tenant_id=tenant_id, deployment_id=work.deployment_id
        )
        if deployment is None:
            raise NotFound(f"deployment '{work.deployment_id}' is gone")
        return _document(session, box, revision, deployment)


def _backoff(attempts: int) -> timedelta:
    ceiling = min(3600.0, 10.0 * 2.0 ** min(attempts, 12))
    return timedelta(seconds=ceiling * (0.5 + random.random() / 2))


def _record(
    sessions: sessionmaker[Session],
    tenant_id: str,
    work: Work,
    *,
    state: str | None = None,
    error: FleetliftError | None = None,
    retry_in: timedelta | None = None,
    etag: str | None = None,
) -> list[Work]:
    """Store a hub call's outcome on its revision; an applied revision retires the older ones
    (returned: they are to be deleted from the hub)."""
    now = utcnow()
    retiring: list[Work] = []
    with transaction(sessions) as session:
        row = _revision(session, tenant_id, work)
        row.updated_at = now
        if error is not None:
            row.attempts += 1
            row.last_error = error.detail[:1000]
            code = getattr(error, "hub_code", None)
            row.last_error_code = (code or type(error).__name__)[:64]
            row.next_attempt_at = now + (retry_in if retry_in is not None else _backoff(row.attempts))
        if state is not None:
            row.state = state
        if state == "applied":
            row.applied_at, row.hub_etag, row.next_attempt_at = now, etag, None
            row.last_error = row.last_error_code = None
            for older in repository.revisions_of(
                session, tenant_id=tenant_id, deployment_id=work.deployment_id
            ):
                if older.revision < row.revision and older.state in ("applied", "queued", "failed"):
                    in_hub = older.state == "applied" or older.attempts > 0
                    older.state = "retiring" if in_hub else "retired"
                    older.next_attempt_at, older.updated_at = None, now
                    older.retired_at = None if in_hub else now
                    if in_hub:
                        retiring.append(Work(older.deployment_id, older.revision, older.configuration_id))
        if state == "retired":
            row.retired_at, row.next_attempt_at = now, None
        if state == "failed" and error is not None and error.status == 400:
            row.next_attempt_at = None  # the content is wrong: only a change of the deployment helps
    return retiring


def _is_limit(error: FleetliftError) -> bool:
    code = str(getattr(error, "hub_code", "") or "")
    return isinstance(error, IotHubQuotaExceeded) or "limitexceeded" in code.lower()


async def _publish(
    sessions: sessionmaker[Session],
    box: SecretBox,
    client: IotHubClient,
    tenant_id: str,
    work: Work,
    counted: list[int],
    max_configurations: int,
) -> list[Work]:
    """Create one revision's configuration; the older revisions it replaces (to retire now)."""
    try:
        document = await _db(_build, sessions, box, tenant_id, work)
    except InvalidInput as error:
        await _db(_record, sessions, tenant_id, work, state="failed", error=error)
        return []
    try:
        if not counted:
            counted.append(len(await client.list_configurations()))
        if counted[0] >= max_configurations:
            limit = IotHubQuotaExceeded(
                f"the hub has {counted[0]} configurations, its limit is {max_configurations}: delete "
                "deployments (or configurations) there before this one can be created",
                hub_code=LIMIT_CODE,
            )
            await _db(_record, sessions, tenant_id, work, state="failed", error=limit, retry_in=LIMIT_RETRY)
            return []
        try:
            answer = await client.put_configuration(document)
        except IotHubConflict as conflict:
            if _is_limit(conflict):
                raise
            # It exists: an earlier attempt went through although its answer was lost. Ours if labelled so.
            answer = await client.get_configuration(work.configuration_id)
            if (answer.get("labels") or {}).get("fleetlift.deployment") != work.deployment_id:
                raise
        counted[0] += 1
        etag = answer.get("etag")
        log.info("iothub configuration created", extra={"configuration_id": work.configuration_id})
        return await _db(
            _record, sessions, tenant_id, work, state="applied", etag=etag if isinstance(etag, str) else None
        )
    except FleetliftError as error:
        if _is_limit(error):
            await _db(_record, sessions, tenant_id, work, state="failed", error=error, retry_in=LIMIT_RETRY)
        elif isinstance(error, InvalidInput):
            await _db(_record, sessions, tenant_id, work, state="failed", error=error)
        else:
            retry_after = error.extra.get("retry_after") if isinstance(error, Throttled) else None
            retry_in = timedelta(seconds=float(retry_after)) if isinstance(retry_after, int | float) else None
            log.warning(
                "iothub configuration not created, will retry",
                extra={"configuration_id": work.configuration_id, "error": error.detail},
            )
            await _db(_record, sessions, tenant_id, work, error=error, retry_in=retry_in)
    return []


async def _retire(sessions: sessionmaker[Session], client: IotHubClient, tenant_id: str, work: Work) -> None:
    try:
        await client.delete_configuration(work.configuration_id)
    except IotHubNotFound:
        pass  # gone already: what we wanted
    except FleetliftError as error:
        await _db(_record, sessions, tenant_id, work, error=error)
        return
    await _db(_record, sessions, tenant_id, work, state="retired")


def _status_facts(sessions: sessionmaker[Session], tenant_id: str, work: Work) -> list[str]:
    with sessions() as session:
        deployment = deployments_repository.get(
            session, tenant_id=tenant_id, deployment_id=work.deployment_id
        )
        release = (
            None
            if deployment is None
            else releases.get(session, tenant_id=tenant_id, release_id=deployment.release_id)
        )
        return [] if release is None else [module.name for module in _modules(release)]


def reports_for(state: DeviceUpdateState) -> list[DeviceUpdateState]:
    """The report(s) that take a fleetlift device row to ``state`` (success needs a step through
    installing when the row has not started yet); none for a device the hub has not got to."""
    if state is _S.PENDING:
        return []
    if state is _S.SUCCEEDED:
        return [_S.INSTALLING, _S.SUCCEEDED]
    return [state]


def _record_reports(sessions: sessionmaker[Session], reports: list[DeviceReport]) -> None:
    if reports:
        with sessions() as session:
            deployments.record_device_reports(session=session, reports=reports, now=utcnow())


def _record_counts(
    sessions: sessionmaker[Session], tenant_id: str, work: Work, counts: dict[str, int]
) -> None:
    now = utcnow()
    with transaction(sessions) as session:
        row = _revision(session, tenant_id, work)
        row.hub_counts, row.refreshed_at, row.updated_at = counts, now, now


async def refresh_status(
    sessions: sessionmaker[Session], client: IotHubClient, tenant_id: str, work: Work
) -> None:
    """Read a configuration's metrics and its devices' ``$edgeAgent`` twins into fleetlift."""
    modules = await _db(_status_facts, sessions, tenant_id, work)
    configuration = await client.get_configuration(work.configuration_id)
    system = (configuration.get("systemMetrics") or {}).get("results") or {}
    custom = (configuration.get("metrics") or {}).get("results") or {}
    counts = rules.counts_from_metrics(system, custom)
    query = (
        f"SELECT * FROM devices.modules WHERE moduleId = {rules.hub_string(rules.EDGE_AGENT)} "
        f"AND configurations.[[{work.configuration_id}]].status = 'Applied'"
    )
    reports: list[DeviceReport] = []
    async for twin in client.query_twins(query, page_size=PAGE_SIZE):
        device_id = twin.get("deviceId")
        if not isinstance(device_id, str):
            continue
        state = rules.edge_device_state(twin, configuration_id=work.configuration_id, modules=modules)
        detail = rules.edge_status_detail(twin) if state is _S.FAILED else None
        reports += [
            DeviceReport(tenant_id, work.deployment_id, device_id, step, detail)
            for step in reports_for(state)
        ]
        if len(reports) >= PAGE_SIZE:
            await _db(_record_reports, sessions, reports)
            reports = []
    await _db(_record_reports, sessions, reports)
    await _db(_record_counts, sessions, tenant_id, work, counts)


async def reconcile_hub(
    *,
    sessions: sessionmaker[Session],
    clients: HubClients,
    tenant_id: str,
    hub_id: str,
    status_interval: float = 60.0,
    max_configurations: int = MAX_CONFIGURATIONS,
) -> HubPlan:
    """One level-triggered step of a hub's deliveries: create due configurations (counting the hub's
    100 first), delete retired ones, and read the status of applied ones. Returns what it did."""
    now = utcnow()
    plan = await _db(
        _plan,
        sessions,
        tenant_id=tenant_id,
        hub_id=hub_id,
        now=now,
        status_before=now - timedelta(seconds=status_interval),
    )
    if not (plan.publish or plan.retire or plan.status):
        return plan
    client = clients.client(await _db(_load_access, sessions, tenant_id, hub_id))
    counted: list[int] = []
    # New configurations first: a replaced one is deleted only after its successor exists.
    for work in plan.publish:
        replaced = await _publish(sessions, clients.box, client, tenant_id, work, counted, max_configurations)
        plan.retire += [old for old in replaced if old not in plan.retire]
    for work in plan.retire:
        await _retire(sessions, client, tenant_id, work)
    for work in plan.status:
        try:
            await refresh_status(sessions, client, tenant_id, work)
        except FleetliftError as error:
            log.warning(
                "iothub status not read",
                extra={"configuration_id": work.configuration_id, "error": error.detail},
            )
    return plan


# --- reading deliveries -------------------------------------------------------------------------


def _revision_read(row: IotHubConfiguration) -> RevisionRead:
    return RevisionRead(
        revision=row.revision,
        configuration_id=row.configuration_id,
        state=row.state,
        last_error=row.last_error,
        created_at=row.created_at,
        applied_at=row.applied_at,
        retired_at=row.retired_at,
    )


def _delivery_read(
    session: Session, clients: HubClients, deployment: Deployment, history: list[IotHubConfiguration]
) -> IotHubDeploymentRead:
    now = utcnow()
    current = history[-1]
    position: int | None = None
    wait: float | None = None
    if current.state == "queued":
        ahead = repository.queued_before(
            session, tenant_id=current.tenant_id, hub_id=current.hub_id, created_at=current.created_at
        )
        limiter = clients.limiter(current.tenant_id, current.hub_id)
        waiting = limiter.waiting if limiter is not None else 0
        interval = 60.0 / (limiter.per_minute if limiter is not None else clients.rate_per_minute())
        first = max(limiter.estimated_wait_seconds(), 0.0) if limiter is not None else 0.0
        position = waiting + ahead + 1
        wait = first + (waiting + ahead) * interval
        if current.next_attempt_at is not None:
            wait = max(wait, (current.next_attempt_at - now).total_seconds())
        wait = round(max(wait, 0.0), 3)
    counts = deployments.view_of(session, deployment, now).counts
    return IotHubDeploymentRead(
        deployment_id=deployment.id,
        hub_id=current.hub_id,
        revision=current.revision,
        configuration_id=current.configuration_id,
        layered=current.layered,
        state=current.state,
        queue_position=position,
        estimated_wait_seconds=wait,
        attempts=current.attempts,
        next_attempt_at=current.next_attempt_at,
        last_error=current.last_error,
        last_error_code=current.last_error_code,
        hub_counts={key: int(value) for key, value in (current.hub_counts or {}).items()},
        device_counts={state.value: n for state, n in counts.items()},
        refreshed_at=current.refreshed_at,
        revisions=[_revision_read(row) for row in reversed(history)],
    )


def _delivered(
    session: Session, tenant_id: str, deployment_id: str
) -> tuple[Deployment, list[IotHubConfiguration]]:
    deployment = repository.deployment_with_deleted(session, tenant_id=tenant_id, deployment_id=deployment_id)
    history = repository.revisions_of(session, tenant_id=tenant_id, deployment_id=deployment_id)
    if deployment is None or not history:
        raise NotFound(f"deployment '{deployment_id}' is not delivered through an IoT hub in this tenant")
    return deployment, history


def get_delivery(
    *, session: Session, clients: HubClients, caller: Caller, deployment_id: str
) -> IotHubDeploymentRead:
    """A deployment's delivery through its hub: configuration, queue place, hub and device counts."""
    deployment, history = _delivered(session, caller.tenant_id, deployment_id)
    return _delivery_read(session, clients, deployment, history)


def _read_delivery(
    sessions: sessionmaker[Session], clients: HubClients, caller: Caller, deployment_id: str
) -> IotHubDeploymentRead:
    with sessions() as session:
        return get_delivery(session=session, clients=clients, caller=caller, deployment_id=deployment_id)


async def refresh_delivery(
    *, sessions: sessionmaker[Session], clients: HubClients, caller: Caller, deployment_id: str
) -> IotHubDeploymentRead:
    """Read the delivery's status from the hub now, then answer it."""
    current = await _db(_read_delivery, sessions, clients, caller, deployment_id)
    if current.state == "applied":
        access = await _db(_load_access, sessions, caller.tenant_id, current.hub_id)
        work = Work(current.deployment_id, current.revision, current.configuration_id)
        await refresh_status(sessions, clients.client(access), caller.tenant_id, work)
    return await _db(_read_delivery, sessions, clients, caller, deployment_id)


def list_deliveries(
    *, session: Session, clients: HubClients, caller: Caller, hub_id: str, page: PageRequest
) -> Page[IotHubDeploymentRead]:
    """The deployments delivered through a hub (their newest revisions), by deployment ID."""
    _hub(session, caller.tenant_id, hub_id)
    rows = repository.latest_revisions(
        session,
        tenant_id=caller.tenant_id,
        hub_id=hub_id,
        after=page.after[0] if page.after else None,
        limit=page.limit,
    )
    cut = page_of(rows, page, lambda row: [row.deployment_id])
    items = []
    for row in cut.items:
        deployment, history = _delivered(session, caller.tenant_id, row.deployment_id)
        items.append(_delivery_read(session, clients, deployment, history))
    return Page(items=items, next_cursor=cut.next_cursor)


# --- triggers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TriggerFacts:
    access: HubAccess
    release_id: str
    known: frozenset[str]
    edge: frozenset[str]


def _trigger_facts(
    sessions: sessionmaker[Session],
    caller: Caller,
    hub_id: str,
    deployment_id: str,
    device_ids: Sequence[str],
) -> tuple[_TriggerFacts, Deployment]:
    with sessions() as session:
        hub = _hub(session, caller.tenant_id, hub_id)
        deployment = deployments_repository.get(
            session, tenant_id=caller.tenant_id, deployment_id=deployment_id
        )
        if deployment is None:
            raise NotFound(f"no deployment '{deployment_id}' in this tenant")
        found = repository.hub_devices(
            session, tenant_id=caller.tenant_id, hub_id=hub_id, device_ids=device_ids
        )
        edge = frozenset(device_id for device_id, device in found.items() if device.identity.get("edge"))
        return _TriggerFacts(access_of(hub), deployment.release_id, frozenset(found), edge), deployment


def _apply_document(
    sessions: sessionmaker[Session],
    box: SecretBox,
    caller: Caller,
    deployment_id: str,
    device_id: str,
    hub_id: str,
) -> dict[str, Any]:
    with sessions() as session:
        deployment = deployments_repository.get(
            session, tenant_id=caller.tenant_id, deployment_id=deployment_id
        )
        assert deployment is not None  # checked by _trigger_facts
        # Content applied to one device is a whole deployment, never a layer.
        probe = IotHubConfiguration(
            configuration_id=rules.configuration_id(deployment.id, 0),
            revision=0,
            layered=False,
            hub_id=hub_id,
        )
        document = _document(session, box, probe, deployment)
    return {"modulesContent": document["content"]["modulesContent"]}


def _audit_trigger(
    sessions: sessionmaker[Session], caller: Caller, action: str, resource_id: str, details: dict[str, Any]
) -> None:
    with transaction(sessions) as session:
        audit.record(
            session,
            caller=caller,
            action=action,
            resource_type="iothub",
            resource_id=resource_id,
            status_code=200,
            details=details,
        )


async def apply_to_device(
    *,
    sessions: sessionmaker[Session],
    clients: HubClients,
    caller: Caller,
    hub_id: str,
    device_id: str,
    deployment_id: str,
) -> ApplyResult:
    """Apply a deployment's modules to one IoT Edge device now (``applyConfigurationContent``)."""
    facts, _ = await _db(_trigger_facts, sessions, caller, hub_id, deployment_id, [device_id])
    if device_id not in facts.known:
        raise NotFound(f"no device '{device_id}' synced from hub '{hub_id}'")
    if device_id not in facts.edge:
        raise Conflict(
            f"device '{device_id}' is not an IoT Edge device; modules can only be applied to those"
        )
    content = await _db(_apply_document, sessions, clients.box, caller, deployment_id, device_id, hub_id)
    await clients.client(facts.access).apply_configuration_content(device_id, content)
    await _db(
        _audit_trigger,
        sessions,
        caller,
        "iothub.devices.apply",
        hub_id,
        {"device_id": device_id, "deployment_id": deployment_id},
    )
    return ApplyResult(hub_id=hub_id, device_id=device_id, deployment_id=deployment_id, applied=True)


async def _trigger_one(
    client: IotHubClient, device_id: str, payload: dict[str, Any], sequence: int, gate: asyncio.Semaphore
) -> TriggerOutcome:
    async with gate:
        try:
            result = await client.invoke_method(device_id, rules.UPDATE_METHOD, payload)
        except DeviceNotOnline:
            try:
                await client.update_twin(device_id, rules.desired_update_patch(payload, sequence=sequence))
            except FleetliftError as error:
                return TriggerOutcome(device_id=device_id, outcome="failed", detail=error.detail[:500])
            return TriggerOutcome(
                device_id=device_id,
                outcome="desired_property",
                detail="the device is offline; it finds the trigger in its twin's desired properties",
            )
        except IotHubError as error:
            return TriggerOutcome(device_id=device_id, outcome="failed", detail=error.detail[:500])
        detail = None if 200 <= result.status < 300 else f"the device answered {result.status}"
        return TriggerOutcome(device_id=device_id, outcome="invoked", status=result.status, detail=detail)


async def trigger_devices(
    *,
    sessions: sessionmaker[Session],
    clients: HubClients,
    caller: Caller,
    hub_id: str,
    data: MethodTriggerRequest,
    concurrency: int = TRIGGER_CONCURRENCY,
) -> MethodTriggerResult:
    """Tell devices running the fleetlift agent over IoT Hub to check for a deployment now: a direct
    method (``fleetlift.update``), or a desired property for devices that are offline."""
    device_ids = list(dict.fromkeys(data.device_ids))
    facts, deployment = await _db(_trigger_facts, sessions, caller, hub_id, data.deployment_id, device_ids)
    client = clients.client(facts.access)
    payload = rules.method_payload(deployment.id, release_id=facts.release_id)
    # Milliseconds since the epoch: grows with every trigger, so a repeated one is still a change.
    sequence = time.time_ns() // 1_000_000
    gate = asyncio.Semaphore(concurrency)
    unknown = {
        device_id: TriggerOutcome(
            device_id=device_id, outcome="failed", detail=f"not a device of hub '{hub_id}'"
        )
        for device_id in device_ids
        if device_id not in facts.known
    }
    sent = await asyncio.gather(
        *[_trigger_one(client, d, payload, sequence, gate) for d in device_ids if d not in unknown]
    )
    by_id = {outcome.device_id: outcome for outcome in sent} | unknown
    results = [by_id[device_id] for device_id in device_ids]
    tally: dict[str, int] = {}
    for outcome in results:
        tally[outcome.outcome] = tally.get(outcome.outcome, 0) + 1
    await _db(
        _audit_trigger,
        sessions,
        caller,
        "iothub.devices.update",
        hub_id,
        {"deployment_id": deployment.id, **tally},
    )
    return MethodTriggerResult(deployment_id=deployment.id, results=results)
