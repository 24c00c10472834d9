"""`MemoryStore`: every storage role in process memory, for unit tests and single-process demos.

Same contract as `SqlStore` (tests/contract runs against both): atomic compare-and-set methods
under one re-entrant lock, lookups that never return a revoked session, per-session and per-user
cache versions, and `transaction()` that rolls every role back on error. Nothing is persisted.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from stepguard.core.context import AuthEvent
from stepguard.core.errors import Conflict, StoreUnavailable
from stepguard.core.grant import Grant
from stepguard.core.risk import EMPTY_HISTORY, RiskHistory
from stepguard.core.throttle import (
    ThrottleSettings,
    ThrottleState,
    forget_before,
    state_after,
    user_prefix,
)
from stepguard.core.throttle import check as throttle_check
from stepguard.storage.agent_tokens import MemoryAgentTokens
from stepguard.storage.identity_records import IdentityRecord, OidcFlow, SessionLink
from stepguard.storage.records import (
    SESSION_EVENT_LIMIT,
    ApiKeyRecord,
    ChallengeRecord,
    FactorKind,
    FactorRecord,
    GrantRecord,
    PushRecord,
    PushStatus,
    RecoveryCodeRecord,
    Reserved,
    SessionRecord,
    SessionSnapshot,
    UserRecord,
    Versions,
)
from stepguard.storage.sql_history import HistoryUpdates, history_from_document
from stepguard.storage.sql_users import username_key

T = TypeVar("T")


@dataclass
class _Tables:
    users: dict[str, UserRecord] = field(default_factory=dict)
    user_versions: dict[str, int] = field(default_factory=dict)
    factors: dict[str, FactorRecord] = field(default_factory=dict)
    codes: dict[tuple[str, str], RecoveryCodeRecord] = field(default_factory=dict)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    session_versions: dict[str, int] = field(default_factory=dict)
    challenges: dict[str, ChallengeRecord] = field(default_factory=dict)
    grants: dict[str, GrantRecord] = field(default_factory=dict)
    pushes: dict[str, PushRecord] = field(default_factory=dict)
    throttle: dict[str, tuple[ThrottleState, float]] = field(default_factory=dict)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    api_keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    identities: dict[tuple[str, str], IdentityRecord] = field(default_factory=dict)
    oidc_flows: dict[str, OidcFlow] = field(default_factory=dict)
    oidc_sessions: dict[str, SessionLink] = field(default_factory=dict)
    logout_tokens: dict[str, float] = field(default_factory=dict)


class _Role:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    @property
    def _t(self) -> _Tables:
        return self._store.tables

    def _bump_session(self, session_id: str) -> None:
        self._t.session_versions[session_id] = self._t.session_versions.get(session_id, 0) + 1

    def _bump_user(self, user_id: str) -> None:
        self._t.user_versions[user_id] = self._t.user_versions.get(user_id, 0) + 1


class MemoryUsers(_Role):
    def add(self, user: UserRecord) -> None:
        self.import_many([user])

    def import_many(self, users: Iterable[UserRecord]) -> int:
        users = list(users)
        with self._store.transaction():
            keys = {username_key(u.username) for u in self._t.users.values()}
            for user in users:
                key = username_key(user.username)
                if user.id in self._t.users or key in keys:
                    raise Conflict("a user with this id or username already exists")
                keys.add(key)
                self._t.users[user.id] = replace(user, groups=frozenset(user.groups))
                self._t.user_versions.setdefault(user.id, 0)
        return len(users)

    def get(self, user_id: str) -> UserRecord | None:
        return self._t.users.get(user_id)

    def by_username(self, username: str) -> UserRecord | None:
        key = username_key(username)
        return next((u for u in self._t.users.values() if username_key(u.username) == key), None)

    def list(self, *, offset: int = 0, limit: int = 100) -> tuple[UserRecord, ...]:
        ordered = sorted(self._t.users.values(), key=lambda u: username_key(u.username))
        return tuple(ordered[offset:offset + limit])

    def set_disabled(self, user_id: str, disabled: bool, *, now: float) -> bool:
        with self._store.lock:
            changed = self._update(user_id, disabled=disabled)
            if changed and disabled:
                for session in list(self._t.sessions.values()):
                    if session.user_id == user_id and session.revoked_at is None:
                        self._t.sessions[session.id] = replace(session, revoked_at=now)
            self._bump_user(user_id)
            return changed

    def set_groups(self, user_id: str, groups: Iterable[str]) -> bool:
        with self._store.lock:
            self._bump_user(user_id)
            return self._update(user_id, groups=frozenset(groups))

    def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return self._update(user_id, password_hash=password_hash)

    def _update(self, user_id: str, **values: Any) -> bool:
        with self._store.lock:
            user = self._t.users.get(user_id)
            if user is None:
                return False
            self._t.users[user_id] = replace(user, **values)
            return True


class MemoryFactors(_Role):
    def add(self, factor: FactorRecord) -> None:
        with self._store.lock:
            taken = factor.id in self._t.factors or (
                factor.credential_id and self.by_credential_id(factor.credential_id))
            if taken:
                raise Conflict("a factor with this id or credential already exists")
            self._t.factors[factor.id] = factor

    def get(self, factor_id: str) -> FactorRecord | None:
        return self._t.factors.get(factor_id)

    def by_credential_id(self, credential_id: bytes) -> FactorRecord | None:
        if not credential_id:
            return None
        return next((f for f in self._t.factors.values() if f.credential_id == credential_id),
                    None)

    def for_user(self, user_id: str, *, kind: FactorKind | None = None
                 ) -> tuple[FactorRecord, ...]:
        found = [f for f in self._t.factors.values()
                 if f.user_id == user_id and (kind is None or f.kind == kind)]
        return tuple(sorted(found, key=lambda f: (f.created, f.id)))

    def remove(self, factor_id: str, *, user_id: str) -> bool:
        with self._store.lock:
            factor = self._t.factors.get(factor_id)
            if factor is None or factor.user_id != user_id:
                return False
            del self._t.factors[factor_id]
            return True

    def mark_used(self, factor_id: str, *, now: float) -> bool:
        return self._set(factor_id, lambda f: True, last_used=now)

    def advance_totp_step(self, factor_id: str, step: int) -> bool:
        return self._set(factor_id, lambda f: f.kind == "totp" and (
            f.last_step is None or f.last_step < step), last_step=step)

    def update_sign_count(self, factor_id: str, *, expected_old: int, new: int) -> bool:
        return self._set(factor_id, lambda f: f.sign_count == expected_old, sign_count=new)

    def replace_recovery_codes(self, user_id: str, code_hashes: Iterable[str], *,
                               now: float) -> None:
        with self._store.lock:
            for key in [k for k in self._t.codes if k[0] == user_id]:
                del self._t.codes[key]
            for code_hash in dict.fromkeys(code_hashes):
                self._t.codes[(user_id, code_hash)] = RecoveryCodeRecord(
                    user_id=user_id, code_hash=code_hash, created=now, used_at=None)

    def use_recovery_code(self, user_id: str, code_hash: str, *, now: float) -> bool:
        with self._store.lock:
            code = self._t.codes.get((user_id, code_hash))
            if code is None or code.used_at is not None:
                return False
            self._t.codes[(user_id, code_hash)] = replace(code, used_at=now)
            return True

    def recovery_codes(self, user_id: str) -> tuple[RecoveryCodeRecord, ...]:
        return tuple(sorted((c for c in self._t.codes.values() if c.user_id == user_id),
                            key=lambda c: c.code_hash))

    def _set(self, factor_id: str, test: Any, **values: Any) -> bool:
        with self._store.lock:
            factor = self._t.factors.get(factor_id)
            if factor is None or not test(factor):
                return False
            self._t.factors[factor_id] = replace(factor, **values)
            return True


class MemorySessions(_Role):
    def add(self, session: SessionRecord) -> None:
        with self._store.lock:
            if session.id in self._t.sessions or any(
                    s.token_hash == session.token_hash for s in self._t.sessions.values()):
                raise Conflict("a session with this id or token already exists")
            self._t.sessions[session.id] = replace(
                session, events=session.events[-SESSION_EVENT_LIMIT:])
            self._t.session_versions.setdefault(session.id, 0)

    def get(self, session_id: str) -> SessionRecord | None:
        return _live(self._t.sessions.get(session_id))

    def by_token_hash(self, token_hash: str) -> SessionRecord | None:
        return next((s for s in self._t.sessions.values()
                     if s.token_hash == token_hash and s.revoked_at is None), None)

    def list_for_user(self, user_id: str) -> tuple[SessionRecord, ...]:
        found = [s for s in self._t.sessions.values()
                 if s.user_id == user_id and s.revoked_at is None]
        return tuple(sorted(found, key=lambda s: (-s.last_seen, s.id)))

    def touch(self, session_id: str, *, now: float, ip: str, user_agent: str) -> bool:
        return self._set(session_id, last_seen=now, ip=ip, user_agent=user_agent)

    def touch_many(self, seen: Iterable[tuple[str, float, str, str]]) -> None:
        with self._store.lock:
            for session_id, now, ip, user_agent in seen:
                session = self.get(session_id)
                if session is not None and session.last_seen < now:
                    self._set(session_id, last_seen=now, ip=ip, user_agent=user_agent)

    def rotate(self, session_id: str, new_token_hash: str, *, now: float) -> bool:
        return self._set(session_id, bump=True, token_hash=new_token_hash, last_seen=now)

    def revoke(self, session_id: str, *, now: float) -> bool:
        return self._set(session_id, bump=True, revoked_at=now)

    def revoke_all_for_user(self, user_id: str, *, now: float,
                            except_session: str | None = None) -> int:
        with self._store.lock:
            doomed = [s for s in self.list_for_user(user_id) if s.id != except_session]
            for session in doomed:
                self._t.sessions[session.id] = replace(session, revoked_at=now)
            self._bump_user(user_id)
            return len(doomed)

    def add_event(self, session_id: str, event: AuthEvent) -> bool:
        with self._store.lock:
            session = self.get(session_id)
            if session is None:
                return False
            events = (*session.events, event)[-SESSION_EVENT_LIMIT:]
            return self._set(session_id, bump=True, events=events)

    def _set(self, session_id: str, *, bump: bool = False, **values: Any) -> bool:
        with self._store.lock:
            session = self.get(session_id)
            if session is None:
                return False
            self._t.sessions[session_id] = replace(session, **values)
            if bump:
                self._bump_session(session_id)
            return True


class MemorySessionStates(_Role):
    batches = None  # reads are in-process already

    def read(self, token_hash: str, *, known: tuple[int, int] = (-1, -1), now: float,
             connect: bool = True) -> Versions | SessionSnapshot | None:
        with self._store.lock:
            self._store.require_up()
            session = self._store.sessions.by_token_hash(token_hash)
            user = self._t.users.get(session.user_id) if session else None
            if session is None or user is None:
                return None
            versions = Versions(session=self._t.session_versions.get(session.id, 0),
                                user=self._t.user_versions.get(user.id, 0),
                                last_seen=session.last_seen)
            if versions.pair == known:
                return versions
            return SessionSnapshot(
                record=session, user=user, versions=versions,
                grants=self._store.grants.active_for_session(session.id, now=now),
                history=self._store.history.load(user.id))

    def close(self) -> None:
        pass


class MemoryChallenges(_Role):
    def add(self, challenge: ChallengeRecord) -> None:
        with self._store.lock:
            if challenge.id in self._t.challenges:
                raise Conflict("a challenge with this id already exists")
            self._t.challenges[challenge.id] = _frozen_ceremony(challenge)

    def get(self, challenge_id: str) -> ChallengeRecord | None:
        return self._t.challenges.get(challenge_id)

    def pending_for_session(self, session_id: str, *, now: float
                            ) -> tuple[ChallengeRecord, ...]:
        found = [c for c in self._t.challenges.values()
                 if c.session_id == session_id and _pending(c, now)]
        return tuple(sorted(found, key=lambda c: -c.created)[:20])

    def record_attempt(self, challenge_id: str, *, now: float) -> int:
        with self._store.lock:
            challenge = self._live(challenge_id, now)
            if challenge is None:
                return 0
            self._t.challenges[challenge_id] = replace(challenge, attempts=challenge.attempts + 1)
            return challenge.attempts + 1

    def set_ceremony(self, challenge_id: str, ceremony: Mapping[str, Any], *,
                     now: float) -> bool:
        return self._set(challenge_id, now, ceremony=MappingProxyType(copy.deepcopy(
            dict(ceremony))))

    def take_ceremony(self, challenge_id: str, *, now: float) -> Mapping[str, Any] | None:
        with self._store.lock:
            challenge = self._live(challenge_id, now)
            if challenge is None or challenge.ceremony is None:
                return None
            self._t.challenges[challenge_id] = replace(challenge, ceremony=None)
            return challenge.ceremony

    def mark_passed(self, challenge_id: str, *, now: float) -> bool:
        return self._set(challenge_id, now, status="passed", ceremony=None)

    def take_held(self, challenge_id: str, *, session_id: str) -> ChallengeRecord | None:
        with self._store.lock:
            challenge = self._t.challenges.get(challenge_id)
            if (challenge is None or challenge.session_id != session_id
                    or challenge.status != "passed"):
                return None
            taken = self._t.challenges[challenge_id] = replace(challenge, status="sent")
            return _frozen_ceremony(taken)

    def abandon(self, challenge_id: str, *, now: float) -> bool:
        return self._set(challenge_id, now, status="abandoned", ceremony=None)

    def expire(self, *, now: float) -> int:
        with self._store.lock:
            due = [c for c in self._t.challenges.values()
                   if c.status == "pending" and c.expires <= now]
            for challenge in due:
                self._t.challenges[challenge.id] = replace(challenge, status="expired",
                                                           ceremony=None)
            return len(due)

    def purge(self, *, expired_before: float) -> int:
        with self._store.lock:
            return _purge(self._t.challenges, lambda c: c.expires < expired_before)

    def _live(self, challenge_id: str, now: float) -> ChallengeRecord | None:
        challenge = self._t.challenges.get(challenge_id)
        return challenge if challenge is not None and _pending(challenge, now) else None

    def _set(self, challenge_id: str, now: float, **values: Any) -> bool:
        with self._store.lock:
            challenge = self._live(challenge_id, now)
            if challenge is None:
                return False
            self._t.challenges[challenge_id] = replace(challenge, **values)
            return True


class MemoryGrants(_Role):
    def add(self, grant: Grant) -> None:
        with self._store.lock:
            if grant.id in self._t.grants:
                raise Conflict("a grant with this id already exists")
            self._t.grants[grant.id] = GrantRecord(grant=grant)
            self._bump_session(grant.session_id)

    def get(self, grant_id: str) -> GrantRecord | None:
        return self._t.grants.get(grant_id)

    def active_for_session(self, session_id: str, *, now: float) -> tuple[Grant, ...]:
        found = [r.grant for r in self._t.grants.values()
                 if r.grant.session_id == session_id and r.consumed_at is None
                 and r.grant.expires_at > now]
        return tuple(sorted(found, key=lambda g: (g.granted_at, g.id)))

    def consume(self, grant_id: str, *, session_id: str, now: float) -> bool:
        with self._store.lock:
            record = self._t.grants.get(grant_id)
            if (record is None or record.grant.session_id != session_id
                    or record.consumed_at is not None or record.grant.expires_at <= now):
                return False
            self._t.grants[grant_id] = replace(record, consumed_at=now)
            self._bump_session(session_id)
            return True

    def purge(self, *, expired_before: float) -> int:
        with self._store.lock:
            return _purge(self._t.grants, lambda r: r.grant.expires_at < expired_before)


class MemoryThrottle(_Role):
    def __init__(self, store: MemoryStore, settings: ThrottleSettings) -> None:
        super().__init__(store)
        self._settings = settings

    def reserve(self, *, check: Sequence[str], count: Sequence[str],
                now: float) -> tuple[Reserved, ...]:
        with self._store.lock:
            keys = sorted({*count, *check})
            priors = {key: self.state(key, now=now) for key in keys}
            throttle_check(*(priors[key] for key in keys if key in set(check)), now=now)
            reserved = []
            for key in keys:
                consecutive = priors[key].consecutive + 1
                self._t.throttle[key] = (
                    state_after(key, consecutive, now=now, settings=self._settings), now)
                reserved.append(Reserved(key, priors[key], consecutive))
            return tuple(reserved)

    def release(self, reserved: Reserved) -> None:
        self.settle(clear=(), give_back=(reserved,))

    def settle(self, *, clear: Sequence[str], give_back: Sequence[Reserved]) -> None:
        with self._store.lock:
            for key in clear:
                self._t.throttle.pop(key, None)
            for reserved in give_back:
                self._give_back(reserved)

    def _give_back(self, reserved: Reserved) -> None:
        found = self._t.throttle.get(reserved.key)
        if found is None:
            return
        state, at = found
        if state.consecutive != reserved.consecutive:
            self._t.throttle[reserved.key] = (
                replace(state, consecutive=max(0, state.consecutive - 1)), at)
        elif reserved.prior.consecutive == 0:
            del self._t.throttle[reserved.key]
        else:
            self._t.throttle[reserved.key] = (reserved.prior, at)

    def record_failure(self, key: str, *, now: float) -> ThrottleState:
        (one,) = self.reserve(check=(), count=(key,), now=now)
        return state_after(key, one.consecutive, now=now, settings=self._settings)

    def state(self, key: str, *, now: float) -> ThrottleState:
        found = self._t.throttle.get(key)
        forget = forget_before(key, now=now, settings=self._settings)
        if found is None or (forget is not None and found[1] < forget):
            return ThrottleState()
        return found[0]

    def reset(self, key: str) -> None:
        with self._store.lock:
            self._t.throttle.pop(key, None)

    def reset_user(self, subject: str) -> None:
        with self._store.lock:
            prefix = user_prefix(subject)
            for key in [k for k in self._t.throttle if k.startswith(prefix)]:
                del self._t.throttle[key]


class MemoryHistory(_Role, HistoryUpdates):
    def load(self, user_id: str) -> RiskHistory:
        doc = self._t.history.get(user_id)
        return EMPTY_HISTORY if doc is None else history_from_document(doc)

    def _change(self, user_id: str, change: Any) -> None:
        with self._store.lock:
            doc = copy.deepcopy(self._t.history.get(user_id, {}))
            change(doc)
            self._t.history[user_id] = doc
            self._bump_user(user_id)


class MemoryPushes(_Role):
    def add(self, push: PushRecord) -> None:
        with self._store.lock:
            if push.id in self._t.pushes:
                raise Conflict("a push with this id already exists")
            self._t.pushes[push.id] = push

    def get(self, push_id: str) -> PushRecord | None:
        return self._t.pushes.get(push_id)

    def latest_for_challenge(self, challenge_id: str) -> PushRecord | None:
        found = [p for p in self._t.pushes.values() if p.challenge_id == challenge_id]
        return min(found, key=lambda p: (-p.created, p.id), default=None)

    def pending_for_user(self, user_id: str, *, now: float) -> tuple[PushRecord, ...]:
        found = [p for p in self._t.pushes.values()
                 if p.user_id == user_id and p.status == "pending" and p.expires > now]
        return tuple(sorted(found, key=lambda p: (-p.created, p.id))[:20])

    def starts_for_user(self, user_id: str, *, since: float) -> tuple[float, ...]:
        return tuple(sorted(p.created for p in self._t.pushes.values()
                            if p.user_id == user_id and p.created >= since))

    def count_pending(self, user_id: str, *, now: float) -> int:
        return len([p for p in self._t.pushes.values()
                    if p.user_id == user_id and p.status == "pending" and p.expires > now])

    def answer(self, push_id: str, *, status: PushStatus, device_id: str, now: float) -> bool:
        if status == "pending":
            raise ValueError("an answer closes the push")
        with self._store.lock:
            push = self._t.pushes.get(push_id)
            if push is None or push.status != "pending" or push.expires <= now:
                return False
            self._t.pushes[push_id] = replace(push, status=status, device_id=device_id,
                                              answered_at=now)
            return True

    def purge(self, *, expired_before: float) -> int:
        with self._store.lock:
            return _purge(self._t.pushes, lambda p: p.expires < expired_before)


class MemoryApiKeys(_Role):
    def add(self, record: ApiKeyRecord) -> None:
        with self._store.lock:
            if record.id in self._t.api_keys or self.by_name(record.name):
                raise Conflict("an API key with this id or name already exists")
            self._t.api_keys[record.id] = record

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._t.api_keys.get(key_id)

    def by_name(self, name: str) -> ApiKeyRecord | None:
        return next((k for k in self._t.api_keys.values()
                     if k.name == name and k.revoked_at is None), None)

    def list(self) -> tuple[ApiKeyRecord, ...]:
        return tuple(sorted(self._t.api_keys.values(), key=lambda k: k.name))

    def rotate(self, key_id: str, *, new_hash: str, previous_until: float, now: float) -> bool:
        with self._store.lock:
            key = self._t.api_keys.get(key_id)
            if key is None or key.revoked_at is not None:
                return False
            self._t.api_keys[key_id] = replace(key, secret_hash=new_hash,
                                               previous_hash=key.secret_hash,
                                               previous_until=previous_until, rotated_at=now)
            return True

    def revoke(self, key_id: str, *, now: float) -> bool:
        return self._set(key_id, revoked_at=now)

    def touch(self, key_id: str, *, now: float) -> bool:
        return self._set(key_id, last_used=now)

    def _set(self, key_id: str, **values: Any) -> bool:
        with self._store.lock:
            key = self._t.api_keys.get(key_id)
            if key is None or key.revoked_at is not None:
                return False
            self._t.api_keys[key_id] = replace(key, **values)
            return True


class MemoryIdentities(_Role):
    """Identity-provider state (see `sql_identities`)."""

    def link(self, identity: IdentityRecord) -> None:
        with self._store.lock:
            key = (identity.issuer, identity.subject)
            if key in self._t.identities:
                raise Conflict("this identity is already linked")
            self._t.identities[key] = identity

    def get(self, issuer: str, subject: str) -> IdentityRecord | None:
        return self._t.identities.get((issuer, subject))

    def for_users(self, user_ids: Iterable[str]) -> tuple[IdentityRecord, ...]:
        wanted = set(user_ids)
        return tuple(sorted((i for i in self._t.identities.values() if i.user_id in wanted),
                            key=lambda i: (i.user_id, i.provider)))

    def touch(self, issuer: str, subject: str, *, email: str, now: float) -> bool:
        with self._store.lock:
            found = self._t.identities.get((issuer, subject))
            if found is None:
                return False
            self._t.identities[(issuer, subject)] = replace(found, email=email, last_login=now)
            return True

    def update_profile(self, user_id: str, *, display_name: str, email: str,
                       groups: Iterable[str]) -> None:
        with self._store.lock:
            user = self._t.users.get(user_id)
            if user is not None:
                self._bump_user(user_id)
                self._t.users[user_id] = replace(user, display_name=display_name[:255],
                                                 email=email[:320], groups=frozenset(groups))

    def add_flow(self, flow: OidcFlow) -> None:
        with self._store.lock:
            self._t.oidc_flows[flow.state_hash] = flow

    def take_flow(self, state_hash: str, *, now: float) -> OidcFlow | None:
        with self._store.lock:
            flow = self._t.oidc_flows.pop(state_hash, None)
        return flow if flow is not None and flow.expires > now else None

    def link_session(self, link: SessionLink) -> None:
        with self._store.lock:
            self._t.oidc_sessions[link.session_id] = link

    def session_link(self, session_id: str) -> SessionLink | None:
        return self._t.oidc_sessions.get(session_id)

    def linked_sessions(self, issuer: str, *, subject: str = "", sid: str = "") -> tuple[str, ...]:
        return tuple(s.session_id for s in self._t.oidc_sessions.values()
                     if s.issuer == issuer and (not sid or s.sid == sid)
                     and (not subject or s.subject == subject))

    def use_logout_token(self, key: str, *, expires: float, now: float) -> bool:
        with self._store.lock:
            _purge(self._t.logout_tokens, lambda until: until <= now)
            if key in self._t.logout_tokens:
                return False
            self._t.logout_tokens[key] = expires
            return True

    def purge(self, *, now: float) -> int:
        with self._store.lock:
            return _purge(self._t.oidc_flows, lambda f: f.expires <= now)


class MemoryStore:
    """Every role in memory. `down = True` makes every session read fail (outage tests)."""

    def __init__(self, *, throttle: ThrottleSettings | None = None) -> None:
        self.lock = threading.RLock()
        self.tables = _Tables()
        self.down = False
        self.version_board = None  # reads are in-process already
        self.users = MemoryUsers(self)
        self.factors = MemoryFactors(self)
        self.sessions = MemorySessions(self)
        self.session_states = MemorySessionStates(self)
        self.challenges = MemoryChallenges(self)
        self.grants = MemoryGrants(self)
        self.pushes = MemoryPushes(self)
        self.throttle = MemoryThrottle(self, throttle or ThrottleSettings())
        self.history = MemoryHistory(self)
        self.api_keys = MemoryApiKeys(self)
        self.identities = MemoryIdentities(self)
        self.agent_tokens = MemoryAgentTokens()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All role calls inside commit together or not at all (the state is restored)."""
        with self.lock:
            saved = copy.copy(self.tables)
            self.tables = _Tables(**{name: dict(value) for name, value in vars(saved).items()})
            try:
                yield
            except BaseException:
                self.tables = saved
                raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.lock:
            yield

    def require_up(self) -> None:
        if self.down:
            raise StoreUnavailable("the store is unavailable")

    def ping(self) -> None:
        self.require_up()

    def close(self) -> None:
        pass


def _live(session: SessionRecord | None) -> SessionRecord | None:
    return session if session is not None and session.revoked_at is None else None


def _pending(challenge: ChallengeRecord, now: float) -> bool:
    return challenge.status == "pending" and challenge.expires > now


def _frozen_ceremony(challenge: ChallengeRecord) -> ChallengeRecord:
    if challenge.ceremony is None:
        return challenge
    return replace(challenge, ceremony=MappingProxyType(copy.deepcopy(dict(challenge.ceremony))))


def _purge(table: dict[str, T], doomed: Any) -> int:
    keys = [key for key, value in table.items() if doomed(value)]
    for key in keys:
        del table[key]
    return len(keys)
