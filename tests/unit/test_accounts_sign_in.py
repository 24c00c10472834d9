"""Accounts' password sign-in and sessions on the in-memory store: which throttle keys an
attempt is counted under (a known user's, an unknown name's digest, the owner's known device),
what a refusal looks like (the same for a disabled user, a passkey-only user and an unknown
name), the session a success opens, the risk history it leaves (device, network, country,
place, hour) and the audit entries of both; signing out and revoking sessions. Found by
`make mutate` (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.audit.ledger import AuditEntry, pseudonymise_ip
from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.errors import StoreUnavailable, VerificationFailed
from stepguard.core.levels import Level
from stepguard.core.risk import Location
from stepguard.core.throttle import (
    client_network,
    ip_key,
    trusted_entry,
    user_device_key,
    user_factor_key,
    user_ip_key,
)
from stepguard.factors.password import REFUSAL, PasswordSettings, hash_password, verify_password
from stepguard.service.accounts import Accounts
from stepguard.service.attempts import unknown_subject
from stepguard.service.runtime import Runtime, build_runtime, hash_token
from stepguard.storage.memory import MemoryStore
from stepguard.storage.records import SessionRecord, UserRecord
from tests.contract import build
from tests.support.gateway import Clock, write_config

LIMIT = 3  # throttle.hard_lock_after: the failure that reaches it is audited as a lockout
SETTINGS = f"""
throttle: {{hard_lock_after: {LIMIT}}}
risk:
  locations:
    - {{network: 198.51.100.0/24, country: DE, city: Berlin}}
    - {{network: 203.0.113.0/24, country: FR}}
