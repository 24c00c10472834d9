"""An agent's MCP tool call as the core sees it: one canonical reading, or `BadRequest`.

The MCP door (`adapters/mcp.py`) decides on exactly the bytes it forwards: it parses the
JSON-RPC message once (`canonical.loads_json`: duplicate keys, compared case-folded, are refused
at every level), checks the call here, and sends the upstream the canonical serialisation of
what it decided on. What could be read two ways is refused rather than guessed:

- a tool name outside the MCP naming rule (`[A-Za-z0-9_.-]{1,128}`);
- argument names that are not printable ASCII (so `ａmount` or a Cyrillic `аmount` cannot pose
  as `amount` to a reader that normalises), and two names that flatten alike (`{"to.iban": …}`
  beside `{"to": {"iban": …}}`);
- strings with control or format characters (bidi overrides, zero-width joiners: the step-up
  page would show another text than the tool receives) or not in Unicode NFC (`é` composed
  and decomposed would compare unequal in the policy but alike in many tools);
- numbers that are not finite, and nesting deeper than `MAX_DEPTH`.

The grant a human gives is bound to `call_digest`: server, tool, the digest of the tool's
definition as the upstream listed it (name, description, schemas: a tool re-described after the
approval is another tool), and every argument, in canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stepguard.core.context import RequestContext
from stepguard.core.errors import BadRequest

__all__ = ["MAX_DEPTH", "ToolCall", "call_context", "call_digest", "canonical_json",
           "check_arguments", "definition_digest", "flatten_arguments", "tool_call"]

MAX_DEPTH = 16
CALL_METHOD = "CALL"  # the context's method for a tool call (rules on HTTP methods never see it)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_ARG_NAME = re.compile(r"[!-~]{1,128}")
_TEXT_CONTROLS = frozenset("\t\n\r")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One `tools/call`: the configured server's name, the tool and its checked arguments."""

    server: str
    tool: str
    arguments: Mapping[str, Any]


def tool_call(server: str, params: Any) -> ToolCall:
    """The call in a `tools/call` request's `params`; `BadRequest` for anything ambiguous."""
    if not isinstance(params, Mapping):
        raise BadRequest("tools/call needs params with a tool name")
    name = params.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise BadRequest("the tool name must be 1-128 letters, digits, '_', '-' or '.'")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise BadRequest("tool arguments must be a JSON object")
    return ToolCall(server, name, check_arguments(arguments))


def check_arguments(arguments: Mapping[str, Any]) -> Mapping[str, Any]:
    """The arguments unchanged when every name and value has one reading; else `BadRequest`."""
    _check_value(arguments, 0, "arguments")
    flatten_arguments(arguments)  # refuses names that flatten alike
    return arguments


def _check_value(value: Any, depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"tool arguments nest deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not _ARG_NAME.fullmatch(key):
                raise BadRequest(f"argument names must be 1-128 printable ASCII characters "
                                 f"(in {where})")
            _check_value(item, depth + 1, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1, where)
    elif isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{where} is not a finite number")


def _check_text(text: str, where: str) -> None:
    if not text.isascii():
        if unicodedata.normalize("NFC", text) != text:
            raise BadRequest(f"{where} is not in Unicode NFC form")
        if any(unicodedata.category(c) in ("Cf", "Co", "Cs") for c in text):
            raise BadRequest(f"{where} holds invisible format characters")
    if any((c < " " and c not in _TEXT_CONTROLS) or "\x7f" <= c <= "\x9f" for c in text):
        raise BadRequest(f"{where} holds control characters")


def flatten_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes for the policy: `args.<name>`, nested objects as `args.a.b`; lists as
    tuples. Two names that flatten alike raise `BadRequest`."""
    flat: dict[str, Any] = {}
    _flatten(arguments, "args", flat, set())
    return flat


def _flatten(value: Mapping[str, Any], prefix: str, flat: dict[str, Any],
             objects: set[str]) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if name in flat or name in objects:
            raise BadRequest(f"the argument {name[5:]!r} is given twice (dotted and nested)")
        if isinstance(item, Mapping):
            objects.add(name)
            _flatten(item, name, flat, objects)
        else:
            flat[name] = tuple(item) if isinstance(item, list) else item


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text: one serialisation per parsed value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def definition_digest(definition: Mapping[str, Any] | None) -> str:
    """SHA-256 of a tool's definition as listed by its server (name, description, schemas,
    annotations); "unlisted" when the server does not list the tool."""
    if definition is None:
        return "unlisted"
    return hashlib.sha256(canonical_json(definition).encode("utf-8")).hexdigest()


def call_digest(call: ToolCall, *, definition: str) -> str:
    """What a human approves: server, tool, the tool definition's digest and every argument."""
    payload = canonical_json({"door": "mcp", "server": call.server, "tool": call.tool,
                              "definition": definition, "arguments": call.arguments})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def call_context(call: ToolCall, *, client_ip: str = "", user_agent: str = "",
                 digest: str = "") -> RequestContext:
    """The request context of a tool call: `host` is the server's configured name, `action` the
    tool, `path` `/<server>/<tool>`, attributes the flattened arguments."""
    return RequestContext(
        method=CALL_METHOD, host=call.server, path=f"/{call.server}/{call.tool}", scheme="mcp",
        client_ip=client_ip, user_agent=user_agent, action=call.tool,
        attributes=flatten_arguments(call.arguments), door="mcp", call_digest=digest)
