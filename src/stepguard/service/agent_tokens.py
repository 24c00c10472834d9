"""Agent tokens: the credential an AI agent presents at the MCP door, on behalf of one user.

A token reads `sga_<id>_<secret>`: the id (64 bits, hex) finds the row, the secret (256 bits
from `secrets`) proves possession; only SHA-256(secret) is stored and the comparison is
constant-time (an unknown id costs the same comparison). A token is created by its user on the
account page after a fresh proof, shown once, and revocable there; it dies with its user
(disabled) and at its expiry. It is never a browser session: the portal reads only session
cookies, and a session token is never an agent token (another shape, another table).

To the policy an agent is a session of its user whose only authentication event is the token's
creation (aal1, factor `agent`): anything above that needs the human, through a step-up whose
grant is bound to the call (`service.stepup.AGENT_CALL`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from stepguard.core.context import AuthEvent
from stepguard.core.errors import StepguardError, VerificationFailed
from stepguard.core.levels import Level
from stepguard.service.guard import Loaded
from stepguard.service.runtime import Runtime
from stepguard.storage.agent_tokens import AgentTokenRecord
from stepguard.storage.records import SessionRecord, UserRecord

TOKEN_PREFIX = "sga"  # noqa: S105 - the token shape's prefix, not a secret
AGENT_FACTOR = "agent"
TOUCH_EVERY = 60.0
_TOKEN_SHAPE = re.compile(r"sga_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_DUMMY_HASH = hashlib.sha256(b"stepguard-no-such-agent-token").hexdigest()


class AgentTokenNotFound(StepguardError):
    """No live agent token of this user has this id."""


@dataclass(frozen=True)
class IssuedAgentToken:
    record: AgentTokenRecord
    token: str  # shown once, never stored


@dataclass(frozen=True)
class Agent:
    """An authenticated agent: its token's row and the user it acts for."""

    token: AgentTokenRecord
    user: UserRecord

    @property
    def session_id(self) -> str:
        """The agent's session as the policy and the grants know it."""
        return f"agent-{self.token.id}"

    def session(self, now: float, *, ip: str = "", user_agent: str = "") -> SessionRecord:
        event = AuthEvent(factor=AGENT_FACTOR, amr=(AGENT_FACTOR,), level=Level.AAL1,
                          at=self.token.created)
        return SessionRecord(id=self.session_id, token_hash="", user_id=self.user.id,
                             created=self.token.created, last_seen=now, ip=ip,
                             user_agent=user_agent[:512], events=(event,))


class AgentTokens:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.store = runtime.store.agent_tokens

    def create(self, user_id: str, name: str, *, ttl: float, by: str = "account") -> \
            IssuedAgentToken:
        name = name.strip()
        if not _NAME_SHAPE.fullmatch(name):
            raise ValueError("an agent name is 1-64 letters, digits, spaces, '.', '_' or '-'")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self.rt.now()
        record = AgentTokenRecord(id=token_id, user_id=user_id, name=name,
                                  secret_hash=_hash(secret), created=now, expires=now + ttl)
        self.store.add(record)
        self._audit("agent_token_created", record, by)
        return IssuedAgentToken(record, f"{TOKEN_PREFIX}_{token_id}_{secret}")

    def revoke(self, token_id: str, *, user_id: str | None, by: str = "account") -> None:
        record = self.store.get(token_id)
        if record is None or not self.store.revoke(token_id, user_id=user_id, now=self.rt.now()):
            raise AgentTokenNotFound("no live agent token with this id")
        self._audit("agent_token_revoked", record, by)

    def for_user(self, user_id: str) -> tuple[AgentTokenRecord, ...]:
        return self.store.for_user(user_id)

    def authenticate(self, presented: str | None) -> Agent:
        """The live agent a token proves; `VerificationFailed` (audited, without the token)."""
        match = _TOKEN_SHAPE.fullmatch(presented or "")
        token_id, secret = match.groups() if match else ("", "")
        record = self.store.get(token_id) if token_id else None
        now = self.rt.now()
        user = self.rt.store.users.get(record.user_id) if record is not None else None
        good = hmac.compare_digest(_hash(secret), record.secret_hash if record else _DUMMY_HASH)
        if record is None or user is None or not good or not record.live(now) or user.disabled:
            self.rt.record(kind="verification", factor=AGENT_FACTOR,
                           outcome="failed:" + ("invalid" if match else "malformed"),
                           detail={"agent_token": token_id if record else ""})
            raise VerificationFailed("the agent token is missing, malformed, expired, revoked "
                                     "or wrong", code="invalid_token")
        if record.last_used is None or now - record.last_used >= TOUCH_EVERY:
            self.store.touch(record.id, now=now)
        return Agent(record, user)

    def loaded(self, agent: Agent, *, ip: str = "", user_agent: str = "") -> Loaded:
        """What the decision flow needs for this agent: its session, its user, its grants
        (bound calls a human approved) and its user's risk history."""
        now = self.rt.now()
        grants = self.rt.store.grants.active_for_session(agent.session_id, now=now)
        history = self.rt.store.history.load(agent.user.id)
        return Loaded(agent.session(now, ip=ip, user_agent=user_agent), agent.user, grants,
                      history, (0, 0))

    def _audit(self, outcome: str, record: AgentTokenRecord, by: str) -> None:
        self.rt.record(kind="admin", subject=record.user_id, outcome=outcome,
                       detail={"agent_token": record.id, "name": record.name, "by": by})


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()
