"""`stepguard serve`, `db upgrade`, `keys generate`, and the users and audit commands."""

from __future__ import annotations

import base64
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from stepguard.cli.output import console, errors, fail_with_problems
from stepguard.config.load import Loaded, load_config
from stepguard.core.errors import ConfigError, StepguardError
from stepguard.storage.records import UserRecord

CONFIG = typer.Option(Path("stepguard.yaml"), "--config", "-c", help="server configuration file")


def load(config: Path) -> Loaded:
    try:
        return load_config(config)
    except ConfigError as exc:
        fail_with_problems(exc, str(config))


def runtime_for(config: Path):  # type: ignore[no-untyped-def]
    from stepguard.service.runtime import build_runtime

    try:
        return build_runtime(load(config))
    except ConfigError as exc:
        fail_with_problems(exc, str(config))


@contextmanager
def user_named(username: str, config: Path) -> Iterator[tuple[Any, UserRecord]]:
    """The runtime and the user called `username` (exit 1 if there is none); closes after."""
    runtime = runtime_for(config)
    try:
        user = runtime.store.users.by_username(username)
        if user is None:
            errors.print(f"no user {username}")
            raise typer.Exit(1)
        yield runtime, user
    finally:
        runtime.close()


def serve(config: Path = CONFIG, host: str | None = None, port: int | None = None) -> None:
    """Run the gateway (forward-auth, portal, reverse proxy) under uvicorn or granian."""
    from stepguard.service.observe import configure_logging

    loaded = load(config).config
    settings = loaded.server
    configure_logging(level=settings.log_level, json=settings.log_format == "json")
    bind_host, bind_port = host or settings.host, port or settings.port
    os.environ["STEPGUARD_CONFIG"] = str(config.resolve())
    runtime_for(config).close()  # validate, open and migrate once before any worker starts
    from stepguard.cli.postgres_cmd import start_beside_http

    door = start_beside_http(config)  # the database door, when postgres listeners are set
    try:
        _serve_http(settings, loaded.http_server(), bind_host, bind_port)
    finally:
        if door is not None:
            door.terminate()
            door.wait(10)


# How uvicorn serves the gateway (`serve`, and the demo): Stepguard reads forwarding headers
# itself (`server.trusted_proxies`), so uvicorn must not rewrite the client from them.
UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    # No Date of its own (granian adds none either): a relayed answer keeps the upstream's,
    # never two.
    "date_header": False,
    # C parser and event loop (uvicorn[standard]); the pure-Python h11 measured ~3.5x slower.
    "http": "httptools",
    "loop": "uvloop",
}


def _serve_http(settings: Any, server: str, bind_host: str, bind_port: int) -> None:
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            "stepguard.web.factory:app_from_env",
            address=bind_host,
            port=bind_port,
            interface=Interfaces.ASGI,
            factory=True,
            workers=settings.workers,
        ).serve()
        return
    import uvicorn

    uvicorn.run(
        "stepguard.web.factory:app_from_env",
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=settings.workers,
        **UVICORN_OPTIONS,
    )


def db_upgrade(config: Path = CONFIG) -> None:
    """Apply the database migrations (Alembic) to the configured store."""
    from stepguard.service.runtime import store_url
    from stepguard.storage.migrate import upgrade

    loaded = load(config)
    upgrade(store_url(loaded))
    console.print("store is at the latest schema")


def keys_generate() -> None:
    """Print fresh secrets for the configuration (cookie key, TOTP key, audit signing key)."""
    from stepguard.audit.commands import generate_signing_key_pem

    console.print(f"cookie_key: {secrets.token_urlsafe(32)}", markup=False)
    console.print(f"totp key:   {base64.b64encode(os.urandom(32)).decode()}", markup=False)
    console.print(generate_signing_key_pem().decode(), markup=False)


def users_add(
    username: str,
    config: Path = CONFIG,
    password: str = typer.Option(..., prompt=True, hide_input=True),
    name: str = "",
    email: str = "",
    group: list[str] = typer.Option([]),
) -> None:
    """Add a user."""
    from stepguard.service.accounts import Accounts

    runtime = runtime_for(config)
    try:
        user = Accounts(runtime).add_user(
            username, password=password, display_name=name, email=email, groups=tuple(group)
        )
    except StepguardError as exc:
        errors.print(f"cannot add {username}: {exc}")
        raise typer.Exit(1) from exc
    finally:
        runtime.close()
    console.print(f"added {user.username} ({user.id})")


def users_list(config: Path = CONFIG) -> None:
    """List users: username, id, groups and source (`local` or the identity provider)."""
    from stepguard.service.idp import sources

    runtime = runtime_for(config)
    users = runtime.store.users.list(limit=10_000)
    source = sources(runtime.store, [u.id for u in users])
    for user in users:
        flag = " [disabled]" if user.disabled else ""
        console.print(
            f"{user.username}\t{user.id}\t{','.join(sorted(user.groups))}\t{source[user.id]}{flag}",
            markup=False,
        )
    runtime.close()


