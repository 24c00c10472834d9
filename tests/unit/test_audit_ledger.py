"""The audit ledger's pure core: sealing, verification of tampered chains, checkpoints, privacy."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stepguard.audit.ledger import (
    GENESIS_HASH,
    AuditEntry,
    AuditEvent,
    ChainFault,
    ChainHead,
    content_fields,
    entry_hash,
    is_secret_key,
    load_public_key,
    load_signing_key,
    pseudonymise_ip,
    public_key_pem,
    redact,
    request_summary,
    seal,
    seal_chain,
    session_ref,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)
from stepguard.core.context import RequestContext
from stepguard.core.errors import AuditIntegrityError, VerificationFailed

T0 = 1_714_564_800.0
KEY = b"k" * 32


def event(n: int, *, at: float | None = None, subject: str = "alice") -> AuditEvent:
    return AuditEvent(
        at=T0 + n if at is None else at,
        kind="decision",
        subject=subject,
        request={"method": "POST", "host": "app.example.com", "path": f"/items/{n}"},
        decision="step_up",
        rule="admin-roles",
        reasons=("Changing someone's roles",),
        outcome="step_up",
        detail={"n": n, "amount": 1000.25},
    )


def chain(
    count: int = 10, *, after_seq: int = 0, prev_hash: str = GENESIS_HASH
) -> list[AuditEntry]:
    return seal_chain(
        [event(after_seq + i + 1) for i in range(count)], after_seq=after_seq, prev_hash=prev_hash
    )


def reseal(entry: AuditEntry, **changes: object) -> AuditEntry:
    """What an attacker who knows the algorithm does: change fields, recompute the hash."""
    changed = dataclasses.replace(entry, **changes)  # type: ignore[arg-type]
    digest = entry_hash(content_fields(changed), seq=changed.seq, prev_hash=changed.prev_hash)
    return dataclasses.replace(changed, hash=digest)


def forged(seq: int, prev_hash: str, *, subject: str = "mallory") -> AuditEntry:
    return seal(event(seq, subject=subject), seq=seq, prev_hash=prev_hash)


def relabel(entry: AuditEntry, seq: int) -> AuditEntry:
    """Change an entry's seq column without resealing (an UPDATE in the database)."""
    return dataclasses.replace(entry, seq=seq)


# ------------------------------------------------------------------ sealing and intact chains


def test_an_intact_chain_verifies() -> None:
    entries = chain(10)
    report = verify_chain(entries, head=ChainHead(10, entries[-1].hash))
    assert report.ok and report.count == 10 and report.first_bad_seq is None
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:], strict=False))


def test_an_empty_chain_verifies_and_a_missing_whole_chain_does_not() -> None:
    assert verify_chain([]).ok
    report = verify_chain([], head=ChainHead(3, "a" * 64))
    assert (report.problem, report.first_bad_seq) == (ChainFault.DELETED, 1)


def test_the_hash_covers_every_field() -> None:
    entry = chain(1)[0]
    changes: dict[str, object] = {
        "seq": 2,
        "at": entry.at + 1e-6,
        "kind": "admin",
        "subject": "bob",
        "session": "s:" + "0" * 24,
        "request": {"method": "GET"},
        "decision": "allow",
        "rule": "other",
        "reasons": ("x",),
        "factor": "totp",
        "outcome": "allow",
        "detail": {"n": 2},
        "prev_hash": "1" * 64,
    }
    for name, value in changes.items():
        changed = dataclasses.replace(entry, **{name: value})  # type: ignore[arg-type]
        assert entry_hash(
            content_fields(changed), seq=changed.seq, prev_hash=changed.prev_hash
        ) != (entry.hash), name


def test_sealing_is_deterministic_and_floats_keep_their_repr() -> None:
    a = seal(event(1), seq=1, prev_hash=GENESIS_HASH)
    b = seal(event(1), seq=1, prev_hash=GENESIS_HASH)
    assert a == b and a.hash == b.hash
    assert (
        seal(
            dataclasses.replace(event(1), detail={"amount": 0.1 + 0.2}),
            seq=1,
            prev_hash=GENESIS_HASH,
        ).hash
        != a.hash
    )


def test_seal_refuses_bad_positions() -> None:
    with pytest.raises(ValueError):
        seal(event(1), seq=0, prev_hash=GENESIS_HASH)
    with pytest.raises(ValueError):
        seal(event(1), seq=1, prev_hash="zz")


def test_time_is_kept_to_the_microsecond_and_must_be_finite() -> None:
    assert event(0, at=T0 + 0.1234567).at == round(T0 + 0.1234567, 6)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            event(0, at=bad)


# ------------------------------------------------------------------ tampering: edited


