"""The ledger's verification report, word for word: an operator reads `stepguard audit verify`'s
one line to know what happened and where, so each tampering's whole verdict is pinned here (its
kind, entry, count and explanation), with the bounds of the diagnosis (how far a moved entry is
searched for, how many hashes are remembered to recognise a replay, the clock tolerance)."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stepguard.audit.ledger import (
    GENESIS_HASH,
    AuditEntry,
    ChainFault,
    ChainHead,
    VerifyReport,
    checkpoint_payload,
    entry_hash,
    seal,
    seal_chain,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)
from stepguard.core.errors import VerificationFailed
from tests.unit.test_audit_ledger import T0, chain, event, forged, relabel, reseal


def verdict(report: VerifyReport) -> tuple[str, int]:
    return str(report), report.count


def test_an_edited_entry() -> None:
    entries = chain(10)
    entries[3] = dataclasses.replace(entries[3], subject="mallory")
    assert verdict(verify_chain(entries)) == (
        "edited at entry 4: entry 4's content does not match its hash", 3)


def test_an_entry_beyond_the_head() -> None:
    entries = chain(10)
    head = ChainHead(10, entries[-1].hash)
    entries.append(forged(11, entries[-1].hash))
    assert verdict(verify_chain(entries, head=head)) == (
        "inserted at entry 11: entry 11 lies beyond the chain head (entry 10)", 10)


def test_deleted_entries() -> None:
    entries = chain(10)
    del entries[4]
    assert verdict(verify_chain(entries)) == (
        "deleted at entry 5: entry 5 is missing before entry 6", 4)
    entries = chain(10)
    del entries[4:6]
    assert verdict(verify_chain(entries)) == (
        "deleted at entry 5: entries 5–6 are missing before entry 7", 4)


def test_a_deletion_is_not_taken_for_a_move_by_a_later_copy_of_the_next_entry() -> None:
    entries = chain(10)
    del entries[4]
    entries.insert(6, entries[4])  # entry 6 again, after 7
    assert verdict(verify_chain(entries)) == (
        "deleted at entry 5: entry 5 is missing before entry 6", 4)


def test_renumbered_entries() -> None:
    entries = chain(10)
    up = entries[:4] + [relabel(entry, entry.seq + 1) for entry in entries[4:]]
    assert verdict(verify_chain(up)) == (
        "inserted at entry 5: an entry was inserted at 5 (later entries were renumbered up)", 4)
    del entries[4]
    down = entries[:4] + [relabel(entry, entry.seq - 1) for entry in entries[4:]]
    assert verdict(verify_chain(down)) == (
        "deleted at entry 5: entry 5 is missing (later entries were renumbered down)", 4)


def test_forks() -> None:
    entries = chain(10)
    entries.insert(4, forged(5, entries[3].hash))
    assert verdict(verify_chain(entries)) == (
        "inserted at entry 5: entry 5 is not part of the chain: entry 5 links past it", 4)
    entries = chain(10)
    entries.insert(5, forged(5, entries[3].hash))
    assert verdict(verify_chain(entries)) == (
        "inserted at entry 5: entry 5 is not part of the chain: it links to the same "
        "predecessor as entry 5", 5)


def test_a_replay_and_a_foreign_copy() -> None:
    entries = chain(10)
    entries.insert(7, entries[2])
    assert verdict(verify_chain(entries)) == (
        "inserted at entry 3: entry 3 appears a second time after entry 7", 7)
    entries = chain(10)
    entries.insert(7, forged(3, entries[1].hash))  # a second, different entry 3
    assert verdict(verify_chain(entries)) == (
        "reordered_seq at entry 3: entry 3 appears after entry 7", 7)


def test_swapped_labels_of_the_first_entries() -> None:
    entries = chain(10)
    entries[0], entries[1] = relabel(entries[1], 1), relabel(entries[0], 2)
    assert verdict(verify_chain(entries)) == (
        "reordered_seq at entry 1: entry 1 holds the content sealed as entry 2", 0)


def test_broken_links() -> None:
    entries = chain(10)
    entries[6] = forged(7, "f" * 64)
    assert verdict(verify_chain(entries)) == (
        "inserted at entry 7: entry 7 does not link to entry 6 (prev_hash differs): it was "
        "inserted or replaced, or entry 6 was rewritten", 6)
    entries = chain(10)
    entries[0] = forged(1, "f" * 64)
    assert verdict(verify_chain(entries)) == (
        "inserted at entry 1: entry 1 does not continue from the chain's start (genesis at "
        "entry 0)", 0)


def test_the_head() -> None:
    entries = chain(10)
    head = ChainHead(10, entries[-1].hash)
    assert verdict(verify_chain(entries[:8], head=head)) == (
        "deleted at entry 9: entries 9–10 are missing (the tail was cut)", 8)
    entries[-1] = reseal(entries[-1], outcome="allow")
    assert verdict(verify_chain(entries, head=head)) == (
        "edited at entry 10: entry 10 does not match the recorded chain head", 10)


def test_checkpoints() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(20)
    wrong = sign_checkpoint(seq=12, hash="e" * 64, at=entries[11].at, count_pruned=12,
                            signing_key=key)
    assert verdict(verify_chain(entries[12:], anchor=wrong)) == (
        "inserted at entry 13: entry 13 does not continue from the chain's start (checkpoint "
        "at entry 12)", 0)
    right = sign_checkpoint(seq=12, hash=entries[11].hash, at=entries[11].at, count_pruned=12,
                            signing_key=key)
    assert verdict(verify_chain([entries[3], *entries[12:]], anchor=right)) == (
        "inserted at entry 4: entry 4 precedes the checkpoint at entry 12", 0)


def test_time_is_checked_from_the_checkpoint_on() -> None:
    key = Ed25519PrivateKey.generate()
    times = [T0 + n for n in range(20)]
    times[12] = T0 - 3600  # the first entry after the checkpoint claims an hour before it
    entries = seal_chain([event(n + 1, at=at) for n, at in enumerate(times)])
    anchor = sign_checkpoint(seq=12, hash=entries[11].hash, at=entries[11].at, count_pruned=12,
                             signing_key=key)
    report = verify_chain(entries[12:], anchor=anchor)
    assert (report.problem, report.first_bad_seq) == (ChainFault.REORDERED_TIME, 13)


def test_the_clock_tolerance_is_inclusive() -> None:
    times = [T0 + n for n in range(10)]
    times[6] = times[5] - 2.0
    entries = seal_chain([event(n + 1, at=at) for n, at in enumerate(times)])
    assert verify_chain(entries, time_tolerance=2.0).ok
    assert verdict(verify_chain(entries, time_tolerance=1.5)) == (
        "reordered_time at entry 7: entry 7 is 2.000s older than entry 6 (tolerance 1.5s)", 6)


@pytest.mark.parametrize(("distance", "kind"), [(1, ChainFault.REORDERED_SEQ),
                                                (511, ChainFault.REORDERED_SEQ),
                                                (512, ChainFault.REORDERED_SEQ),
                                                (513, ChainFault.EDITED)])
def test_a_moved_entry_is_recognised_up_to_512_places_away(distance: int,
                                                           kind: ChainFault) -> None:
    """Within 512 places the row is diagnosed as moved (its kind depends on the pattern);
    beyond, its hash is not searched for and it reads as edited."""
    entries = chain(distance + 2)
    entries[1] = relabel(entries[1 + distance], 2)  # entry 2+distance's row carries seq 2
    report = verify_chain(entries)
    assert report.first_bad_seq == 2
    assert (report.problem is ChainFault.EDITED) is (kind is ChainFault.EDITED)
    entries = chain(distance + 2)
    entries[-1] = relabel(entries[1], distance + 2)  # entry 2's row carries the last seq
    report = verify_chain(entries)
    assert report.first_bad_seq == distance + 2
    assert (report.problem is ChainFault.EDITED) is (kind is ChainFault.EDITED)


def replayed(entries: list[AuditEntry], index: int) -> VerifyReport:
    return verify_chain([*entries, entries[index]])


def test_a_replay_is_recognised_among_the_last_4096_entries() -> None:
    entries = chain(4097)
    assert replayed(entries, 1).detail == "entry 2 appears a second time after entry 4097"
    assert replayed(entries, 0).detail == "entry 1 appears after entry 4097"  # forgotten


def test_exactly_the_last_remembered_hashes_are_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bound, made small: the last N entries are remembered, the one before is not."""
    from stepguard.audit import ledger

    monkeypatch.setattr(ledger, "_RECENT_HASHES", 3)
    entries = chain(4)
    assert replayed(entries, 1).detail == "entry 2 appears a second time after entry 4"
    assert replayed(entries, 0).detail == "entry 1 appears after entry 4"


