"""The composition root: ``create_app(settings)`` picks every backend and wires every slice."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from fleetlift import __version__
from fleetlift.adapters import build_artifact_store, build_image_registry, docker_config_credentials
from fleetlift.api import health, problems
from fleetlift.api.deps import AuditIntent
from fleetlift.api.middleware import RequestGuard, RequestMetrics
from fleetlift.artifacts import routes as artifact_routes
from fleetlift.audit import routes as audit_routes
from fleetlift.audit import service as audit_service
from fleetlift.auth import IssuerConfig, LocalIssuer, TokenVerifier
from fleetlift.channels import build_device_channel
from fleetlift.config import Settings
from fleetlift.context import Caller
from fleetlift.db import make_engine, make_session_factory
from fleetlift.deployments import routes as deployment_routes
from fleetlift.device_api import routes as device_routes_protocol
from fleetlift.device_api.fastpath import POLL_PATH, STATUS_ROUTE, DeviceFastPath
from fleetlift.device_api.poll import DevicePoller, PollNotifier, install_session_hooks
from fleetlift.device_api.reports import ReportBatcher
from fleetlift.device_api.tokens import DeviceTokens
from fleetlift.devices import routes as device_routes
from fleetlift.enrollment import routes as enrollment_routes
from fleetlift.events import routes as event_routes
from fleetlift.events.runtime import EventsRuntime
from fleetlift.images.signatures import load_public_keys
from fleetlift.images.vulnerabilities import VulnerabilityPolicy
from fleetlift.iothub import routes as iothub_routes
from fleetlift.iothub.service import HubClients
from fleetlift.iothub.worker import IotHubWorker
from fleetlift.logs import configure as configure_logging
from fleetlift.notifications import routes as notification_routes
from fleetlift.registries import routes as registry_routes
from fleetlift.releases import routes as release_routes
from fleetlift.releases.service import ImageChecks
from fleetlift.rollouts import routes as rollout_routes
from fleetlift.rollouts.reconciler import Reconciler, install_release_hooks
from fleetlift.secrets_box import SecretBox, load_or_create_key
from fleetlift.tenants import service as tenants
from fleetlift.trust import routes as trust_routes

API_PREFIX = "/api/v1"
API_VERSION = "1.0.0"

_DESCRIPTION = """\
The management API of fleetlift: releases, devices, deployments, update triggers and the audit log.

Every operation takes an OAuth2/OIDC bearer token (Entra ID compatible, or the embedded issuer's:
`fleetlift token create --role admin --subject you`). Roles come from the `roles` claim: **admin**,
**developer** (publishes releases, drafts deployments), **operator** (admits devices, starts,
pauses and cancels rollouts, triggers updates), **viewer** (reads). Each operation names the
permission and roles it needs in its description and in `x-fleetlift-roles`.

Errors are `application/problem+json` (RFC 9457). Lists are cursor-paginated (`limit`, `cursor`,
`next_cursor`). Resources carry an `ETag`; `PUT` and `DELETE` honor `If-Match`.
"""


def build_verifier(settings: Settings) -> TokenVerifier:
    """Trust the embedded issuer (unless disabled) and every configured OIDC issuer."""
    issuers = [
        IssuerConfig(
            issuer=oidc.issuer,
            audience=oidc.audience,
            jwks_uri=oidc.jwks_uri,
            roles_claim=oidc.roles_claim,
            role_map=dict(oidc.role_map),
            tenant_claim=oidc.tenant_claim,
        )
        for oidc in settings.oidc_issuers
    ]
    local = local_issuer(settings) if settings.local_issuer_enabled else None
    return TokenVerifier(issuers, local_issuer=local, jwks_cache_seconds=settings.jwks_cache_seconds)


def local_issuer(settings: Settings) -> LocalIssuer:
    """The embedded issuer, its key under the data directory."""
    settings.ensure_data_dir()
    return LocalIssuer(
        settings.local_issuer_key_path,
        issuer=settings.local_issuer,
        audience=settings.audience,
        max_ttl=timedelta(seconds=settings.token_max_ttl_seconds),
    )


def vulnerability_policy(settings: Settings) -> VulnerabilityPolicy | None:
    """The vulnerability gate's policy, or None when the gate is off."""
    if settings.vulnerability_max_severity is None:
        return None
    hours = settings.vulnerability_max_report_age_hours
    return VulnerabilityPolicy(
        max_severity=settings.vulnerability_max_severity,
        fixable_only=settings.vulnerability_fixable_only,
        allowlist=frozenset(settings.vulnerability_allowlist),
        max_age=None if hours is None else timedelta(hours=hours),
    )


