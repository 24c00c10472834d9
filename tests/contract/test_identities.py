"""Contract: Identities (identity-provider state) on every backend."""

from __future__ import annotations

import pytest

from stepguard.core.errors import Conflict
from stepguard.storage.identity_records import IdentityRecord, OidcFlow, SessionLink
from stepguard.storage.interfaces import Store
from tests.contract import build
from tests.contract.build import NOW


def identity(user_id: str, **fields: object) -> IdentityRecord:
    values = {"issuer": "https://idp.example", "subject": "sub-1", "user_id": user_id,
              "provider": "corp", "email": "a@example.com", "created": NOW,
              "last_login": NOW, **fields}
    return IdentityRecord(**values)  # type: ignore[arg-type]


def flow(state_hash: str = "h1", **fields: object) -> OidcFlow:
    values = {"state_hash": state_hash, "provider": "corp", "purpose": "login",
              "browser_hash": "b" * 64, "nonce": "n", "code_verifier": "v" * 64,
              "created": NOW, "expires": NOW + 600, **fields}
    return OidcFlow(**values)  # type: ignore[arg-type]


def test_an_identity_is_found_by_issuer_and_subject_only(store: Store) -> None:
    alice = build.user("alice")
    store.users.add(alice)
    store.identities.link(identity(alice.id))
    assert store.identities.get("https://idp.example", "sub-1") == identity(alice.id)
    assert store.identities.get("https://other.example", "sub-1") is None
    assert store.identities.get("https://idp.example", "a@example.com") is None
    with pytest.raises(Conflict):
        store.identities.link(identity(alice.id, provider="again"))
    assert [i.provider for i in store.identities.for_users([alice.id, "nobody"])] == ["corp"]
    assert store.identities.for_users([]) == ()


def test_touch_and_profile_update(store: Store) -> None:
    alice = build.user("alice")
    store.users.add(alice)
    store.identities.link(identity(alice.id))
    assert store.identities.touch("https://idp.example", "sub-1", email="new@example.com",
                                  now=NOW + 5)
    assert not store.identities.touch("https://idp.example", "nobody", email="", now=NOW)
    found = store.identities.get("https://idp.example", "sub-1")
    assert found is not None and found.email == "new@example.com" and found.last_login == NOW + 5
    store.identities.update_profile(alice.id, display_name="Alice I", email="new@example.com",
                                    groups=["b", "a", "a"])
    user = store.users.get(alice.id)
    assert user is not None and user.groups == frozenset({"a", "b"})
    assert user.display_name == "Alice I" and user.email == "new@example.com"


def test_a_flow_is_taken_exactly_once(store: Store) -> None:
    store.identities.add_flow(flow("h1"))
    results = build.race(8, lambda _i: store.identities.take_flow("h1", now=NOW))
    assert [r for r in results if r is not None] == [flow("h1")]
    assert store.identities.take_flow("h1", now=NOW) is None


def test_an_expired_flow_is_not_given_and_purge_drops_it(store: Store) -> None:
    store.identities.add_flow(flow("old", expires=NOW - 1))
    store.identities.add_flow(flow("older", expires=NOW - 2))
    assert store.identities.take_flow("old", now=NOW) is None
    assert store.identities.purge(now=NOW) == 1
    assert store.identities.take_flow("older", now=NOW) is None


def test_linked_sessions_by_sid_or_subject(store: Store) -> None:
    alice = build.user("alice")
    store.users.add(alice)
    for sid, session_id in (("sid-1", "s1"), ("sid-2", "s2")):
        store.sessions.add(build.session(alice.id, id=session_id, token_hash=f"t-{session_id}"))
        store.identities.link_session(SessionLink(session_id=session_id, provider="corp",
                                                  issuer="https://idp.example", subject="sub-1",
                                                  sid=sid, id_token="x.y.z"))
    assert store.identities.linked_sessions("https://idp.example", sid="sid-1") == ("s1",)
    assert sorted(store.identities.linked_sessions("https://idp.example", subject="sub-1")) == [
        "s1", "s2"]
    assert store.identities.linked_sessions("https://other.example", subject="sub-1") == ()
    link = store.identities.session_link("s2")
    assert link is not None and link.sid == "sid-2" and link.id_token == "x.y.z"
    assert store.identities.session_link("nope") is None


def test_a_logout_token_is_used_once(store: Store) -> None:
    assert store.identities.use_logout_token("k1", expires=NOW + 60, now=NOW)
    assert not store.identities.use_logout_token("k1", expires=NOW + 60, now=NOW + 1)
    assert store.identities.use_logout_token("k1", expires=NOW + 200, now=NOW + 61)  # expired