def users_disable(username: str, config: Path = CONFIG,
                  yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Disable a user and end all their sessions and agent tokens."""
    from stepguard.cli.admin_cmd import confirm, operator
    from stepguard.service.accounts import Accounts

    confirm(f"Disable {username} and end every session of theirs?", yes)
    with user_named(username, config) as (runtime, user):
        Accounts(runtime).disable_user(user.id, by=operator())
    console.print(f"disabled {username}; their sessions and agent tokens are ended")


def users_unlock(username: str, config: Path = CONFIG,
                 yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Lift every throttle lock and back-off on a user's sign-in and step-up attempts."""
    from stepguard.cli.admin_cmd import confirm, operator
    from stepguard.service.accounts import Accounts

    confirm(f"Lift every lock on the attempts of {username}?", yes)
    with user_named(username, config) as (runtime, user):
        Accounts(runtime).unlock(user.id, by=operator())
    console.print(f"unlocked {username}: failed attempts no longer hold them back")


def users_reset_factors(username: str, config: Path = CONFIG,
                        yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Remove a user's second factors and recovery codes, and end their sessions."""
    from stepguard.cli.admin_cmd import confirm, operator
    from stepguard.service.accounts import Accounts

    confirm(f"Remove every second factor and recovery code of {username}?", yes)
    with user_named(username, config) as (runtime, user):
        count = Accounts(runtime).reset_factors(user.id, by=operator())
    console.print(f"removed {count} factor(s) of {username}")


def users_import(file: Path, config: Path = CONFIG) -> None:
    """Import users from a YAML or CSV file (username, name, email, groups, password)."""
    from stepguard.service.maintenance import import_users, read_user_rows

    runtime = runtime_for(config)
    try:
        generated = import_users(runtime, read_user_rows(file))
    except ConfigError as exc:
        fail_with_problems(exc, str(file))
    except StepguardError as exc:
        errors.print(f"import refused, nothing was added: {exc}")
        raise typer.Exit(1) from exc
    finally:
        runtime.close()
    console.print(f"imported users from {file}")
    for username, password in generated:
        console.print(f"  {username}: generated password {password}", markup=False)


def users_set_password(username: str, config: Path = CONFIG,
                       password: str = typer.Option(..., prompt=True, hide_input=True)) -> None:
    """Set a user's password, end all their sessions and lift their throttle locks."""
    from stepguard.service.accounts import Accounts

    with user_named(username, config) as (runtime, user):
        Accounts(runtime).set_password(user.id, password)
    console.print(f"password of {username} set; their sessions are ended")


def keys_rotate_totp(config: Path = CONFIG) -> None:
    """Re-seal every TOTP seed with the key named by secrets.totp_current."""
    from stepguard.service.maintenance import rotate_totp_key

    runtime = runtime_for(config)
    count = rotate_totp_key(runtime)
    runtime.close()
    console.print(f"re-sealed {count} TOTP seed(s) with key {runtime.keyring.current}")


def audit_prune(config: Path = CONFIG) -> None:
    """Prune ledger entries older than audit.retention behind a signed checkpoint."""
    from stepguard.service.maintenance import prune_audit

    runtime = runtime_for(config)
    retention = runtime.config.audit.retention
    if retention is None:
        errors.print("audit.retention is not set: nothing to prune")
        raise typer.Exit(2)
    try:
        checkpoint = prune_audit(runtime, keep_seconds=retention)
    except ConfigError as exc:
        fail_with_problems(exc, str(config))
    finally:
        runtime.close()
    if checkpoint is None:
        console.print("nothing older than the retention period")
    else:
        console.print(f"pruned {checkpoint.count_pruned} entries; checkpoint at {checkpoint.seq}")


def audit_verify(config: Path = CONFIG, public_key: Path | None = None) -> None:
    """Verify the hash chain of the audit ledger; name the first bad entry."""
    from stepguard.audit.commands import verify_store
    from stepguard.service.runtime import store_url

    loaded = load(config)
    url = store_url(loaded)
    report = verify_store(url, public_key_pem=public_key.read_bytes() if public_key else None)
    if report.ok:
        console.print(f"ledger intact: {report.count} entries")
        return
    errors.print(
        f"ledger BROKEN at entry {report.first_bad_seq}: "
        f"{report.problem.value if report.problem else ''} {report.detail}"
    )
    raise typer.Exit(1)


def audit_export(
    config: Path = CONFIG, since: int = 0, format: str = typer.Option("jsonl", "--format")
) -> None:
    """Export the audit ledger as JSON Lines to standard output."""
    from stepguard.audit.commands import export_store
    from stepguard.service.runtime import store_url

    if format != "jsonl":
        errors.print("only --format jsonl is supported")
        raise typer.Exit(2)
    loaded = load(config)
    export_store(
        store_url(loaded), sys.stdout, since_seq=since
    )


def register(app: typer.Typer) -> None:
    from stepguard.cli import admin_cmd

    app.command("serve")(serve)
    db = typer.Typer(help="Database migrations.", no_args_is_help=True)
    db.command("upgrade")(db_upgrade)
    app.add_typer(db, name="db")
    keys = typer.Typer(help="Secrets.", no_args_is_help=True)
    keys.command("generate")(keys_generate)
    keys.command("rotate-totp")(keys_rotate_totp)
    app.add_typer(keys, name="keys")
    users = typer.Typer(help="Manage users.", no_args_is_help=True)
    users.command("add")(users_add)
    users.command("list")(users_list)
    users.command("disable")(users_disable)
    users.command("reset-factors")(users_reset_factors)
    users.command("import")(users_import)
    users.command("set-password")(users_set_password)
    users.command("unlock")(users_unlock)
    users.command("end-sessions")(admin_cmd.users_end_sessions)
    app.add_typer(users, name="users")
    audit = typer.Typer(help="The audit ledger.", no_args_is_help=True)
    audit.command("verify")(audit_verify)
    audit.command("export")(audit_export)
    audit.command("prune")(audit_prune)
    audit.command("list")(admin_cmd.audit_list)
    audit.command("status")(admin_cmd.audit_status)
    app.add_typer(audit, name="audit")
