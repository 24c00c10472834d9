"""Reason templates: plain-language text with `{name}` placeholders, rendered safely.

A template such as ``"Approve a transfer of {amount} to {payee}"`` names values by a flat key
(``amount``, ``risk.reasons``); nothing else is allowed inside braces: no format specs, no
conversions, no indexing, no positional fields, and no attribute access on Python objects (a
dotted name is just a key). ``{{`` and ``}}`` are literal braces. The policy loader calls
`check_template` once; `render` never raises on user data.

How values render:

- missing or ``None`` -> ``(not given)``; an empty string or list -> ``(none)``;
- ``True``/``False`` -> ``yes``/``no``;
- numbers are never rounded (a user approving a transfer must see exactly what is bound):
  integers plainly, whole floats without a decimal point (``1200.0`` -> ``1200``), other floats in
  their shortest exact decimal form without an exponent (``1200.5``, ``0.0000001``), ``Decimal``
  as written (``Decimal("1200.50")`` -> ``1200.50``); a string such as ``"1200.50"`` as sent;
- lists, tuples and sets are joined with ``", "`` (``risk.reasons`` with ``"; "``; sets sorted);
- control and format characters (ANSI escapes' ESC, bidi overrides, zero-width marks) are
  removed, line breaks and tabs become spaces;
- each value is cut at 200 characters, followed by ``…``.

HTML escaping is the template engine's job, not this module's.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from stepguard.core.context import RequestContext
    from stepguard.core.risk import RiskAssessment

__all__ = ["NOT_GIVEN", "REASON_NAMES", "VALUE_LIMIT", "check_template", "reason_values", "render"]

NOT_GIVEN: Final = "(not given)"
NONE: Final = "(none)"
VALUE_LIMIT: Final = 200
_UNPRINTABLE: Final = "(unprintable)"

REASON_NAMES: Final = frozenset(
    {
        "request.method",
        "request.host",
        "request.path",
        "request.scheme",
        "request.ip",
        "request.user_agent",
        "request.device",
        "request.action",
        "risk.reasons",
        "risk.level",
        "risk.score",
        "sql.database",
        "sql.kind",
        "sql.tables",
    }
)
"""Built-in placeholder names (besides the policy's attributes). `request.query` is left out on
purpose: query strings often carry tokens, and reasons are shown to users and written to the
audit ledger."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SPACES = frozenset("\t\n\r\v\f\x85\u2028\u2029")


# --------------------------------------------------------------------------- parsing


_Segment = tuple[bool, str, int]  # (is_placeholder, text or name, index in the template)


@lru_cache(maxsize=1024)
def _parse(template: str) -> tuple[tuple[_Segment, ...], tuple[tuple[int, str], ...]]:
    """Segments to render and problems found, each as (0-based index, message)."""
    segments: list[_Segment] = []
    problems: list[tuple[int, str]] = []
    text: list[str] = []
    index = 0
    while index < len(template):
        char = template[index]
        if template.startswith(("{{", "}}"), index):
            text.append(char)
            index += 2
        elif char == "}":
            problems.append((index, "a single '}' (write '}}' for a literal brace)"))
            text.append(char)
            index += 1
        elif char == "{":
            index = _placeholder(template, index, segments, problems, text)
        else:
            text.append(char)
            index += 1
    if text:
        segments.append((False, "".join(text), index))
    return tuple(segments), tuple(problems)


def _placeholder(
    template: str,
    start: int,
    segments: list[_Segment],
    problems: list[tuple[int, str]],
    text: list[str],
) -> int:
    """Handle the `{` at `start`; return the index after what it consumed."""
    close = template.find("}", start + 1)
    reopen = template.find("{", start + 1)
    if close < 0 or 0 <= reopen < close:
        problems.append((start, "an unclosed '{' (write '{{' for a literal brace)"))
        text.append("{")
        return start + 1
    inner = template[start + 1 : close]
    problem = _placeholder_problem(inner)
    if problem:
        problems.append((start, problem))
        text.append(template[start : close + 1])
    else:
        if text:
            segments.append((False, "".join(text), start))
            text.clear()
        segments.append((True, inner, start))
    return close + 1


def _placeholder_problem(inner: str) -> str | None:
    shown = "{" + _shorten(inner) + "}"
    if not inner:
        return "an empty placeholder {} (write '{{}}' for literal braces)"
    if ":" in inner:
        return f"{shown}: format specs are not allowed; write just {{name}}"
    if "!" in inner:
        return f"{shown}: conversions such as !r are not allowed; write just {{name}}"
    if "[" in inner or "]" in inner:
        return f"{shown}: indexing is not allowed; write just {{name}}"
    if inner.isdigit():
        return f"{shown}: positional placeholders are not allowed; use a name"
    if not _NAME.fullmatch(inner):
        return f"{shown} is not a name (expected letters, digits, '_' and '.')"
    return None


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_template(template: str, *, known: Iterable[str]) -> list[str]:
    """Every problem in a reason template: unbalanced braces, bad or unknown placeholders."""
    segments, problems = _parse(template)
    messages = [f"{message} at column {index + 1}" for index, message in problems]
    names = set(known)
    for is_name, value, index in segments:
        if is_name and value not in names:
            close = difflib.get_close_matches(value, sorted(names), n=1, cutoff=0.6)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            messages.append(f"unknown placeholder {{{value}}} at column {index + 1}{hint}")
    return messages


# --------------------------------------------------------------------------- rendering


def render(template: str, values: Mapping[str, object]) -> str:
    """The template with each `{name}` replaced by its value, rendered as the module says."""
    segments, _ = _parse(template)
    return "".join(_value(values, text) if is_name else text for is_name, text, _ in segments)


def _value(values: Mapping[str, object], name: str) -> str:
    try:
        value = values.get(name)
        if value is None:
            return NOT_GIVEN
        return _limit(_plain(value, "; " if name == "risk.reasons" else ", ")) or NONE
    except Exception:  # noqa: BLE001 - rendering never fails on user data
        return _UNPRINTABLE


def _plain(value: object, separator: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else _float(float(value))
    if isinstance(value, bytes):
        return value[: VALUE_LIMIT * 4].decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return _join(sorted(_plain(item, ", ") for item in value), separator)
    if isinstance(value, list | tuple):
        return _join((_plain(item, ", ") for item in value), separator)
    return str(value)


def _float(value: float) -> str:
    if math.isnan(value):
        return "(not a number)"
    if math.isinf(value):
        return "infinity" if value > 0 else "-infinity"
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _join(items: Iterable[str], separator: str) -> str:
    """Join items, stopping once the text is longer than any value may be shown."""
    parts: list[str] = []
    length = 0
    for item in items:
        parts.append(item)
        length += len(item) + len(separator)
        if length > VALUE_LIMIT * 4:
            break
    return separator.join(parts)


def _limit(text: str) -> str:
    """Control characters removed, at most VALUE_LIMIT characters, then `…` if cut."""
    raw_limit = VALUE_LIMIT * 4
    cleaned = _clean(text[:raw_limit])
    if len(text) > raw_limit or len(cleaned) > VALUE_LIMIT:
        return cleaned[:VALUE_LIMIT] + "…"
    return cleaned


def _clean(text: str) -> str:
    if text.isprintable():
        return text
    chars = []
    for char in text:
        if char in _SPACES:
            chars.append(" ")
        elif unicodedata.category(char) not in ("Cc", "Cf", "Cs"):
            chars.append(char)
    return "".join(chars)


def reason_values(*, context: RequestContext, risk: RiskAssessment) -> dict[str, object]:
    """The flat mapping templates read: the request's attributes plus the built-in names."""
    values: dict[str, object] = {
        key: value for key, value in context.attributes.items() if isinstance(key, str)
    }
    values.update(
        {
            "request.method": context.method,
            "request.host": context.host,
            "request.path": context.path,
            "request.scheme": context.scheme,
            "request.ip": context.client_ip,
            "request.user_agent": context.user_agent,
            "request.device": context.device_id,
            "request.action": context.action,
            "risk.reasons": risk.reasons,
            "risk.level": risk.level,
            "risk.score": risk.score,
        }
    )
    facts = context.statement  # the postgres door's statement; empty for the other doors
    values.update({f"sql.{k}": facts.get(k, "") for k in ("database", "kind", "tables")})
    return values