def secrets_key(settings: Settings) -> bytes:
    """The key that seals stored secrets: configured (base64 of 32 bytes), or made once under the
    data directory. Every replica needs the same one."""
    if settings.secrets_key is not None:
        key = base64.b64decode(settings.secrets_key.get_secret_value())
        if len(key) != 32:
            raise ValueError("FLEETLIFT_SECRETS_KEY must be the base64 of 32 bytes")
        return key
    return load_or_create_key(settings.data_dir / "keys" / "secrets.key")


def link_signing_key(settings: Settings) -> bytes:
    """The secret that signs download links: configured, or made once under the data directory."""
    if settings.link_signing_key is not None:
        return settings.link_signing_key.get_secret_value().encode()
    settings.ensure_data_dir()
    path = settings.data_dir / "keys" / "link-signing.key"
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


def _audit_refusal_recorder(app: FastAPI, settings: Settings) -> Any:
    def record(request: Request, status: int, reason: str) -> None:
        intent: AuditIntent | None = getattr(request.state, "audit_intent", None)
        if intent is None:
            return
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:
            caller = Caller.of(
                subject="anonymous",
                roles=frozenset(),
                tenant_id=settings.default_tenant,
                request_id=request.state.request_id,
            )
        resource_id = request.path_params.get(intent.resource_param) if intent.resource_param else None
        audit_service.record_refusal(
            app.state.sessions,
            caller=caller,
            action=intent.action,
            resource_type=intent.resource_type,
            resource_id=resource_id,
            status_code=status,
            reason=reason,
        )

    return record


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The document, cleaned of FastAPI's 422 answers: validation errors are 400 problems here."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version="3.1.0",
        description=app.description,
        routes=app.routes,
        tags=[
            {"name": "artifacts", "description": "Files devices install: upload, download, links."},
            {"name": "releases", "description": "What can be installed, and where it fits."},
            {"name": "devices", "description": "The fleet: registration, tags, inventory."},
            {"name": "deployments", "description": "A release on a target, with per-device state."},
            {"name": "updates", "description": "Update one device or a batch now."},
            {"name": "registries", "description": "Credentials for private image registries."},
            {"name": "audit", "description": "Who changed what, and how it ended."},
            {"name": "events", "description": "The event log: pages, or a live Server-Sent Events stream."},
            {"name": "webhooks", "description": "Events POSTed to your URLs, signed, retried, logged."},
            {"name": "iothub", "description": "Azure IoT Hub: device sync, IoT Edge deployments, triggers."},
            {"name": "device protocol", "description": "What devices call, with device tokens."},
            {"name": "trust", "description": "TUF metadata and targets for devices."},
            {"name": "health", "description": "Liveness, readiness, metrics."},
        ],
        servers=[{"url": "/", "description": "This server"}],
    )
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if "application/problem+json" in content:
                    content.pop("application/json", None)
    schemas = document.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = document
    return document


