"""The `stepguard` command."""

from __future__ import annotations

from pathlib import Path

import typer

from stepguard.cli import (
    admin_cmd,
    api_keys_cmd,
    policy_cmd,
    postgres_cmd,
    replay_cmd,
    report_cmd,
    server_cmd,
)
from stepguard.cli.output import console, fail_with_problems
from stepguard.config.load import load_config
from stepguard.core.errors import ConfigError

app = typer.Typer(
    help="Stepguard: step-up authentication for any web application.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
policy_cmd.app.command("replay")(replay_cmd.replay_cmd)
policy_cmd.app.command("versions")(admin_cmd.policy_versions)
policy_cmd.app.command("diff")(admin_cmd.policy_diff)
app.add_typer(policy_cmd.app, name="policy")
app.add_typer(report_cmd.app, name="report")


@app.callback()
def _quiet_logs() -> None:
    """Commands other than `serve` and `demo` log only warnings (their output is for people)."""
    from stepguard.service.observe import configure_logging

    configure_logging(level="warning", json=False)


config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
server_cmd.register(app)
app.add_typer(api_keys_cmd.app, name="api-keys")
app.add_typer(postgres_cmd.app, name="postgres")
app.command("db-login")(postgres_cmd.db_login)


@config_app.command("validate")
def config_validate(file: Path = typer.Argument(Path("stepguard.yaml"))) -> None:
    """Check a server config and its policy; print every problem and exit 2 if there is any."""
    try:
        loaded = load_config(file)
    except ConfigError as exc:
        fail_with_problems(exc, str(file))
    console.print(f"{file}: valid (policy {loaded.policy_path}: {len(loaded.policy.rules)} rules)")


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) generated from the schema."""
    from stepguard.config.reference import reference_markdown

    print(reference_markdown(), end="")


@app.command("demo")
def demo(
    data: Path = typer.Option(Path("data"), help="folder for the SQLite store and config"),
    port: int = 9091,
    idp: bool = typer.Option(False, "--idp", help="also start the bundled OpenID provider "
                                                  "and offer sign-in with it"),
) -> None:
    """Run Acme Bank behind the gateway on 127.0.0.1 with seeded users."""
    from stepguard.demo.run import run

    run(data, port, idp=idp)


@app.command("demo-code")
def demo_code(
    username: str = typer.Argument(..., help="a seeded demo user (alice, bob)"),
    data: Path = typer.Option(Path("data"), help="the demo's data folder"),
) -> None:
    """Print a demo user's current authenticator code and how long it stays valid."""
    from stepguard.demo.run import current_code

    print(current_code(data, username))


if __name__ == "__main__":
    app()
