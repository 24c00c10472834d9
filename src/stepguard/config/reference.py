"""Generate the configuration reference (docs/configuration.md) from the schema itself."""

from __future__ import annotations

from typing import Any, get_type_hints

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from stepguard.config.schema import StepguardConfig

HEADER = """# Configuration reference

Generated from `stepguard.config.schema` by `stepguard config reference`; do not edit by hand
(a test fails when this file and the schema disagree). Every default lives in the schema.
Values may use `${ENV_VAR}` (or `${ENV_VAR:-default}`) and a whole value of `file:/path` reads a
secret from a file. `stepguard config validate FILE` reports every problem at once, with the file,
the path inside it and the line.

"""


def reference_markdown() -> str:
    lines = [HEADER]
    _section(StepguardConfig, "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _section(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    rows, nested = [], []
    hints = get_type_hints(model)
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _model_of(hints.get(name, info.annotation))
        if sub is not None:
            nested.append((path, sub))
            continue
        rows.append(f"| `{path}` | {_type(info)} | {_default(info)} | {info.description or ''} |")
    if rows:
        lines.append(f"## `{prefix.rstrip('.') or 'top level'}`\n")
        lines.append("| setting | type | default | meaning |")
        lines.append("|---|---|---|---|")
        lines.extend(rows)
        lines.append("")
    for path, sub in nested:
        _section(sub, f"{path}.", lines)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = getattr(annotation, "__args__", ())
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    if "parse_duration" in text or any("parse_duration" in repr(m) for m in info.metadata):
        text = "duration or null" if "None" in text or "Optional" in text else "duration"
    return f"`{text}`".replace("|", "\\|")


def _default(info: FieldInfo) -> str:
    value: Any = info.get_default(call_default_factory=True)
    return f"`{value!r}`".replace("|", "\\|")
