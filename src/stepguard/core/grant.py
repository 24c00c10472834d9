"""Grants: the result of a passed challenge, bounded in time, scope and (optionally) use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stepguard.core.levels import Level


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """A step-up that passed: covers one scope for one subject and session until it expires."""

    id: str
    subject_id: str
    session_id: str
    scope: str
    level: Level
    amr: tuple[str, ...]
    granted_at: float
    expires_at: float
    single_use: bool = False
    binding: str = ""  # hex SHA-256 of the bound transaction, "" when unbound
    factor: str = ""


def binding_digest(
    *, method: str, path: str, fields: Iterable[str], attributes: Mapping[str, Any]
) -> str:
    """SHA-256 over method, canonical path and the named attributes, in a canonical JSON form.

    A missing attribute is bound as null, so `{}` and `{"amount": null}` bind alike, and a
    request that later adds the attribute no longer matches.
    """
    bound = {name: _canonical_value(attributes.get(name)) for name in sorted(set(fields))}
    payload = json.dumps(
        {"m": method.upper(), "p": path, "a": bound},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _canonical_value(value: Any) -> Any:
    """Numbers compare by value (1000 == 1000.0 == "1000"), everything else as text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return _number_text(float(value))
    text = str(value).strip()
    try:
        return _number_text(float(text))
    except ValueError:
        return text


def _number_text(number: float) -> str:
    return str(int(number)) if number.is_integer() else repr(number)
