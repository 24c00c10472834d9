"""Requirements and decisions: what a rule asks for, and what the core answers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stepguard.core.levels import Level


class Outcome(str, Enum):
    ALLOW = "allow"
    STEP_UP = "step_up"
    DENY = "deny"


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """What a request needs: level, freshness, methods, scope, single use, binding, reason."""

    level: Level = Level.AAL1
    max_age: float | None = None  # seconds; None = any age within the session lifetime
    methods: frozenset[str] = frozenset()  # empty = any factor that reaches the level
    scope: str | None = None  # None = session-wide (events suffice); set = a grant is needed
    single_use: bool = False
    bind: tuple[str, ...] = ()
    reason: str = ""  # template, rendered by core.reason (the default language's text)
    # `reason` per language, when the policy gives a mapping: ((language, template), ...)
    reason_texts: tuple[tuple[str, str], ...] = ()
    via: str = ""  # where to step up: "local", "idp"; "" = as the identity provider says

    @property
    def needs_grant(self) -> bool:
        """Whether only a grant (not the session's authentication events) can satisfy this."""
        return self.scope is not None or self.single_use or bool(self.bind) or self.max_age == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The core's answer: an outcome with the matched rule and plain-language reasons.

    For a step-up, `requirement` says what is needed and `scope`/`binding` name the grant the
    challenge must produce. For an allow that spends a single-use grant, `consume_grant` names it:
    the caller must consume it atomically and step up again if that fails.
    """

    outcome: Outcome
    rule: str
    reasons: tuple[str, ...] = ()
    # The rule's own reason (reasons[0]) rendered in each language the policy gives it in.
    reason_texts: tuple[tuple[str, str], ...] = ()
    requirement: Requirement | None = None
    scope: str = ""
    binding: str = ""
    bound_values: tuple[tuple[str, str], ...] = ()
    consume_grant: str = ""
    login: bool = False  # the step-up is a first sign-in (no session)
    grant_id: str = ""  # the grant that satisfied the requirement, if any
    level: Level = Level.AAL0  # the session level that satisfied the requirement
    # Report (shadow) mode: what the policy in report mode would have decided, when that differs
    # from this (enforced) decision. The request gets this decision; the shadow is only recorded.
    shadow: Decision | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW
