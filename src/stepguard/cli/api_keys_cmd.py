"""`stepguard api-keys create|rotate|revoke|list`: keys for the decision API's clients.

A new or rotated key is printed once (`sgk_<id>_<secret>`); only its hash is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from stepguard.cli.output import console, errors
from stepguard.cli.server_cmd import CONFIG, runtime_for
from stepguard.core.errors import Conflict, StepguardError

app = typer.Typer(help="Keys for the decision API (POST /api/v1/decide).", no_args_is_help=True)


@app.command("create")
def create(name: str, config: Path = CONFIG) -> None:
    """Issue a key for a new client; the key is printed once."""
    from stepguard.service.api_keys import ApiKeys

    runtime = runtime_for(config)
    try:
        issued = ApiKeys(runtime).create(name)
    except (Conflict, ValueError) as exc:
        errors.print(f"cannot create {name}: {exc}")
        raise typer.Exit(1) from exc
    finally:
        runtime.close()
    typer.echo(issued.key)


@app.command("rotate")
def rotate(
    name: str,
    config: Path = CONFIG,
    grace: str = typer.Option("0s", help="how long the old key keeps working, e.g. 10m"),
) -> None:
    """Give a client a new key; the old one stops working after the grace period."""
    from stepguard.core.durations import parse_duration
    from stepguard.service.api_keys import ApiKeys

    runtime = runtime_for(config)
    try:
        issued = ApiKeys(runtime).rotate(name, grace=parse_duration(grace))
    except (StepguardError, ValueError) as exc:
        errors.print(f"cannot rotate {name}: {exc}")
        raise typer.Exit(1) from exc
    finally:
        runtime.close()
    typer.echo(issued.key)


@app.command("revoke")
def revoke(name: str, config: Path = CONFIG) -> None:
    """Revoke a client's key (and any previous key still in its grace period) at once."""
    from stepguard.service.api_keys import ApiKeys

    runtime = runtime_for(config)
    try:
        ApiKeys(runtime).revoke(name)
    except StepguardError as exc:
        errors.print(f"cannot revoke {name}: {exc}")
        raise typer.Exit(1) from exc
    finally:
        runtime.close()
    console.print(f"revoked {name}")


@app.command("list")
def list_keys(config: Path = CONFIG) -> None:
    """List clients: name, key id, state, created, last used."""
    from stepguard.service.api_keys import ApiKeys

    runtime = runtime_for(config)
    try:
        for key in ApiKeys(runtime).list():
            state = "revoked" if key.revoked_at else "active"
            console.print(
                f"{key.name}\t{key.id}\t{state}\tcreated {_when(key.created)}\t"
                f"last used {_when(key.last_used)}",
                markup=False,
            )
    finally:
        runtime.close()


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "never"
