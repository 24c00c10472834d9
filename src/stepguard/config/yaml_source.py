"""YAML with positions: parse a file into plain data plus a map from data path to line/column.

Also resolves secrets in configuration values: `${NAME}` (or `${NAME:-default}`) from the
environment, and a whole value of `file:/path/to/secret` read from that file. Every problem is
collected with its path; nothing is returned half-resolved.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stepguard.core.errors import ConfigError, Problem

DataPath = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Source:
    """A parsed YAML document with the position of every node (1-based line and column)."""

    file: str
    data: Any
    positions: dict[DataPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: DataPath) -> tuple[int, int] | None:
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get(())

    def problem(self, path: DataPath, message: str) -> Problem:
        where = self.locate(path)
        return Problem(self.file, render_path(path), message, *(where or (None, None)))


def render_path(path: DataPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_source(path: str | Path, *, text: str | None = None) -> Source:
    """Parse a YAML file; raise ConfigError naming the file, line and column on bad YAML."""
    name = str(path)
    try:
        content = Path(path).read_text(encoding="utf-8") if text is None else text
    except OSError as exc:
        raise ConfigError([Problem(name, "", f"cannot read file: {exc.strerror}")]) from exc
    try:
        node = yaml.compose(content, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(name, exc)]) from exc
    source = Source(name, None)
    source.data = _build(node, (), source.positions) if node is not None else None
    return source


def _yaml_problem(name: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    detail = getattr(exc, "problem", None) or str(exc)
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    return Problem(name, "", f"invalid YAML: {detail}", line, column)


def _build(node: yaml.Node, path: DataPath, positions: dict[DataPath, tuple[int, int]]) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader("").construct_object(key_node)
            result[key] = _build(value_node, (*path, str(key)), positions)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), positions) for i, item in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node)


def resolve_secrets(
    source: Source, *, environ: Mapping[str, str] | None = None, base: Path | None = None
) -> list[Problem]:
    """Replace `${ENV}` and `file:` values in place; return the problems found."""
    env = os.environ if environ is None else environ
    problems: list[Problem] = []
    source.data = _resolve(source.data, (), source, env, base, problems)
    return problems


def _resolve(
    value: Any,
    path: DataPath,
    source: Source,
    env: Mapping[str, str],
    base: Path | None,
    problems: list[Problem],
) -> Any:
    if isinstance(value, dict):
        return {
            k: _resolve(v, (*path, str(k)), source, env, base, problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve(v, (*path, i), source, env, base, problems) for i, v in enumerate(value)]
    if isinstance(value, str):
        return _resolve_text(value, path, source, env, base, problems)
    return value


def _resolve_text(
    text: str,
    path: DataPath,
    source: Source,
    env: Mapping[str, str],
    base: Path | None,
    problems: list[Problem],
) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(source.problem(path, f"environment variable {name} is not set"))
        return ""

    text = _ENV.sub(substitute, text)
    if not text.startswith("file:"):
        return text
    file = Path(text[5:])
    if not file.is_absolute() and base is not None:
        file = base / file
    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(source.problem(path, f"cannot read secret file {file}: {exc.strerror}"))
        return ""
