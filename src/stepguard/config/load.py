"""Load configuration and policy files, collecting every problem before refusing to start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stepguard.config.schema import StepguardConfig
from stepguard.config.yaml_source import DataPath, Source, read_source, resolve_secrets
from stepguard.core.errors import ConfigError, PolicyError, Problem
from stepguard.core.policy import Policy, compile_policy


def load_policy(path: str | Path, *, text: str | None = None) -> Policy:
    """Compile a policy file; raise PolicyError listing every problem."""
    try:
        source = read_source(path, text=text)
    except PolicyError:
        raise
    except ConfigError as exc:  # unreadable file or bad YAML: still a policy problem
        raise PolicyError(exc.problems) from exc
    return compile_policy(source.data, source=str(path), locate=source.locate)


@dataclass(frozen=True)
class Loaded:
    """A validated configuration with its compiled policy and where they came from."""

    config: StepguardConfig
    policy: Policy
    path: Path
    policy_path: Path


def load_config(path: str | Path, *, environ: dict[str, str] | None = None) -> Loaded:
    """Load the server config and its policy; raise ConfigError with every problem of both."""
    file = Path(path)
    source = read_source(file)
    problems = resolve_secrets(source, environ=environ, base=file.parent)
    config = _validate(source, problems)
    policy_path = file.parent / (config.policy if config else "policy.yaml")
    policy = _policy(policy_path, problems)
    if problems or config is None or policy is None:
        raise ConfigError(problems)
    return Loaded(config, policy, file, policy_path)


def _validate(source: Source, problems: list[Problem]) -> StepguardConfig | None:
    data: Any = source.data if source.data is not None else {}
    try:
        return StepguardConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problem(source, error) for error in exc.errors())
        return None


def _problem(source: Source, error: Any) -> Problem:
    path: DataPath = tuple(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field {path[-1]!r}"
    elif error["type"] == "missing":
        message = "this field is required"
    elif path[:1] == ("secrets",):
        pass  # never echo a secret value back
    elif error.get("input") is not None and error["type"] not in ("value_error",):
        message = f"{message} (got {error['input']!r})"
    return source.problem(path, message.removeprefix("Value error, "))


def _policy(path: Path, problems: list[Problem]) -> Policy | None:
    try:
        return load_policy(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
