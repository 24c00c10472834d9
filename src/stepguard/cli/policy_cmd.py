"""`stepguard policy validate | explain | test`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml

from stepguard.cli.output import (
    console,
    errors,
    fail_with_problems,
    print_explanation,
)
from stepguard.config.cases import FIXED_NOW, CaseError, build_case
from stepguard.config.load import load_policy
from stepguard.config.policy_tests import run_policy_tests
from stepguard.core.decide import explain
from stepguard.core.errors import BadRequest, ConfigError

app = typer.Typer(help="Check, explain and test policy files.", no_args_is_help=True)


@app.command("validate")
def validate(file: Path) -> None:
    """Check a policy file; print every problem and exit 2 if there is any."""
    try:
        policy = load_policy(file)
    except ConfigError as exc:
        fail_with_problems(exc, str(file))
    console.print(f"{file}: valid — {len(policy.rules)} rules, {len(policy.networks)} networks")


@app.command("explain")
def explain_cmd(
    file: Path,
    request: str = typer.Option("null", help='JSON: {"method":"POST","host":"…","path":"…",…}'),
    call: str = typer.Option("null", help='an agent\'s MCP tool call instead of a request, JSON: '
                             '{"server":"bank","tool":"transfer","arguments":{…}}'),
    session: str = typer.Option("null", help='JSON: {"user":"alice","level":"aal2","age":"3m"}'),
    risk: str = typer.Option("null", help='JSON: {"signals":["new_device"]} or {"score":70}'),
    grants: str = typer.Option("[]", help="JSON list of grants held by the session"),
) -> None:
    """Show which rules were looked at, which matched, why, and the decision — for a web
    request (--request) or an agent's MCP tool call (--call)."""
    try:
        policy = load_policy(file)
    except ConfigError as exc:
        fail_with_problems(exc, str(file))
    spec = {
        "request": _json(request, "--request"),
        "risk": _json(risk, "--risk"),
        "grants": _json(grants, "--grants"),
    }
    if call != "null":  # a call's session is an agent unless --session says otherwise
        spec["call"] = _json(call, "--call")
    if call == "null" or session != "null":
        spec["session"] = _json(session, "--session")
    if spec.get("call") is None and spec["request"] is None:
        errors.print("give --request (a web request) or --call (an agent's tool call)")
        raise typer.Exit(2)
    try:
        case = build_case(spec, now=FIXED_NOW)
    except BadRequest as exc:
        console.print(f"[bold]Decision:[/] 400 Bad Request — {exc}")
        raise typer.Exit(0) from exc
    except (CaseError, ValueError) as exc:
        errors.print(f"invalid input: {exc}")
        raise typer.Exit(2) from exc
    print_explanation(explain(policy, case.request, case.session, case.risk, case.grants, case.now))


@app.command("test")
def test_cmd(file: Path) -> None:
    """Run a YAML file of policy test cases; exit 1 if any case fails, 2 if invalid."""
    try:
        report = run_policy_tests(file)
    except ConfigError as exc:
        fail_with_problems(exc, str(file))
    for result in report.results:
        mark = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        console.print(f"{mark} {result.name}")
        if not result.passed:
            console.print(f"     {result.detail}", markup=False)
    console.print(f"{report.passed} passed, {report.failed} failed")
    if report.failed:
        raise typer.Exit(1)


def _json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            errors.print(f"{option}: expected JSON ({exc.msg} at column {exc.colno})")
            raise typer.Exit(2) from exc
