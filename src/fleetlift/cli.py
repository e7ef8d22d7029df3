"""The ``fleetlift`` command line: serve, migrate, and tokens for the embedded issuer."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from typing import Annotated

import typer

from fleetlift.auth import Role
from fleetlift.config import Settings

app = typer.Typer(help="fleetlift: update management for fleets of IoT gateways.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens from the embedded issuer.", no_args_is_help=True)
app.add_typer(token_app, name="token")

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


def main() -> None:
    """Entry point of the ``fleetlift`` script."""
    app()


if __name__ == "__main__":
    main()