def test_an_edited_entry_is_named() -> None:
    entries = chain(10)
    entries[3] = dataclasses.replace(entries[3], subject="mallory")
    report = verify_chain(entries)
    assert (report.ok, report.problem, report.first_bad_seq, report.count) == (
        False,
        ChainFault.EDITED,
        4,
        3,
    )


def test_an_edited_detail_or_time_is_named() -> None:
    entries = chain(10)
    entries[6] = dataclasses.replace(entries[6], detail={"n": 7, "amount": 1.0})
    assert verify_chain(entries).first_bad_seq == 7
    entries = chain(10)
    entries[2] = dataclasses.replace(entries[2], at=entries[2].at - 60)
    assert (verify_chain(entries).problem, verify_chain(entries).first_bad_seq) == (
        ChainFault.EDITED,
        3,
    )


def test_an_edited_and_resealed_entry_breaks_the_next_link() -> None:
    entries = chain(10)
    entries[3] = reseal(entries[3], subject="mallory")
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 5)
    assert "entry 4 was rewritten" in report.detail


def test_a_rewritten_last_entry_is_caught_by_the_head() -> None:
    entries = chain(10)
    head = ChainHead(10, entries[-1].hash)
    entries[-1] = reseal(entries[-1], outcome="allow")
    assert verify_chain(entries).ok  # nothing after it to notice …
    report = verify_chain(entries, head=head)  # … but the recorded head does
    assert (report.problem, report.first_bad_seq) == (ChainFault.EDITED, 10)


# ------------------------------------------------------------------ tampering: deleted


@pytest.mark.parametrize("index", [0, 4, 8])
def test_a_deleted_entry_is_named(index: int) -> None:
    entries = chain(10)
    del entries[index]
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq, report.count) == (
        ChainFault.DELETED,
        index + 1,
        index,
    )


def test_several_deleted_entries_are_named_from_the_first() -> None:
    entries = chain(10)
    del entries[4:7]
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.DELETED, 5)
    assert "5–7" in report.detail


def test_a_cut_tail_is_caught_by_the_head() -> None:
    entries = chain(10)
    head = ChainHead(10, entries[-1].hash)
    report = verify_chain(entries[:8], head=head)
    assert (report.problem, report.first_bad_seq, report.count) == (ChainFault.DELETED, 9, 8)


def test_a_deletion_with_renumbering_is_named() -> None:
    entries = chain(10)
    del entries[4]
    entries = entries[:4] + [relabel(entry, entry.seq - 1) for entry in entries[4:]]
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.DELETED, 5)


# ------------------------------------------------------------------ tampering: inserted


def test_a_forged_entry_inserted_before_the_genuine_one_is_named() -> None:
    entries = chain(10)
    entries.insert(4, forged(5, entries[3].hash))
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq, report.count) == (ChainFault.INSERTED, 5, 4)


def test_a_forged_entry_inserted_after_the_genuine_one_is_named() -> None:
    entries = chain(10)
    entries.insert(5, forged(5, entries[3].hash))
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq, report.count) == (ChainFault.INSERTED, 5, 5)


def test_an_insertion_with_renumbering_is_named() -> None:
    entries = chain(10)
    shifted = [relabel(entry, entry.seq + 1) for entry in entries[4:]]
    entries = entries[:4] + [forged(5, entries[3].hash)] + shifted
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq, report.count) == (ChainFault.INSERTED, 5, 4)


def test_an_entry_with_a_foreign_link_is_named() -> None:
    entries = chain(10)
    entries[6] = forged(7, "f" * 64)
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 7)


def test_an_entry_appended_beyond_the_head_is_named() -> None:
    entries = chain(10)
    head = ChainHead(10, entries[-1].hash)
    entries.append(forged(11, entries[-1].hash))
    assert verify_chain(entries).ok  # a well-forged tail is only visible against the head
    report = verify_chain(entries, head=head)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 11)


def test_a_replayed_entry_is_named() -> None:
    entries = chain(10)
    entries.insert(7, entries[2])
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 3)
    assert "second time" in report.detail


# ------------------------------------------------------------------ tampering: reordered


def test_swapped_neighbours_are_named() -> None:
    entries = chain(10)
    entries[4], entries[5] = entries[5], entries[4]
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq, report.count) == (
        ChainFault.REORDERED_SEQ,
        6,
        4,
    )


def test_an_entry_moved_earlier_is_named() -> None:
    entries = chain(10)
    moved = entries.pop(7)
    entries.insert(3, moved)
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.REORDERED_SEQ, 8)


def test_an_entry_moved_later_is_named() -> None:
    entries = chain(10)
    moved = entries.pop(2)
    entries.insert(6, moved)
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.REORDERED_SEQ, 4)
    assert "before entry 3" in report.detail