"""
BERLIN, PARIS, NOWHERE = "198.51.100.7", "203.0.113.9", "192.0.2.44"
PASSWORD = "correct horse battery"
HOUR = 17  # the UTC hour of the test clock's start (1_900_000_000 s)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = build_runtime(load_config(write_config(tmp_path, extra=SETTINGS)), clock=Clock(),
                       store=MemoryStore(), audit_log=MemoryAuditLog())
    yield rt
    rt.close()


@pytest.fixture
def accounts(runtime: Runtime) -> Accounts:
    return Accounts(runtime)


@pytest.fixture
def alice(accounts: Accounts) -> UserRecord:
    return accounts.add_user("alice", password=PASSWORD)


def client(ip: str = BERLIN, device: str = "laptop", agent: str = "Firefox/128.0"
           ) -> RequestContext:
    return RequestContext(method="POST", host="localhost", path="/sign-in", client_ip=ip,
                          device_id=device, user_agent=agent)


def entries(runtime: Runtime, kind: str) -> list[AuditEntry]:
    runtime.audit.flush(timeout=5)
    return [e for e in runtime.audit_log.entries() if e.kind == kind]


def counts(runtime: Runtime) -> dict[str, int]:
    """Every throttle key with its count of attempts (the store's table)."""
    table = runtime.store.throttle._t.throttle  # type: ignore[attr-defined]
    return {key: state.consecutive for key, (state, _) in table.items()}


def refused(accounts: Accounts, username: str, password: str,
            context: RequestContext) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as caught:
        accounts.sign_in(username, password, context)
    return caught.value


def place_on(runtime: Runtime) -> None:
    runtime.clock.advance(10)  # type: ignore[attr-defined]  # past the 1 s back-off


# ------------------------------------------------------------------ the attempt and its keys


def test_a_wrong_password_is_counted_under_the_users_password_keys(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    assert refused(accounts, "alice", "wrong", client()).code == "wrong_password"
    assert counts(runtime) == {ip_key(BERLIN): 1,
                               user_ip_key(alice.id, "password", BERLIN): 1,
                               user_factor_key(alice.id, "password"): 1}
    assert runtime.store.history.load(alice.id).recent_failures == (runtime.now(),)


def test_an_unknown_name_is_counted_under_its_digest_and_refused_like_a_wrong_password(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    error = refused(accounts, "mallory", "a guess", client())
    wrong = refused(accounts, "alice", "a guess", client(device=""))
    assert (str(error), error.code) == (str(wrong), wrong.code) == (REFUSAL, "wrong_password")
    subject = unknown_subject("mallory")
    assert counts(runtime)[user_factor_key(subject, "password")] == 1
    assert counts(runtime)[user_ip_key(subject, "password", BERLIN)] == 1
    [unknown, known] = entries(runtime, "verification")
    assert (unknown.subject, unknown.factor, unknown.outcome) == ("", "password", "failed:invalid")
    assert (known.subject, known.factor, known.outcome) == (alice.id, "password", "failed:invalid")
    assert unknown.request["client_ip"] == known.request["client_ip"] == BERLIN


def test_the_owners_known_device_is_counted_only_under_its_own_key(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    runtime.store.history.record_trusted(
        alice.id, entries=[trusted_entry("password", "device", "laptop")])
    refused(accounts, "alice", "wrong", client(device="laptop"))
    assert counts(runtime) == {user_device_key(alice.id, "password", "laptop"): 1,
                               user_factor_key(alice.id, "password"): 1}


def test_a_success_clears_the_users_keys_and_gives_the_address_its_attempt_back(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    refused(accounts, "alice", "wrong", client())
    place_on(runtime)
    accounts.sign_in("alice", PASSWORD, client())
    assert counts(runtime) == {ip_key(BERLIN): 1}


def test_the_failure_that_reaches_the_hard_lock_is_audited_for_the_password(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    for _ in range(LIMIT):
        refused(accounts, "alice", "wrong", client())
        place_on(runtime)
    [locked] = [e for e in entries(runtime, "verification") if e.outcome == "locked"]
    assert (locked.subject, locked.factor) == (alice.id, "password")
    assert locked.request["client_ip"] == BERLIN


def test_a_failure_of_the_store_gives_the_attempt_back(
        runtime: Runtime, accounts: Accounts, alice: UserRecord,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def down(session: SessionRecord) -> None:
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(runtime.store.sessions, "add", down)
    with pytest.raises(StoreUnavailable):
        accounts.sign_in("alice", PASSWORD, client())
    assert counts(runtime) == {}
    assert entries(runtime, "verification") == []


# ------------------------------------------------------------------ who may sign in


def test_a_disabled_user_is_refused_even_with_the_right_password(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    runtime.store.users.set_disabled(alice.id, True, now=runtime.now())
    error = refused(accounts, "alice", PASSWORD, client())
    assert (str(error), error.code) == (REFUSAL, "wrong_password")
    assert runtime.store.sessions.list_for_user(alice.id) == ()


def test_a_passkey_only_user_has_no_password_to_sign_in_with(
        runtime: Runtime, accounts: Accounts) -> None:
    bob = accounts.add_user("bob", password=None)
    error = refused(accounts, "bob", "anything at all", client())
    assert (str(error), error.code) == (REFUSAL, "wrong_password")
    assert runtime.store.sessions.list_for_user(bob.id) == ()


def test_an_outdated_hash_is_replaced_at_sign_in_by_one_at_owasp_cost(
        runtime: Runtime, accounts: Accounts) -> None:
    weak = PasswordSettings(memory_cost=1024, time_cost=1)
    carol = build.user("carol", password_hash=hash_password(PASSWORD, settings=weak))
    runtime.store.users.add(carol)
    accounts.sign_in("carol", PASSWORD, client())
    stored = runtime.store.users.get(carol.id)
    assert stored is not None and stored.password_hash != carol.password_hash
    assert "m=19456,t=2,p=1" in stored.password_hash
    assert verify_password(stored_hash=stored.password_hash, password=PASSWORD).rehash is None


# ------------------------------------------------------------------ the session it opens


def test_a_sign_in_opens_a_password_session_for_this_client(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    runtime.ip_key = b"k" * 32
    signed = accounts.sign_in("alice", PASSWORD, client(agent="A" * 600))
    now = runtime.now()
    stored = runtime.store.sessions.get(signed.session.id)
    assert stored is not None and stored == signed.session and signed.user == alice
    assert stored.token_hash == hash_token(signed.token)
    assert (stored.user_id, stored.created, stored.last_seen) == (alice.id, now, now)
    assert (stored.ip, stored.device_id, stored.user_agent) == (BERLIN, "laptop", "A" * 512)
    assert stored.events == (AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                                       at=now),)
    [entry] = entries(runtime, "session")
    assert (entry.kind, entry.subject, entry.factor, entry.outcome) == (
        "session", alice.id, "password", "signed_in")
    assert entry.session == runtime.session_ref(stored.id) != ""
    assert entry.request == {"method": "POST", "host": "localhost", "path": "/sign-in",
                             "client_ip": pseudonymise_ip(BERLIN, key=b"k" * 32)}
    assert entry.detail == {"new_device": False, "new_location": False, "place": "Berlin, DE"}


def test_a_sign_in_trusts_this_device_and_network_for_the_password(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    accounts.sign_in("alice", PASSWORD, client())
    assert runtime.store.history.load(alice.id).trusted == {
        trusted_entry("password", "device", "laptop"),
        trusted_entry("password", "net", client_network(BERLIN))}


def test_a_sign_in_is_remembered_in_the_risk_history(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    accounts.sign_in("alice", PASSWORD, client())
    history = runtime.store.history.load(alice.id)
    assert history.known_devices == {"laptop"}
    assert history.known_networks == {client_network(BERLIN)}
    assert history.known_countries == {"DE"}
    assert history.last_location == Location("DE", "Berlin")
    assert history.last_seen_at == runtime.now()
    assert history.hour_histogram == tuple(int(h == HOUR) for h in range(24))


def test_a_sign_in_from_nowhere_known_keeps_the_last_place(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    accounts.sign_in("alice", PASSWORD, client())
    first = runtime.now()
    runtime.clock.advance(3 * 3600 + 1)  # type: ignore[attr-defined]
    accounts.sign_in("alice", PASSWORD, client(NOWHERE, device="phone"))
    history = runtime.store.history.load(alice.id)
    assert history.known_countries == {"DE"}
    assert history.known_networks == {client_network(BERLIN), client_network(NOWHERE)}
    assert (history.last_location, history.last_seen_at) == (Location("DE", "Berlin"), first)
    assert history.hour_histogram == tuple(int(h in (HOUR, HOUR + 3)) for h in range(24))


def test_a_sign_in_without_an_address_remembers_the_device_only(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    accounts.sign_in("alice", PASSWORD, client("", device="laptop"))
    history = runtime.store.history.load(alice.id)
    assert (history.known_devices, history.known_networks, history.known_countries) == (
        frozenset({"laptop"}), frozenset(), frozenset())
    assert history.last_location is None


# ------------------------------------------------------------------ what is new about it


def novelty(runtime: Runtime, accounts: Accounts, context: RequestContext) -> dict[str, object]:
    runtime.audit.flush(timeout=5)
    mark = runtime.audit_log.count()
    accounts.sign_in("alice", PASSWORD, context)
    runtime.audit.flush(timeout=5)
    [entry] = [e for e in runtime.audit_log.entries(after_seq=mark) if e.kind == "session"]
    return dict(entry.detail)


def test_novelty_is_measured_against_the_users_history(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    assert novelty(runtime, accounts, client(BERLIN, "laptop")) == {
        "new_device": False, "new_location": False, "place": "Berlin, DE"}  # nothing to compare
    assert novelty(runtime, accounts, client(BERLIN, "laptop")) == {
        "new_device": False, "new_location": False, "place": "Berlin, DE"}
    assert novelty(runtime, accounts, client(PARIS, "phone")) == {
        "new_device": True, "new_location": True, "place": "FR"}
    assert novelty(runtime, accounts, client(NOWHERE, "")) == {
        "new_device": False, "new_location": False, "place": ""}
    assert novelty(runtime, accounts, client("", "laptop")) == {
        "new_device": False, "new_location": False, "place": ""}


def test_a_first_sign_in_from_nowhere_known_is_nothing_new(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    assert novelty(runtime, accounts, client(NOWHERE, "laptop")) == {
        "new_device": False, "new_location": False, "place": ""}


def test_known_networks_alone_make_a_new_device_stand_out(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    novelty(runtime, accounts, client(NOWHERE, ""))
    assert novelty(runtime, accounts, client(NOWHERE, "laptop"))["new_device"] is True


def test_known_devices_alone_make_a_new_device_stand_out(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    novelty(runtime, accounts, client("", "laptop"))
    assert novelty(runtime, accounts, client("", "phone"))["new_device"] is True


# ------------------------------------------------------------------ ending sessions


def live(runtime: Runtime, user: UserRecord, count: int = 1) -> list[SessionRecord]:
    now = runtime.now()
    sessions = [build.session(user.id, created=now, last_seen=now,
                              events=(build.event(at=now),)) for _ in range(count)]
    for session in sessions:
        runtime.store.sessions.add(session)
    return sessions


def test_sign_out_ends_the_session_and_audits_it(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine, other = live(runtime, alice, 2)
    accounts.sign_out(mine)
    assert runtime.store.sessions.get(mine.id) is None
    assert runtime.store.sessions.get(other.id) is not None
    [entry] = entries(runtime, "session")
    assert (entry.subject, entry.outcome) == (alice.id, "signed_out")
    assert entry.session == runtime.session_ref(mine.id) != ""


def test_the_owner_revokes_another_session_of_theirs(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    mine, other = live(runtime, alice, 2)
    assert accounts.revoke_session(mine, other.id) is True
    assert runtime.store.sessions.get(other.id) is None
    assert runtime.store.sessions.get(mine.id) is not None
    [entry] = entries(runtime, "session")
    assert (entry.subject, entry.outcome, entry.detail) == (alice.id, "revoked", {"by": "owner"})
    assert entry.session == runtime.session_ref(other.id) != ""


def test_an_operator_revokes_any_session(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    [session] = live(runtime, alice)
    assert accounts.revoke_session(None, session.id, admin="admin:carol") is True
    assert runtime.store.sessions.get(session.id) is None
    [entry] = entries(runtime, "admin")[1:]  # after add_user's
    assert (entry.subject, entry.outcome, entry.detail) == (
        alice.id, "revoked", {"by": "admin:carol"})
    assert entry.session == runtime.session_ref(session.id)


def test_nobody_else_revokes_a_session(
        runtime: Runtime, accounts: Accounts, alice: UserRecord) -> None:
    [session] = live(runtime, alice)
    bob = accounts.add_user("bob", password=None)
    [bobs] = live(runtime, bob)
    assert accounts.revoke_session(bobs, session.id) is False
    assert accounts.revoke_session(None, session.id) is False
    assert accounts.revoke_session(bobs, "no-such-session") is False
    assert accounts.revoke_session(None, "no-such-session", admin="admin:carol") is False
    assert runtime.store.sessions.get(session.id) is not None
    assert entries(runtime, "session") == []
    assert [e.outcome for e in entries(runtime, "admin")] == ["user_added", "user_added"]
