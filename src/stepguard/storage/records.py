"""What is stored: users, factors, recovery codes, sessions, challenges, grants, throttle state.

Records are frozen values with keyword-only constructors. Times are float epoch seconds supplied by
the caller: storage never reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from stepguard.core.context import AuthEvent, SessionState, Subject
from stepguard.core.decision import Requirement
from stepguard.core.grant import Grant
from stepguard.core.risk import RiskHistory
from stepguard.core.throttle import ThrottleState

FactorKind = Literal["password", "totp", "webauthn", "recovery", "push"]
ChallengeStatus = Literal["pending", "passed", "sent", "abandoned", "expired"]

FACTOR_KINDS: frozenset[str] = frozenset({"password", "totp", "webauthn", "recovery", "push"})
HELD_BODY_LIMIT = 64 * 1024  # bytes of a held request body a challenge may keep
SESSION_EVENT_LIMIT = 64  # newest authentication events kept per session

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    """One user account. `password_hash` is an argon2id PHC string ("" = no password)."""

    id: str
    username: str
    display_name: str = ""
    email: str = ""
    groups: frozenset[str] = frozenset()
    password_hash: str = ""
    disabled: bool = False
    created: float

    def subject(self) -> Subject:
        """The user as the decision core sees it."""
        return Subject(
            id=self.id,
            name=self.display_name or self.username,
            email=self.email,
            groups=self.groups,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FactorRecord:
    """One registered factor. `secret` is the sealed TOTP seed ("" for other kinds)."""

    id: str
    user_id: str
    kind: FactorKind
    label: str = ""
    created: float
    last_used: float | None = None
    secret: str = ""
    credential_id: bytes = b""
    public_key: bytes = b""
    sign_count: int = 0
    last_step: int | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if self.kind not in FACTOR_KINDS:
            raise ValueError(f"unknown factor kind {self.kind!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryCodeRecord:
    """One recovery code of a user's current set, stored only as its hash."""

    user_id: str
    code_hash: str
    created: float
    used_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """One signed-in browser or client; the token itself is never stored, only its hash."""

    id: str
    token_hash: str
    user_id: str
    created: float
    last_seen: float
    ip: str = ""
    user_agent: str = ""
    revoked_at: float | None = None
    device_id: str = ""
    events: tuple[AuthEvent, ...] = ()

    def state(self, subject: Subject) -> SessionState:
        """The session as the decision core sees it."""
        return SessionState(
            id=self.id,
            subject=subject,
            created=self.created,
            last_seen=self.last_seen,
            ip=self.ip,
            user_agent=self.user_agent,
            events=self.events,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Versions:
    """A session's and its user's cache versions, and when the session was last seen.

    A cached copy of a session is valid while both versions are unchanged (see `tables`)."""

    session: int
    user: int
    last_seen: float

    @property
    def pair(self) -> tuple[int, int]:
        return (self.session, self.user)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSnapshot:
    """Everything a decision reads about one live session, read in one consistent statement."""

    record: SessionRecord
    user: UserRecord
    grants: tuple[Grant, ...]
    history: RiskHistory
    versions: Versions


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeRecord:
    """A pending step-up with the request it holds (method, headers, bounded body).

    `ceremony` is the factor's single-use in-flight state (WebAuthn challenge, push request),
    read and cleared at once with `Challenges.take_ceremony`.
    """

    id: str
    user_id: str | None
    session_id: str | None
    requirement: Requirement
    reasons: tuple[str, ...] = ()
    # The rule's reason (reasons[0]) per language, when the policy gives it in several.
    reason_texts: tuple[tuple[str, str], ...] = ()
    rule: str = ""
    login: bool = False
    scope: str = ""
    binding: str = ""
    bound_values: tuple[tuple[str, str], ...] = ()
    return_url: str = ""
    held_method: str = "GET"
    held_headers: tuple[tuple[str, str], ...] = ()
    held_body: bytes = b""
    created: float
    expires: float
    attempts: int = 0
    status: ChallengeStatus = "pending"
    ceremony: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.held_body) > HELD_BODY_LIMIT:
            raise ValueError(f"held request body exceeds {HELD_BODY_LIMIT} bytes")


PushStatus = Literal["pending", "approved", "denied"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRecord:
    """One push approval request for a challenge, and where it came from.

    `number` is shown on the requesting screen, `options` on the approving device; `nonce` and
    `digest` are signed by the device with its answer. `client_ip`, `user_agent` and `location`
    describe the requesting browser for the approval screen. `device_id` is the push device
    (factor id) that answered.
    """

    id: str
    challenge_id: str
    user_id: str
    requesting_session_id: str
    number: int
    options: tuple[int, ...]
    nonce: str
    digest: str
    created: float
    expires: float
    status: PushStatus = "pending"
    answered_at: float | None = None
    device_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    location: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRecord:
    """A stored grant and, for a single-use grant, when it was consumed."""

    grant: Grant
    consumed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Reserved:
    """One attempt counted under `key` before it was verified (`Throttle.reserve`).

    `prior` is the key's state just before; `consecutive` the count this attempt made it.
    `Throttle.release` gives the attempt back (a success on a shared key).
    """

    key: str
    prior: ThrottleState
    consecutive: int

    @classmethod
    def counted(cls, key: str, consecutive: int, *, locked_until: float,
                hard_locked: bool) -> Reserved:
        """From the new count and the lock the key had before (count 1: it had none)."""
        prior = (ThrottleState() if consecutive == 1 else ThrottleState(
            consecutive=consecutive - 1, locked_until=locked_until, hard_locked=hard_locked))
        return cls(key, prior, consecutive)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyRecord:
    """One API client: its key id, name and the SHA-256 (hex) of its secret, never the secret."""

    id: str
    name: str
    secret_hash: str
    created: float
    previous_hash: str | None = None
    previous_until: float | None = None
    rotated_at: float | None = None
    revoked_at: float | None = None
    last_used: float | None = None