def test_swapped_seq_labels_are_named() -> None:
    """In a database rows come back in seq order: a reorder swaps the seq values of two rows."""
    entries = chain(10)
    entries[4], entries[5] = relabel(entries[5], 5), relabel(entries[4], 6)
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.REORDERED_SEQ, 5)
    assert "sealed as entry 6" in report.detail


def test_time_going_backwards_is_named_even_in_a_resealed_chain() -> None:
    times = [T0 + n for n in range(10)]
    times[6] = T0 - 3600  # entry 7 claims to be an hour older than entry 6
    entries = seal_chain([event(n + 1, at=at) for n, at in enumerate(times)])
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.REORDERED_TIME, 7)
    assert "older than entry 6" in report.detail


def test_small_clock_differences_between_writers_are_tolerated() -> None:
    times = [T0 + n for n in range(10)]
    times[6] = times[5] - 2.0
    entries = seal_chain([event(n + 1, at=at) for n, at in enumerate(times)])
    assert verify_chain(entries).ok
    assert verify_chain(entries, time_tolerance=1.0).problem is ChainFault.REORDERED_TIME


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=3, max_value=25),
    data=st.data(),
    operation=st.sampled_from(["edit", "delete", "swap"]),
)
def test_any_single_tampering_is_named_at_its_entry(
    size: int, data: st.DataObject, operation: str
) -> None:
    entries = chain(size)
    head = ChainHead(size, entries[-1].hash)
    index = data.draw(st.integers(min_value=0, max_value=size - 2))
    if operation == "edit":
        entries[index] = dataclasses.replace(entries[index], rule="nothing-to-see")
        expected = (ChainFault.EDITED, index + 1)
    elif operation == "delete":
        del entries[index]
        expected = (ChainFault.DELETED, index + 1)
    else:
        entries[index], entries[index + 1] = entries[index + 1], entries[index]
        expected = (ChainFault.REORDERED_SEQ, index + 2)
    report = verify_chain(entries, head=head)
    assert (report.problem, report.first_bad_seq) == expected
    assert report.count == index


def test_raise_for_problem() -> None:
    entries = chain(5)
    verify_chain(entries).raise_for_problem()
    del entries[2]
    with pytest.raises(AuditIntegrityError, match="deleted at entry 3"):
        verify_chain(entries).raise_for_problem()


# ------------------------------------------------------------------ checkpoints


def test_a_pruned_chain_verifies_from_its_checkpoint() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(20)
    last_pruned = entries[11]
    checkpoint = sign_checkpoint(
        seq=12, hash=last_pruned.hash, at=last_pruned.at, count_pruned=12, signing_key=key
    )
    verify_checkpoint(checkpoint, public_key=key.public_key())
    remaining = entries[12:]
    assert verify_chain(remaining, anchor=checkpoint).ok
    assert verify_chain(remaining).problem is ChainFault.DELETED  # no anchor: 1–12 are missing
    assert verify_chain([], anchor=checkpoint, head=ChainHead(12, last_pruned.hash)).ok


def test_a_chain_that_does_not_continue_from_the_checkpoint_fails() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(20)
    wrong = sign_checkpoint(
        seq=12, hash="e" * 64, at=entries[11].at, count_pruned=12, signing_key=key
    )
    report = verify_chain(entries[12:], anchor=wrong)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 13)
    right = sign_checkpoint(
        seq=12, hash=entries[11].hash, at=entries[11].at, count_pruned=12, signing_key=key
    )
    report = verify_chain([entries[3], *entries[12:]], anchor=right)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 4)
    report = verify_chain(entries[13:], anchor=right)
    assert (report.problem, report.first_bad_seq) == (ChainFault.DELETED, 13)


def test_a_forged_checkpoint_fails() -> None:
    key = Ed25519PrivateKey.generate()
    good = sign_checkpoint(seq=12, hash="a" * 64, at=T0, count_pruned=12, signing_key=key)
    forgeries = [
        dataclasses.replace(good, seq=20),
        dataclasses.replace(good, hash="b" * 64),
        dataclasses.replace(good, at=T0 + 1),
        dataclasses.replace(good, count_pruned=1),
        dataclasses.replace(good, signature=good.signature[:-4] + "AAAA"),
        dataclasses.replace(good, signature="not base64!"),
        sign_checkpoint(
            seq=12, hash="a" * 64, at=T0, count_pruned=12, signing_key=Ed25519PrivateKey.generate()
        ),
    ]
    for forgery in forgeries:
        with pytest.raises(VerificationFailed):
            verify_checkpoint(forgery, public_key=key.public_key())


def test_keys_round_trip_through_pem() -> None:
    from stepguard.audit.commands import generate_signing_key_pem

    key = load_signing_key(generate_signing_key_pem())
    public = load_public_key(public_key_pem(key))
    checkpoint = sign_checkpoint(seq=1, hash="a" * 64, at=T0, count_pruned=1, signing_key=key)
    verify_checkpoint(checkpoint, public_key=public)


