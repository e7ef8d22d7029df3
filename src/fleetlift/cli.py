"""The ``fleetlift`` command line: serve, migrate, and tokens for the embedded issuer."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.trust.repository import TrustRepository, tenant_repository

app = typer.Typer(help="fleetlift: update management for fleets of IoT gateways.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens from the embedded issuer.", no_args_is_help=True)
app.add_typer(token_app, name="token")
keys_app = typer.Typer(help="TUF signing keys of a tenant's artifacts.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="Tenant; the default tenant when omitted.")
]
RoleArgument = Annotated[str, typer.Argument(help="root, targets, snapshot or timestamp.")]

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d`` as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"'{text}' is not a duration like 90s, 15m, 1h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@app.command()
def migrate() -> None:
    """Apply database migrations (to FLEETLIFT_DATABASE_URL, or SQLite under the data directory)."""
    from fleetlift.migrate import upgrade

    settings = Settings()
    settings.ensure_data_dir()
    upgrade(settings.resolved_database_url)
    typer.echo(f"database is up to date: {settings.public_dict()['database_url']}", err=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first.")
    ] = True,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes (each reads FLEETLIFT_* itself).")
    ] = 1,
) -> None:
    """Run the server."""
    import uvicorn

    from fleetlift.app import create_app
    from fleetlift.migrate import upgrade

    settings = Settings()
    settings.ensure_data_dir()
    if migrate_first:
        upgrade(settings.resolved_database_url)
    bind_host = host or settings.host
    bind_port = port or settings.port
    typer.echo(
        f"fleetlift listening on http://{bind_host}:{bind_port}\n"
        f"  API docs:     http://{bind_host}:{bind_port}/docs\n"
        f"  admin token:  .venv/bin/fleetlift token create --role admin --subject you",
        err=True,
    )
    if workers > 1:
        # Several processes need an importable factory; each reads the same FLEETLIFT_* settings.
        uvicorn.run(
            "fleetlift.app:create_app",
            factory=True,
            workers=workers,
            host=bind_host,
            port=bind_port,
            log_level="warning",
            access_log=False,
        )
        return
    uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_level="warning", access_log=False)


@token_app.command("create")
def token_create(
    role: Annotated[list[Role], typer.Option("--role", help="Role to grant; repeat for several.")],
    subject: Annotated[str, typer.Option(help="Who the token is for (the audit log shows it).")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 90s, 15m, 1h, 7d.")] = "1h",
    tenant: Annotated[str | None, typer.Option(help="Tenant; the default tenant when omitted.")] = None,
) -> None:
    """Print a bearer token from the embedded issuer, and nothing else, on standard output."""
    from fleetlift.app import local_issuer

    settings = Settings()
    try:
        token = local_issuer(settings).issue(
            subject,
            frozenset(role),
            parse_duration(ttl),
            tenant_id=tenant or settings.default_tenant,
        )
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    sys.stdout.write(token + "\n")


def _trust(tenant: str | None) -> tuple[TrustRepository, str]:
    settings = Settings()
    tenant_id = tenant or settings.default_tenant
    return tenant_repository(settings.data_dir, tenant_id), tenant_id


@keys_app.command("init")
def keys_init(tenant: TenantOption = None) -> None:
    """Create the four TUF role keys and the first signed metadata (done on first upload too)."""
    repository, tenant_id = _trust(tenant)
    repository.ensure_initialised()
    typer.echo(f"TUF repository of tenant {tenant_id} is ready", err=True)


@keys_app.command("rotate")
def keys_rotate(
    role: RoleArgument,
    tenant: TenantOption = None,
    root_key: Annotated[
        Path | None, typer.Option(help="The offline root key, when it is not on the server.")
    ] = None,
) -> None:
    """Replace a role's key; a new root version (signed by the old root key) announces it."""
    repository, tenant_id = _trust(tenant)
    try:
        version = repository.rotate(role, root_key_file=root_key)
    except (ValueError, PermissionError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"rotated the {role} key of tenant {tenant_id}; root is now version {version}", err=True)


@keys_app.command("take-offline")
def keys_take_offline(
    role: RoleArgument,
    to: Annotated[Path, typer.Option("--to", help="Where to write the private key (must not exist).")],
    tenant: TenantOption = None,
) -> None:
    """Move the root or targets private key off the server."""
    repository, tenant_id = _trust(tenant)
    try:
        repository.take_offline(role, to)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"the {role} key of tenant {tenant_id} is now only at {to}", err=True)


@keys_app.command("sign")
def keys_sign(
    role: Annotated[str, typer.Argument(help="targets (the role that can be signed offline).")],
    key: Annotated[Path, typer.Option("--key", help="The offline private key.")],
    tenant: TenantOption = None,
) -> None:
    """Sign the targets waiting since the targets key went offline, and publish them."""
    if role != "targets":
        typer.echo("error: only targets are signed offline; root changes through `keys rotate`", err=True)
        raise typer.Exit(2)
    repository, tenant_id = _trust(tenant)
    try:
        count = repository.sign_targets(key)
    except (ValueError, PermissionError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"signed and published {count} pending target(s) of tenant {tenant_id}", err=True)


def main() -> None:
    """Entry point of the ``fleetlift`` script."""
    app()


if __name__ == "__main__":
    main()
