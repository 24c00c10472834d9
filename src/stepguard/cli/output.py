"""Shared console output: problems reports and decisions, with rich."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from stepguard.core.decide import Explanation
from stepguard.core.decision import Decision
from stepguard.core.durations import format_duration
from stepguard.core.errors import ConfigError

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

EXIT_INVALID = 2


def fail_with_problems(exc: ConfigError, what: str) -> NoReturn:
    """Print every problem, one per line, and exit with code 2."""
    count = len(exc.problems)
    errors.print(f"[bold red]{what} is invalid[/]: {count} problem{'s' if count != 1 else ''}")
    for problem in exc.problems:
        errors.print(f"  - {problem}", markup=False)
    raise typer.Exit(EXIT_INVALID)


def decision_line(decision: Decision) -> str:
    text = f"{decision.outcome.value.upper()} (rule {decision.rule})"
    requirement = decision.requirement
    if requirement is not None and not decision.allowed:
        parts = [requirement.level.label]
        if requirement.max_age is not None:
            parts.append(f"max_age {format_duration(requirement.max_age)}")
        if requirement.methods:
            parts.append("methods " + ",".join(sorted(requirement.methods)))
        if requirement.single_use:
            parts.append("single use")
        if decision.bound_values:
            parts.append("bound to " + ", ".join(f"{k}={v}" for k, v in decision.bound_values))
        parts.append(f"scope {decision.scope}")
        text += " needs " + "; ".join(parts)
    if decision.login:
        text += " [sign-in]"
    return text


def print_explanation(explanation: Explanation) -> None:
    table = Table(title="Rules", show_lines=False)
    table.add_column("rule")
    table.add_column("looked at")
    table.add_column("matched")
    table.add_column("why")
    for step in explanation.trace:
        table.add_row(
            step.rule,
            "yes" if step.looked_at else "no",
            "[green]yes[/]" if step.matched else "no",
            step.why,
        )
    console.print(table)
    print_decision(explanation.decision)


def print_decision(decision: Decision) -> None:
    console.print(f"[bold]Decision:[/] {decision_line(decision)}", markup=True)
    for reason in decision.reasons:
        console.print(f"  - {reason}", markup=False)
    if decision.shadow is not None:
        console.print(f"[bold]Report mode would:[/] {decision_line(decision.shadow)}", markup=True)
        for reason in decision.shadow.reasons:
            console.print(f"  - {reason}", markup=False)