def test_a_ledger_sealed_once_verifies_forever() -> None:
    """The sealed form is an on-disk format: a ledger written today must verify with any later
    release. These test vectors change only with a new domain tag (…-v2)."""
    assert seal(event(1), seq=1, prev_hash=GENESIS_HASH).hash == (
        "f49a534404908641fd69ea9f9deb8f019e609bb208960b0d77b94126187a7497")
    assert checkpoint_payload(seq=12, hash="a" * 64, at=1714564812.25, count_pruned=12) == (
        b'stepguard-audit-checkpoint-v1\n{"at":1714564812.25,"count_pruned":12,"hash":"'
        + b"a" * 64 + b'","seq":12}')


def test_a_value_json_cannot_carry_is_never_sealed() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        entry_hash({"detail": {"x": float("nan")}}, seq=1, prev_hash=GENESIS_HASH)


def test_a_bad_checkpoint_signature_is_a_verification_failure() -> None:
    key = Ed25519PrivateKey.generate()
    checkpoint = sign_checkpoint(seq=3, hash="a" * 64, at=T0, count_pruned=3, signing_key=key)
    for bad in (dataclasses.replace(checkpoint, count_pruned=4),
                dataclasses.replace(checkpoint, signature="!" + checkpoint.signature[1:])):
        with pytest.raises(VerificationFailed) as refused:
            verify_checkpoint(bad, public_key=key.public_key())
        assert (str(refused.value), refused.value.code) == (
            "the audit checkpoint signature is not valid", "checkpoint")


def test_a_failed_verdict_is_false() -> None:
    entries = chain(3)
    del entries[1]
    assert verify_chain(entries).ok is False
    assert verify_chain(entries, head=ChainHead(3, entries[-1].hash)).ok is False
    assert verify_chain(chain(3)[:2], head=ChainHead(3, "a" * 64)).ok is False


def test_the_first_entry_moved_is_still_recognised() -> None:
    entries = chain(5)
    entries[0] = relabel(entries[0], 2)  # entry 1's row now says 2: its seal is found at 1
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == (ChainFault.INSERTED, 1)


def test_lookahead_peeks_without_losing_an_item() -> None:
    from stepguard.audit.ledger import _Lookahead

    entries = chain(3)
    stream = _Lookahead(entries)
    assert stream.peek() is entries[0]
    assert stream.peek() is entries[0]
    assert list(stream) == entries
    assert stream.peek() is None
