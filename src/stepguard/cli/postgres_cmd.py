"""`stepguard postgres serve` (the database door alone) and `stepguard db-login` (issue a
database token for a user's signed-in session and print a ready psql connection string)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import typer

from stepguard.cli.output import errors
from stepguard.cli.server_cmd import CONFIG, load, runtime_for, user_named

app = typer.Typer(help="The database door (PostgreSQL gateway).", no_args_is_help=True)


@app.command("serve")
def postgres_serve(config: Path = CONFIG) -> None:
    """Run the configured PostgreSQL listeners (`stepguard serve` starts them too)."""
    from stepguard.pgwire.gateway import PostgresGateway
    from stepguard.service.observe import configure_logging

    settings = load(config).config.server
    configure_logging(level=settings.log_level, json=settings.log_format == "json")
    runtime = runtime_for(config)
    try:
        gateway = PostgresGateway(runtime, base=config.resolve().parent)
        try:
            import uvloop  # uvicorn[standard]'s loop: ~1.7x asyncio's relay throughput here
        except ImportError:  # pragma: no cover
            asyncio.run(gateway.serve())
        else:
            uvloop.run(gateway.serve())
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()


def start_beside_http(config: Path) -> subprocess.Popen[bytes] | None:
    """The database door as a child process of `stepguard serve`, when listeners are set."""
    if not load(config).config.postgres.listeners:
        return None
    command = [sys.executable, "-c", "from stepguard.cli.main import app; app()",
               "postgres", "serve", "--config", str(config)]
    return subprocess.Popen(command)  # noqa: S603 - our own interpreter and arguments


def db_login(
    username: str,
    database: str = typer.Option(..., help="database name as clients ask for it"),
    session: str = typer.Option("", help="session id to bind to (default: the user's most "
                                         "recently seen live session)"),
    config: Path = CONFIG,
) -> None:
    """Issue a database token bound to a live session of USERNAME; print a psql string."""
    from stepguard.pgwire.tokens import TokenService, connection_string
    from stepguard.web.db_tokens import public_address

    with user_named(username, config) as (runtime, user):
        names = [d.name for li in runtime.config.postgres.listeners for d in li.databases]
        if database not in names:
            errors.print(f"no database {database!r} (configured: {', '.join(names) or 'none'})")
            raise typer.Exit(1)
        guard_live = [s for s in runtime.store.sessions.list_for_user(user.id)
                      if s.revoked_at is None and (not session or s.id == session)]
        if not guard_live:
            errors.print(f"{username} has no live session to bind a token to: sign in first")
            raise typer.Exit(1)
        bound = max(guard_live, key=lambda s: s.last_seen)
        level = max((e.level for e in bound.events), default=None)
        issued = TokenService(runtime).issue(bound, user, level=level.label if level else "aal0")
        host, port = public_address(runtime.config)
        typer.echo(connection_string(host=host, port=port, user_name=issued.user_name,
                                     secret=issued.secret, database=database))  # one line
