"""`stepguard policy replay NEW.yaml --since 7d`: what a candidate policy would have decided."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import typer

from stepguard.cli.output import errors, fail_with_problems
from stepguard.cli.server_cmd import CONFIG, load
from stepguard.config.load import load_policy
from stepguard.core.durations import parse_duration
from stepguard.core.errors import ConfigError

FORMATS = ("text", "json", "csv")


def replay_cmd(
    candidate: Path = typer.Argument(..., help="the candidate policy file"),
    config: Path = CONFIG,
    since: str = typer.Option("7d", help="how far back: a duration (7d, 12h) or an ISO time"),
    until: str = typer.Option("", help="end (exclusive): a duration ago or an ISO time; "
                                       "default now. Fix it for a repeatable report"),
    format: str = typer.Option("text", "--format", help="text, json or csv"),
    examples: int = typer.Option(3, min=0, max=100, help="examples per change"),
    jobs: int = typer.Option(1, min=1, max=64, help="processes (the period is sliced)"),
) -> None:
    """Replay the recorded decisions through a candidate policy; print, per rule, how many
    requests would change outcome (allow -> step_up, step_up -> allow, ...) with examples."""
    from stepguard.audit.commands import replay_store
    from stepguard.audit.replay import dumps, render_text
    from stepguard.service.runtime import store_url

    if format not in FORMATS:
        errors.print(f"--format: expected one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    try:
        load_policy(candidate)  # every problem now, before any process starts
    except ConfigError as exc:
        fail_with_problems(exc, str(candidate))
    now = time.time()
    start = moment(since, now, "--since")
    end = moment(until, now, "--until") if until else now
    report = replay_store(store_url(load(config)), candidate, since=start, until=end,
                          examples=examples, jobs=jobs)
    text = {"text": render_text, "json": dumps}.get(format)
    print(text(report) if text else report.csv(), end="")


def moment(text: str, now: float, option: str) -> float:
    """A duration means that long before `now`; otherwise an ISO 8601 time (UTC if no zone)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        errors.print(f"{option}: expected a duration such as 7d or an ISO time, got {text!r}")
        raise typer.Exit(2) from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
