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

On a store with a version board (SQLite, `storage.version_board`) an agent's state — its token
row, its user, its grants and its user's risk history — is kept after a read, with the board's
mark taken before that read, and used without reading the store while the mark is unchanged
(`cached`, `loaded`): every write that could change a decision (revoking the token or all of
the user's, disabling the user, a grant added or spent, a history change) raises the mark first.
The presented secret is still hashed and compared on every request; a copy is not used once
`STORE_CONTACT_EVERY` passed without any read reaching the store (a dead store fails closed
within that time), once the token expired, or when its last-used time is due a write. Without a
board (PostgreSQL spans hosts; the memory store reads in-process) every request reads.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from stepguard.core.context import AuthEvent
from stepguard.core.errors import StepguardError, VerificationFailed
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.core.risk import RiskHistory
from stepguard.service.guard import STORE_CONTACT_EVERY, Loaded
from stepguard.service.runtime import Runtime
from stepguard.storage.agent_tokens import AgentTokenRecord, session_of
from stepguard.storage.records import SessionRecord, UserRecord
from stepguard.storage.version_board import Mark

TOKEN_PREFIX = "sga"  # noqa: S105 - the token shape's prefix, not a secret
AGENT_FACTOR = "agent"
TOUCH_EVERY = 60.0
CACHE_SIZE = 10_000  # agents whose state is kept behind the version board
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
        return session_of(self.token.id)

    def session(self, now: float, *, ip: str = "", user_agent: str = "") -> SessionRecord:
        event = AuthEvent(factor=AGENT_FACTOR, amr=(AGENT_FACTOR,), level=Level.AAL1,
                          at=self.token.created)
        return SessionRecord(id=self.session_id, token_hash="", user_id=self.user.id,
                             created=self.token.created, last_seen=now, ip=ip,
                             user_agent=user_agent[:512], events=(event,))


@dataclass(frozen=True, slots=True)
class _Copy:
    """An agent's state as read after `mark` was taken: valid while the mark holds."""

    agent: Agent
    grants: tuple[Grant, ...]
    history: RiskHistory
    mark: Mark


class AgentTokens:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.store = runtime.store.agent_tokens
        self._board = runtime.store.version_board
        self._copies: OrderedDict[str, _Copy] = OrderedDict()
        self._lock = threading.Lock()
        self._contact = float("-inf")  # when a read of ours last reached the store

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

    def cached(self, presented: str | None) -> Agent | None:
        """The agent a token proves, from a copy still valid without reading the store (cheap
        enough for the event loop); None: use `authenticate` in a thread."""
        match = _TOKEN_SHAPE.fullmatch(presented or "") if self._board is not None else None
        copy = self._copies.get(match.group(1)) if match else None
        if copy is None or match is None:
            return None
        now, agent = self.rt.now(), copy.agent
        record = agent.token
        if (not hmac.compare_digest(_hash(match.group(2)), record.secret_hash)
                or not self._current(copy, now) or not record.live(now) or agent.user.disabled
                or record.last_used is None or now - record.last_used >= TOUCH_EVERY):
            return None
        return agent

    def authenticate(self, presented: str | None) -> Agent:
        """The live agent a token proves; `VerificationFailed` (audited, without the token).
        Reads the store (and, behind a version board, keeps what it read for `cached`)."""
        match = _TOKEN_SHAPE.fullmatch(presented or "")
        token_id, secret = match.groups() if match else ("", "")
        record = self.store.get(token_id) if token_id else None
        mark = None
        if record is not None and self._board is not None:
            # the mark before the reads the copy is made of: a write ending after it moves it
            mark = self._board.mark(session_of(record.id), record.user_id)
            record = self.store.get(token_id)
        now = self.rt.now()
        user = self.rt.store.users.get(record.user_id) if record is not None else None
        good = hmac.compare_digest(_hash(secret), record.secret_hash if record else _DUMMY_HASH)
        if record is None or user is None or not good or not record.live(now) or user.disabled:
            if good and record is not None:  # its owner's copy is stale for good: drop it
                with self._lock:
                    self._copies.pop(record.id, None)
            self.rt.record(kind="verification", factor=AGENT_FACTOR,
                           outcome="failed:" + ("invalid" if match else "malformed"),
                           detail={"agent": token_id if record else ""})
            raise VerificationFailed("the agent token is missing, malformed, expired, revoked "
                                     "or wrong", code="invalid_token")
        if record.last_used is None or now - record.last_used >= TOUCH_EVERY:
            self.store.touch(record.id, now=now)
            record = replace(record, last_used=now)
        agent = Agent(record, user)
        if mark is not None:
            self._keep(_Copy(agent, *self._state(agent, now), mark))
        return agent

    def loaded(self, agent: Agent, *, ip: str = "", user_agent: str = "") -> Loaded:
        """What the decision flow needs for this agent: its session, its user, its grants
        (bound calls a human approved) and its user's risk history — from the copy `cached`
        uses while it is valid, else read now."""
        now = self.rt.now()
        found = self.loaded_cached(agent, ip=ip, user_agent=user_agent)
        if found is not None:
            return found
        grants, history = self._state(agent, now)
        return Loaded(agent.session(now, ip=ip, user_agent=user_agent), agent.user, grants,
                      history, (0, 0))

    def loaded_cached(self, agent: Agent, *, ip: str = "", user_agent: str = "") -> Loaded | None:
        """`loaded` without reading the store; None when no valid copy holds this agent."""
        copy = self._copies.get(agent.token.id)
        now = self.rt.now()
        if copy is None or copy.agent != agent or not self._current(copy, now):
            return None
        return Loaded(agent.session(now, ip=ip, user_agent=user_agent), agent.user, copy.grants,
                      copy.history, (0, 0))

    def _state(self, agent: Agent, now: float) -> tuple[tuple[Grant, ...], RiskHistory]:
        grants = self.rt.store.grants.active_for_session(agent.session_id, now=now)
        history = self.rt.store.history.load(agent.user.id)
        self._contact = now
        return grants, history

    def _current(self, copy: _Copy, now: float) -> bool:
        assert self._board is not None
        return (0 <= now - self._contact < STORE_CONTACT_EVERY  # not if the clock stepped back
                and self._board.mark(copy.agent.session_id, copy.agent.user.id) == copy.mark)

    def _keep(self, copy: _Copy) -> None:
        with self._lock:
            self._copies[copy.agent.token.id] = copy
            self._copies.move_to_end(copy.agent.token.id)
            while len(self._copies) > CACHE_SIZE:
                self._copies.popitem(last=False)

    def _audit(self, outcome: str, record: AgentTokenRecord, by: str) -> None:
        self.rt.record(kind="admin", subject=record.user_id, outcome=outcome,
                       detail={"agent": record.id, "name": record.name, "by": by})


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()