# ------------------------------------------------------------------ no secrets in the ledger


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "new_password",
        "passwd",
        "recoveryCode",
        "recovery_code",
        "code",
        "otp",
        "totp",
        "totp_secret",
        "otpauth_uri",
        "csrf_token",
        "accessToken",
        "secret",
        "client_secret",
        "set-cookie",
        "Cookie",
        "authorization",
        "Authorization",
        "credential",
        "credential_id",
        "assertion",
        "clientDataJSON_assertion",
        "passcode",
        "api_key",
        "seed",
        "pin",
    ],
)
def test_secret_looking_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "amount",
        "payee",
        "method",
        "country",
        "factor",
        "ip",
        "rule",
        "level",
        "scope",
        "reason",
        "aaguid",
        "user_agent",
        "attempts",
    ],
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_drops_secrets_recursively() -> None:
    raw = {
        "amount": 5000,
        "password": "hunter2",
        "nested": {"otp": "123456", "payee": "ACME", "deeper": [{"token": "t"}, "ok"]},
        "header": "Bearer eyJhbGciOi",
        "link": "/reset?token=abc",
        "key": "-----BEGIN PRIVATE KEY-----\nMC4C...",
        "list": ["fine", "Basic dXNlcjpwYXNz"],
    }
    assert redact(raw) == {
        "amount": 5000,
        "nested": {"payee": "ACME", "deeper": [{}, "ok"]},
        "list": ["fine"],
    }


def test_events_are_redacted_on_construction() -> None:
    made = AuditEvent(
        at=T0,
        kind="verification",
        request={"method": "POST", "path": "/step-up/c1?code=123456", "cookie": "sid=1"},
        reasons=("password=hunter2", "Wrong code"),
        detail={"code": "123456", "factor_id": "f1"},
    )
    assert dict(made.request) == {"method": "POST", "path": "/step-up/c1"}
    assert made.reasons == ("Wrong code",)
    assert dict(made.detail) == {"factor_id": "f1"}


def test_events_refuse_a_raw_session_id_and_bad_values() -> None:
    with pytest.raises(ValueError, match="session_ref"):
        AuditEvent(at=T0, kind="session", session="raw-session-token-value")
    AuditEvent(at=T0, kind="session", session=session_ref("raw-session-token-value", key=KEY))
    with pytest.raises(ValueError):
        AuditEvent(at=T0, kind="Not A Kind")
    with pytest.raises(ValueError):
        AuditEvent(at=T0, kind="admin", subject="x" * 256)
    with pytest.raises(TypeError):
        AuditEvent(at=T0, kind="admin", detail={"raw": b"bytes"})


def test_pseudonymised_ips_are_keyed_stable_and_canonical() -> None:
    first = pseudonymise_ip("2001:db8::1", key=KEY)
    assert first.startswith("ip:") and "2001" not in first
    assert pseudonymise_ip("2001:0db8:0000::0001", key=KEY) == first
    assert pseudonymise_ip("2001:db8::1", key=b"o" * 32) != first
    assert pseudonymise_ip("10.0.0.1", key=KEY) != pseudonymise_ip("10.0.0.2", key=KEY)
    with pytest.raises(ValueError):
        pseudonymise_ip("10.0.0.1", key=b"short")


def test_session_refs_are_keyed_and_short() -> None:
    ref = session_ref("token-abc", key=KEY)
    assert ref.startswith("s:") and len(ref) == 26 and "token" not in ref
    assert ref == session_ref("token-abc", key=KEY) != session_ref("token-abd", key=KEY)
    assert session_ref("", key=KEY) == ""


def test_request_summary_drops_the_query_and_can_pseudonymise() -> None:
    request = RequestContext(
        method="POST",
        host="bank.example",
        path="/transfer",
        query="otp=123456",
        client_ip="203.0.113.9",
        action="payments.transfer",
    )
    plain = request_summary(request)
    assert plain == {
        "method": "POST",
        "host": "bank.example",
        "path": "/transfer",
        "client_ip": "203.0.113.9",
        "action": "payments.transfer",
    }
    hidden = request_summary(request, ip_key=KEY)
    assert hidden["client_ip"] == pseudonymise_ip("203.0.113.9", key=KEY)


def test_the_package_exports_exactly_its_public_api() -> None:
    import stepguard.audit as audit

    assert sorted(audit.__all__) == audit.__all__
    for name in audit.__all__:
        assert getattr(audit, name).__module__.startswith("stepguard.audit."), name
    public = {name for name in vars(audit) if not name.startswith("_")}
    assert public - set(audit.__all__) <= {"commands", "export", "ledger", "memory", "replay",
                                           "summary", "writer"}
