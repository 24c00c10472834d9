"""Who is asking and what for: request context, subject, session state, authentication events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from stepguard.core.levels import Level

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request, already canonical (see `core.canonical`)."""

    method: str
    host: str
    path: str
    scheme: str = "https"
    query: str = ""
    client_ip: str = ""
    user_agent: str = ""
    device_id: str = ""
    action: str = ""
    attributes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    door: str = "http"  # which door built it: "http", or "mcp" for an agent's tool call
    # A digest of exactly what the door will execute (an MCP tool call: server, tool, its
    # definition and every argument); when set, every grant for this request is bound to it.
    call_digest: str = ""
    statement: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # SQL facts (postgres)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """The user."""

    id: str
    name: str = ""
    email: str = ""
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthEvent:
    """One successful authentication within a session: factor, amr values, level, time."""

    factor: str
    amr: tuple[str, ...]
    level: Level
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionState:
    """One signed-in browser or client, as the core sees it (no token, only facts)."""

    id: str
    subject: Subject
    created: float
    last_seen: float
    ip: str = ""
    user_agent: str = ""
    events: tuple[AuthEvent, ...] = ()

    def amr(self) -> tuple[str, ...]:
        """Distinct amr values of every event, in order of first appearance."""
        seen: dict[str, None] = {}
        for event in self.events:
            for value in event.amr:
                seen.setdefault(value, None)
        return tuple(seen)