async def _stop_loop(stop: Callable[[], None], task: asyncio.Task[None]) -> None:
    """End a background loop after the pass under way; cancelled only if that hangs."""
    stop()
    await asyncio.wait({task}, timeout=30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the server application for ``settings`` (the embedded default when omitted)."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tenants.ensure_default(sessions, tenant_id=settings.default_tenant)
        seen_writer = asyncio.create_task(app.state.device_poller.run())
        # Everything loaded so far lives as long as the process: leave it out of the garbage
        # collector's full passes, which otherwise walk it all and stall every request meanwhile
        # (about 0.1 s on a busy machine, the p99 of the device poll; docs/benchmarks.md).
        gc.freeze()
        events = await app.state.events.start()
        app.state.reconciler.attach(asyncio.get_running_loop())  # tells devices released by requests
        reconciler = asyncio.create_task(app.state.reconciler.run()) if settings.reconciler_enabled else None
        iothub = asyncio.create_task(app.state.iothub_worker.run()) if settings.iothub_enabled else None
        yield
        if iothub is not None:
            await _stop_loop(app.state.iothub_worker.stop, iothub)
        await app.state.iothub_clients.aclose()
        if reconciler is not None:
            await _stop_loop(app.state.reconciler.stop, reconciler)
        await app.state.events.stop(events)  # ends event streams, stops the webhook dispatcher
        seen_writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await seen_writer
        await app.state.device_poller.query.aclose()
        await app.state.device_channel.close()
        for client in (app.state.artifact_store, app.state.image_registry):
            close = getattr(client, "close", None)
            if close is not None:
                await close()  # HTTP clients hold connections bound to this event loop
        engine.dispose()

    app = FastAPI(
        title="fleetlift management API",
        version=API_VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.verifier = build_verifier(settings)
    app.state.metrics_registry = CollectorRegistry()
    app.state.audit_refusal = _audit_refusal_recorder(app, settings)
    app.state.artifact_store = build_artifact_store(settings)
    app.state.image_registry = build_image_registry(settings)
    app.state.secrets = SecretBox(secrets_key(settings))
    settings.ensure_data_dir()
    app.state.device_tokens = DeviceTokens(
        settings.data_dir / "keys" / "device-tokens.pem", timedelta(seconds=settings.device_token_ttl_seconds)
    )
    # Long polls wake when this process commits a deployment change (other processes: re-checks).
    notifier = PollNotifier()
    install_session_hooks(sessions, notifier)
    # Status reports (and the poll's "notified") are written in batches; an outcome wakes the reconciler.
    app.state.device_reports = ReportBatcher(sessions)
    app.state.device_poller = DevicePoller(
        reports=app.state.device_reports,
        engine=engine,
        sessions=sessions,
        tokens=app.state.device_tokens,
        notifier=notifier,
        inline_reads=engine.dialect.name == "sqlite",
    )
    # How released devices hear of it: these long polls, and with FLEETLIFT_DEVICE_CHANNEL=mqtt
    # a message on each device's topic as well.
    app.state.device_channel = build_device_channel(settings, notifier)
    # Rollouts move forward in the reconciler; devices a request's transaction released (a
    # deployment started, an action) are told through the channel after its commit too.
    app.state.reconciler = Reconciler(
        sessions=sessions, channel=app.state.device_channel, interval=settings.reconcile_interval_seconds
    )
    install_release_hooks(sessions, app.state.reconciler.notify_soon)
    app.state.device_reports.on_outcomes = app.state.reconciler.wake
    app.state.image_checks = ImageChecks(
        registry=app.state.image_registry,
        secrets=app.state.secrets,
        fallback_credentials=docker_config_credentials(settings),
        trusted_keys=load_public_keys([path.read_text() for path in settings.signature_key_files]),
        vulnerability_policy=vulnerability_policy(settings),
    )
    app.state.link_secret = link_signing_key(settings)
    # Event streams wake after commits that emitted events; webhooks are dispatched in the background.
    app.state.events = EventsRuntime(sessions=sessions, box=app.state.secrets, settings=settings)
    # Azure IoT Hub: one client per hub, made here only (tests point its transport at an emulator),
    # and the worker that syncs devices and reconciles edge deployments (docs/iothub.md).
    app.state.iothub_clients = HubClients(app.state.secrets, allow_any_host=settings.iothub_allow_any_host)
    app.state.iothub_worker = IotHubWorker(
        sessions=sessions,
        clients=app.state.iothub_clients,
        interval=settings.iothub_worker_interval_seconds,
        status_interval=settings.iothub_status_interval_seconds,
    )

    problems.install(app)
    for router in (
        artifact_routes.router,
        release_routes.router,
        device_routes.router,
        deployment_routes.triggers,
        deployment_routes.router,
        rollout_routes.router,
        audit_routes.router,
        registry_routes.router,
        notification_routes.router,
        enrollment_routes.router,
        event_routes.router,
        event_routes.webhooks,
        iothub_routes.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(device_routes_protocol.router)
    app.include_router(artifact_routes.public)
    app.include_router(trust_routes.router)
    app.include_router(health.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    # The device poll and status report, the requests a fleet sends most, skip the framework's
    # routing (inside the guard).
    routes = {getattr(r, "path", ""): r for r in device_routes_protocol.router.routes}
    app.add_middleware(
        DeviceFastPath,
        state=app.state,
        route=routes[POLL_PATH],
        report_route=routes[STATUS_ROUTE],
    )
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_request_bytes,
        metrics=RequestMetrics(app.state.metrics_registry),
        json_prefix=API_PREFIX,
        streaming_paths=frozenset({f"{API_PREFIX}/artifacts"}),
        also_guarded=("/api/device/v1",),
    )
    return app


__all__ = ["API_PREFIX", "__version__", "create_app"]
