"""Contract: Challenges. Pending -> passed once; ceremony state handed out once."""

from __future__ import annotations

import pytest

from stepguard.core.decision import Requirement
from stepguard.core.errors import Conflict
from stepguard.storage.records import HELD_BODY_LIMIT
from stepguard.storage.sql import SqlStore
from tests.contract import build
from tests.contract.build import NOW


def test_add_then_get_every_field(store: SqlStore) -> None:
    challenge = build.challenge(ceremony={"challenge": "q83v", "user_verification": "required"})
    store.challenges.add(challenge)
    assert store.challenges.get(challenge.id) == challenge
    assert store.challenges.get("unknown") is None


def test_login_challenge_without_user_or_session(store: SqlStore) -> None:
    challenge = build.challenge(
        user_id=None, session_id=None, login=True, requirement=Requirement(), held_body=b""
    )
    store.challenges.add(challenge)
    assert store.challenges.get(challenge.id) == challenge


def test_duplicate_id_conflicts(store: SqlStore) -> None:
    challenge = build.challenge()
    store.challenges.add(challenge)
    with pytest.raises(Conflict):
        store.challenges.add(build.challenge(id=challenge.id))


def test_held_body_is_bounded() -> None:
    build.challenge(held_body=b"x" * HELD_BODY_LIMIT)
    with pytest.raises(ValueError):
        build.challenge(held_body=b"x" * (HELD_BODY_LIMIT + 1))


def test_attempts_count_up_on_live_challenges_only(store: SqlStore) -> None:
    challenge = build.challenge()
    store.challenges.add(challenge)
    assert store.challenges.record_attempt(challenge.id, now=NOW + 1) == 1
    assert store.challenges.record_attempt(challenge.id, now=NOW + 2) == 2
    assert store.challenges.record_attempt(challenge.id, now=challenge.expires) == 0
    assert store.challenges.record_attempt("unknown", now=NOW) == 0
    stored = store.challenges.get(challenge.id)
    assert stored is not None and stored.attempts == 2


def test_concurrent_attempts_are_all_counted(store: SqlStore) -> None:
    challenge = build.challenge()
    store.challenges.add(challenge)
    counts = build.race(20, lambda _: store.challenges.record_attempt(challenge.id, now=NOW))
    assert sorted(counts) == list(range(1, 21))


def test_mark_passed_once_and_never_after_expiry(store: SqlStore) -> None:
    challenge, late = build.challenge(), build.challenge()
    store.challenges.add(challenge)
    store.challenges.add(late)
    assert store.challenges.mark_passed(challenge.id, now=NOW + 1)
    assert not store.challenges.mark_passed(challenge.id, now=NOW + 2)
    assert not store.challenges.abandon(challenge.id, now=NOW + 2)
    assert not store.challenges.mark_passed(late.id, now=late.expires)
    stored = store.challenges.get(challenge.id)
    assert stored is not None and stored.status == "passed"


def test_mark_passed_exactly_one_of_fifty_racers(store: SqlStore) -> None:
    challenge = build.challenge()
    store.challenges.add(challenge)
    results = build.race(50, lambda _: store.challenges.mark_passed(challenge.id, now=NOW + 1))
    assert results.count(True) == 1


def test_abandon_and_expire(store: SqlStore) -> None:
    abandoned, stale, live = (build.challenge(expires=NOW + e) for e in (300, 10, 300))
    for challenge in (abandoned, stale, live):
        store.challenges.add(challenge)
    assert store.challenges.abandon(abandoned.id, now=NOW + 1)
    assert store.challenges.expire(now=NOW + 10) == 1
    stored = [store.challenges.get(c.id) for c in (abandoned, stale, live)]
    assert [c.status for c in stored if c] == ["abandoned", "expired", "pending"]
    assert not store.challenges.mark_passed(stale.id, now=NOW + 1)


def test_purge_removes_long_expired(store: SqlStore) -> None:
    old, recent = build.challenge(expires=NOW - 100), build.challenge(expires=NOW + 100)
    store.challenges.add(old)
    store.challenges.add(recent)
    assert store.challenges.purge(expired_before=NOW) == 1
    assert store.challenges.get(old.id) is None
    assert store.challenges.get(recent.id) is not None


def test_ceremony_is_taken_once(store: SqlStore) -> None:
    challenge = build.challenge()
    store.challenges.add(challenge)
    assert store.challenges.take_ceremony(challenge.id, now=NOW) is None
    assert store.challenges.set_ceremony(challenge.id, {"challenge": "abc", "n": 42}, now=NOW)
    stored = store.challenges.get(challenge.id)
    assert stored is not None and stored.ceremony == {"challenge": "abc", "n": 42}
    assert store.challenges.take_ceremony(challenge.id, now=NOW + 1) == stored.ceremony
    assert store.challenges.take_ceremony(challenge.id, now=NOW + 1) is None


def test_ceremony_not_set_or_taken_after_expiry_or_pass(store: SqlStore) -> None:
    challenge = build.challenge(ceremony={"challenge": "abc"})
    store.challenges.add(challenge)
    assert store.challenges.take_ceremony(challenge.id, now=challenge.expires) is None
    assert not store.challenges.set_ceremony(challenge.id, {"x": 1}, now=challenge.expires)
    assert store.challenges.mark_passed(challenge.id, now=NOW)
    assert store.challenges.take_ceremony(challenge.id, now=NOW) is None
    assert not store.challenges.set_ceremony(challenge.id, {"x": 1}, now=NOW)


def test_ceremony_exactly_one_of_fifty_racers(store: SqlStore) -> None:
    challenge = build.challenge(ceremony={"challenge": "abc"})
    store.challenges.add(challenge)
    results = build.race(50, lambda _: store.challenges.take_ceremony(challenge.id, now=NOW))
    assert [r for r in results if r is not None] == [{"challenge": "abc"}]


def test_a_passed_challenges_held_request_is_taken_once(store: SqlStore) -> None:
    challenge = build.challenge(held_body=b"amount=5000")
    store.challenges.add(challenge)
    session_id = challenge.session_id or ""
    assert store.challenges.take_held(challenge.id, session_id=session_id) is None  # pending
    assert store.challenges.mark_passed(challenge.id, now=NOW + 1)
    assert store.challenges.take_held(challenge.id, session_id="another-session") is None
    taken = store.challenges.take_held(challenge.id, session_id=session_id)
    assert taken is not None and taken.held_body == b"amount=5000" and taken.status == "sent"
    assert taken.held_headers == challenge.held_headers
    assert store.challenges.take_held(challenge.id, session_id=session_id) is None
    stored = store.challenges.get(challenge.id)
    assert stored is not None and stored.status == "sent"


def test_concurrent_takes_of_a_held_request_give_it_to_exactly_one(store: SqlStore) -> None:
    challenge = build.challenge(held_body=b"amount=5000")
    store.challenges.add(challenge)
    assert store.challenges.mark_passed(challenge.id, now=NOW + 1)
    taken = build.race(20, lambda _: store.challenges.take_held(
        challenge.id, session_id=challenge.session_id or ""))
    assert sum(1 for t in taken if t is not None) == 1
