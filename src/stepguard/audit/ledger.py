"""The audit ledger's pure core: events, hash-chained entries, chain verification, checkpoints.

No clock and no I/O: the caller gives every time (`at`, float epoch seconds, UTC). An entry's
hash is SHA-256 over a canonical JSON form (sorted keys, no whitespace, floats as `repr`) of every
field and the previous entry's hash, so editing, deleting, inserting or reordering an entry breaks
the chain at that entry. A signed checkpoint lets a pruned ledger still verify from where it was
cut.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stepguard.core.context import RequestContext
from stepguard.core.errors import AuditIntegrityError, VerificationFailed

GENESIS_HASH = "0" * 64
DEFAULT_TIME_TOLERANCE = 300.0  # seconds an entry may precede the one before it (queued writers)



class AuditKind(StrEnum):
    """Every kind of audit entry (a closed set: an event of any other kind is refused)."""

    DECISION = "decision"  # allow / step up / deny for one request (or a summary of allows)
    CHALLENGE = "challenge"  # a step-up challenge was started
    VERIFICATION = "verification"  # a factor was checked (passed or failed)
    ENROLMENT = "enrolment"  # a factor was added or removed
    SESSION = "session"  # signed in, signed out, revoked
    ADMIN = "admin"  # an operator's action (users, keys, pruning)
    CHECKPOINT = "checkpoint"  # a signed retention checkpoint


KNOWN_KINDS = frozenset(kind.value for kind in AuditKind)

REQUEST_FIELDS = ("method", "host", "path", "client_ip", "action", "statement")

_ENTRY_DOMAIN = b"stepguard-audit-entry-v1\n"
_CHECKPOINT_DOMAIN = b"stepguard-audit-checkpoint-v1\n"
_HASH = re.compile(r"[0-9a-f]{64}")
_SESSION_REF = re.compile(r"s:[0-9a-f]{24}")
_SEAL_SEARCH = 512  # how far from its label an entry's sealed seq is searched for (diagnosis)
_RECENT_HASHES = 4096  # hashes remembered to recognise a replayed (duplicated) entry
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_TEXT_LIMITS = {"subject": 255, "decision": 32, "rule": 255, "factor": 32, "outcome": 64}

# Keys whose values are never written to the ledger (SECURITY 17). Long markers match anywhere in
# the key (separators removed); short ones match a whole word or a word's end (`passcode`, `totp`).
_SECRET_SUBSTRINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "assertion",
    "cookie",
    "authorization",
    "apikey",
    "privatekey",
)
_SECRET_WORD_ENDS = ("code", "otp", "seed", "pin")
_SECRET_VALUE = re.compile(
    r"^\s*(bearer|basic|digest)\s+\S"
    r"|(password|passwd|secret|token|code|otp|credential|assertion)="
    r"|PRIVATE KEY-----",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- privacy helpers


def redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without secret-looking keys or values, recursively (the ledger holds no secret)."""
    return {
        str(key): _redact_value(value)
        for key, value in mapping.items()
        if not is_secret_key(str(key)) and not _is_secret_value(value)
    }


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a key names something secret (password, code, token, otp, cookie, …).
    Cached: the same few keys come with every event."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key).lower()
    joined = re.sub(r"[^a-z0-9]", "", spaced)
    if any(marker in joined for marker in _SECRET_SUBSTRINGS):
        return True
    words = [word for word in re.split(r"[^a-z0-9]+", spaced) if word]
    return any(word.endswith(_SECRET_WORD_ENDS) or word.startswith("otp") for word in words)


def _is_secret_value(value: Any) -> bool:
    return isinstance(value, str) and _SECRET_VALUE.search(value) is not None


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value if not _is_secret_value(item)]
    return value


def pseudonymise_ip(ip: str, *, key: bytes) -> str:
    """`ip:` + a truncated HMAC-SHA256 of the canonical address: stable per key, not reversible."""
    _check_key(key)
    try:
        canonical = ipaddress.ip_address(ip.strip()).compressed
    except ValueError:
        canonical = ip.strip()
    return "ip:" + hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()[:20]


def session_ref(session_id: str, *, key: bytes) -> str:
    """A keyed short hash naming a session in the ledger (never the session id or token itself)."""
    _check_key(key)
    if not session_id:
        return ""
    return "s:" + hmac.new(key, session_id.encode(), hashlib.sha256).hexdigest()[:24]


def request_summary(request: RequestContext, *, ip_key: bytes | None = None) -> dict[str, str]:
    """The request fields an audit entry keeps: method, host, path (no query), client ip, action.

    With `ip_key` the client IP is pseudonymised (`pseudonymise_ip`), as GDPR setups configure.
    """
    ip = request.client_ip
    if ip and ip_key is not None:
        ip = pseudonymise_ip(ip, key=ip_key)
    if request.door == "postgres":  # the database door: kind, database, statement text
        facts = request.statement
        return {"method": str(facts.get("kind", "")).upper(), "host": str(facts.get("database")),
                "path": "", "client_ip": ip, "action": "postgres",
                "statement": str(facts.get("text", ""))[:2000]}
    return {
        "method": request.method,
        "host": request.host,
        "path": request.path,
        "client_ip": ip,
        "action": request.action,
    }


def _check_key(key: bytes) -> None:
    if len(key) < 16:
        raise ValueError("a pseudonymisation key needs at least 16 bytes")


# --------------------------------------------------------------------------- events and entries


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """What a caller submits to the ledger; it becomes an `AuditEntry` once sealed.

    Construction enforces the ledger's rules: `at` is finite and kept to the microsecond (so an
    ISO-8601 export round-trips exactly), `request` keeps only `REQUEST_FIELDS` (a path loses its
    query), and `request`, `reasons` and `detail` lose anything secret-looking (`redact`).
    """

    at: float
    kind: str
    subject: str = ""
    session: str = ""
    request: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    decision: str = ""
    rule: str = ""
    reasons: tuple[str, ...] = ()
    factor: str = ""
    outcome: str = ""
    detail: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def unchecked(cls, *, at: float, kind: AuditKind, subject: str = "", session: str = "",
                  request: Mapping[str, str] = _EMPTY, decision: str = "", rule: str = "",
                  reasons: tuple[str, ...] = (), factor: str = "", outcome: str = "",
                  detail: Mapping[str, Any] = _EMPTY) -> AuditEvent:
        """An event built without its checks (no regex, no copies): cheap enough for every
        request. It must go through `checked()` before it is sealed or logged; the audit writer
        does that in its own thread (`AuditWriter`)."""
        event = object.__new__(cls)
        for name, value in (("at", at), ("kind", kind), ("subject", subject),
                            ("session", session), ("request", request), ("decision", decision),
                            ("rule", rule), ("reasons", reasons), ("factor", factor),
                            ("outcome", outcome), ("detail", detail)):
            object.__setattr__(event, name, value)
        return event

    def checked(self) -> AuditEvent:
        """This event with every construction rule applied (raises `ValueError` if it breaks
        one): what `unchecked` skipped."""
        return AuditEvent(at=self.at, kind=self.kind, subject=self.subject, session=self.session,
                          request=self.request, decision=self.decision, rule=self.rule,
                          reasons=self.reasons, factor=self.factor, outcome=self.outcome,
                          detail=self.detail)

    def _check(self) -> None:
        if self.kind not in KNOWN_KINDS:
            raise ValueError(f"invalid audit entry kind {self.kind!r}")
        object.__setattr__(self, "kind", AuditKind(self.kind).value)
        if self.session and not _SESSION_REF.fullmatch(self.session):
            raise ValueError("an audit event's session must be a session_ref(), never a raw id")
        object.__setattr__(self, "at", normalise_time(self.at))
        object.__setattr__(self, "request", _clean_request(self.request))
        object.__setattr__(self, "reasons", _clean_reasons(self.reasons))
        detail = _resolved(self.detail)
        object.__setattr__(self, "detail", MappingProxyType(_json_normal(redact(detail))))
        for name, limit in _TEXT_LIMITS.items():
            value = str(getattr(self, name))
            if len(value) > limit:
                raise ValueError(f"an audit event's {name} is longer than {limit} characters")
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One ledger record: an event plus its position (`seq`) and its link in the hash chain."""

    seq: int
    at: float
    kind: str
    subject: str
    session: str
    request: Mapping[str, str]
    decision: str
    rule: str
    reasons: tuple[str, ...]
    factor: str
    outcome: str
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str


def _resolved(detail: Mapping[str, Any]) -> Mapping[str, Any]:
    """The detail with deferred values (objects with `as_json`, such as the decision inputs the
    hot path passes by reference) turned into JSON values, here in the checking thread."""
    if not any(hasattr(value, "as_json") for value in detail.values()):
        return detail
    return {key: value.as_json() if hasattr(value, "as_json") else value
            for key, value in detail.items()}


def normalise_time(at: float) -> float:
    """`at` rounded to the microsecond; refuses NaN and infinities."""
    value = float(at)
    if not math.isfinite(value):
        raise ValueError("an audit time must be a finite epoch value")
    return round(value, 6)


def _clean_request(request: Mapping[str, Any]) -> Mapping[str, str]:
    kept = {name: str(request.get(name, "") or "") for name in REQUEST_FIELDS}
    kept["path"] = kept["path"].split("?", 1)[0].split("#", 1)[0]
    return MappingProxyType({k: v for k, v in kept.items() if v and not _is_secret_value(v)})


def _clean_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    if isinstance(reasons, str):
        reasons = (reasons,)
    return tuple(str(reason) for reason in reasons if not _is_secret_value(str(reason)))


def _json_normal(value: dict[str, Any]) -> dict[str, Any]:
    """The value as JSON would give it back (tuples become lists, enums their values).
    Plain JSON values (the usual case) are returned as they are, without a round trip."""
    if all(_is_plain(v) for v in value.values()):
        return value
    normal: dict[str, Any] = json.loads(_canonical(value))
    return normal


def _is_plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or kind is int or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    return kind is list and all(type(item) is str for item in value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_fields(entry: AuditEvent | AuditEntry) -> dict[str, Any]:
    """The sealed content of an event or entry, as JSON-ready values (no seq, no hashes)."""
    return {
        "at": entry.at,
        "kind": entry.kind,
        "subject": entry.subject,
        "session": entry.session,
        "request": dict(entry.request),
        "decision": entry.decision,
        "rule": entry.rule,
        "reasons": list(entry.reasons),
        "factor": entry.factor,
        "outcome": entry.outcome,
        "detail": dict(entry.detail),
    }


def entry_hash(content: Mapping[str, Any], *, seq: int, prev_hash: str) -> str:
    """SHA-256 (hex) over the canonical JSON of the content, `seq` and `prev_hash`."""
    sealed = {**content, "seq": seq, "prev_hash": prev_hash}
    return hashlib.sha256(_ENTRY_DOMAIN + _canonical(sealed).encode()).hexdigest()


def seal(event: AuditEvent, *, seq: int, prev_hash: str) -> AuditEntry:
    """The event as entry `seq`, chained to the entry whose hash is `prev_hash`."""
    if seq < 1:
        raise ValueError("audit entries are numbered from 1")
    if not _HASH.fullmatch(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex digits")
    content = content_fields(event)
    digest = entry_hash(content, seq=seq, prev_hash=prev_hash)
    return AuditEntry(
        seq=seq,
        at=event.at,
        kind=event.kind,
        subject=event.subject,
        session=event.session,
        request=event.request,
        decision=event.decision,
        rule=event.rule,
        reasons=event.reasons,
        factor=event.factor,
        outcome=event.outcome,
        detail=event.detail,
        prev_hash=prev_hash,
        hash=digest,
    )


def seal_chain(
    events: Iterable[AuditEvent], *, after_seq: int = 0, prev_hash: str = GENESIS_HASH
) -> list[AuditEntry]:
    """Seal events one after another, continuing a chain whose last entry is `after_seq`."""
    entries: list[AuditEntry] = []
    for event in events:
        entry = seal(event, seq=after_seq + len(entries) + 1, prev_hash=prev_hash)
        entries.append(entry)
        prev_hash = entry.hash
    return entries


def entry_record(entry: AuditEntry) -> dict[str, Any]:
    """Every field of the entry as JSON-ready values, in field order."""
    return {
        "seq": entry.seq,
        **content_fields(entry),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def entry_from_record(record: Mapping[str, Any]) -> AuditEntry:
    """Rebuild an entry from `entry_record` output (stored row or export line), checking types.

    Raises `AuditIntegrityError` when a field is missing or has the wrong type; the content itself
    is not judged here (that is `verify_chain`'s job).
    """
    try:
        return AuditEntry(
            seq=_typed(record["seq"], int),
            at=float(_typed(record["at"], int | float)),
            kind=_typed(record["kind"], str),
            subject=_typed(record["subject"], str),
            session=_typed(record["session"], str),
            request=MappingProxyType(_typed(record["request"], dict)),
            decision=_typed(record["decision"], str),
            rule=_typed(record["rule"], str),
            reasons=tuple(_typed(record["reasons"], list)),
            factor=_typed(record["factor"], str),
            outcome=_typed(record["outcome"], str),
            detail=MappingProxyType(_typed(record["detail"], dict)),
            prev_hash=_typed(record["prev_hash"], str),
            hash=_typed(record["hash"], str),
        )
    except (KeyError, TypeError) as error:
        raise AuditIntegrityError(f"malformed audit entry: {error}") from None


def _typed(value: Any, kind: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A position in the chain: the last entry's seq and hash (and its time, when known)."""

    seq: int
    hash: str
    at: float | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that entries up to `seq` existed, the last one hashing to `hash`.

    `at` is that entry's time; `count_pruned` how many entries the prune that made it removed;
    `signature` the base64url Ed25519 signature over all four.
    """

    seq: int
    hash: str
    at: float
    count_pruned: int
    signature: str


def checkpoint_payload(*, seq: int, hash: str, at: float, count_pruned: int) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    body = {"seq": seq, "hash": hash, "at": at, "count_pruned": count_pruned}
    return _CHECKPOINT_DOMAIN + _canonical(body).encode()


def sign_checkpoint(
    *, seq: int, hash: str, at: float, count_pruned: int, signing_key: Ed25519PrivateKey
) -> Checkpoint:
    """A checkpoint at entry `seq`, signed with the ledger's Ed25519 key."""
    payload = checkpoint_payload(seq=seq, hash=hash, at=at, count_pruned=count_pruned)
    signature = base64.urlsafe_b64encode(signing_key.sign(payload)).decode().rstrip("=")
    return Checkpoint(seq, hash, at, count_pruned, signature)


def verify_checkpoint(checkpoint: Checkpoint, *, public_key: Ed25519PublicKey) -> None:
    """Raise `VerificationFailed` unless the checkpoint carries a valid signature by this key."""
    payload = checkpoint_payload(
        seq=checkpoint.seq,
        hash=checkpoint.hash,
        at=checkpoint.at,
        count_pruned=checkpoint.count_pruned,
    )
    try:
        signature = base64.urlsafe_b64decode(
            checkpoint.signature + "=" * (-len(checkpoint.signature) % 4)
        )
        public_key.verify(signature, payload)
    except (InvalidSignature, ValueError):
        raise VerificationFailed(
            "the audit checkpoint signature is not valid", code="checkpoint"
        ) from None


def load_signing_key(pem: bytes, *, password: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8)."""
    key = serialization.load_pem_private_key(pem, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the audit signing key must be an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo)."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the audit verification key must be an Ed25519 key")
    return key


def public_key_pem(signing_key: Ed25519PrivateKey) -> bytes:
    """The PEM of the public half, for whoever verifies the ledger."""
    return signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------------- verification


class ChainFault(StrEnum):
    """What is wrong at the first bad entry."""

    EDITED = "edited"  # its content no longer matches its hash
    DELETED = "deleted"  # entries are missing (seq gap, or the tail is shorter than the head)
    INSERTED = "inserted"  # an entry that is not part of the chain (prev_hash link broken)
    REORDERED_SEQ = "reordered_seq"  # entries out of sequence order (or carrying another's seq)
    REORDERED_TIME = "reordered_time"  # time goes backwards by more than the tolerance
    BAD_CHECKPOINT = "bad_checkpoint"  # the checkpoint the ledger starts from is not validly signed


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The verdict on a ledger: `count` entries verified before the first bad one (if any)."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: ChainFault | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.count} entries verified"
        assert self.problem is not None
        return f"{self.problem.value} at entry {self.first_bad_seq}: {self.detail}"

    def raise_for_problem(self) -> None:
        """Raise `AuditIntegrityError` naming the first bad entry, unless the ledger verified."""
        if not self.ok:
            raise AuditIntegrityError(str(self))


@dataclass(frozen=True, slots=True)
class _Link:
    seq: int
    hash: str
    at: float | None
    prev_hash: str | None  # None for the starting point (genesis or checkpoint)


@dataclass(frozen=True, slots=True)
class _Fault:
    problem: ChainFault
    seq: int
    detail: str
    blames_previous: bool = False


class _Lookahead:
    """An iterator that can peek at the next item and search the rest (for diagnosis only)."""

    def __init__(self, items: Iterable[AuditEntry]) -> None:
        self._items = iter(items)
        self._buffer: deque[AuditEntry] = deque()

    def __iter__(self) -> Iterator[AuditEntry]:
        return self

    def __next__(self) -> AuditEntry:
        return self._buffer.popleft() if self._buffer else next(self._items)

    def peek(self) -> AuditEntry | None:
        if not self._buffer:
            item = next(self._items, None)
            if item is None:
                return None
            self._buffer.append(item)
        return self._buffer[0]

    def any_later(self, test: Callable[[AuditEntry], bool]) -> bool:
        return any(test(entry) for entry in self)


def verify_chain(
    entries: Iterable[AuditEntry],
    *,
    anchor: Checkpoint | ChainHead | None = None,
    head: ChainHead | None = None,
    time_tolerance: float = DEFAULT_TIME_TOLERANCE,
) -> VerifyReport:
    """Check that `entries` (in stored order) form one unbroken chain; name the first bad entry.

    The chain starts at genesis (seq 1, prev_hash all zeros) or, for a pruned ledger, at `anchor`
    (a checkpoint whose signature the caller has verified). With `head` (the store's recorded
    chain head) a truncated or extended tail is caught too. The problem kinds are `ChainFault`.
    """
    stream = _Lookahead(entries)
    prev = _start_link(anchor)
    recent: dict[str, int] = {}
    count = 0
    for entry in stream:
        fault = _check_entry(entry, prev, stream, recent, head, time_tolerance)
        if fault is not None:
            verified = count - 1 if fault.blames_previous else count
            return VerifyReport(False, verified, fault.seq, fault.problem, fault.detail)
        count += 1
        prev = _Link(entry.seq, entry.hash, entry.at, entry.prev_hash)
        _remember(recent, entry)
    fault = _check_head(prev, head)
    if fault is not None:
        return VerifyReport(False, count, fault.seq, fault.problem, fault.detail)
    return VerifyReport(True, count)


def _start_link(anchor: Checkpoint | ChainHead | None) -> _Link:
    if anchor is None:
        return _Link(0, GENESIS_HASH, None, None)
    return _Link(anchor.seq, anchor.hash, anchor.at, None)


def _remember(recent: dict[str, int], entry: AuditEntry) -> None:
    recent[entry.hash] = entry.seq
    if len(recent) > _RECENT_HASHES:
        del recent[next(iter(recent))]


def _check_entry(
    entry: AuditEntry,
    prev: _Link,
    stream: _Lookahead,
    recent: dict[str, int],
    head: ChainHead | None,
    tolerance: float,
) -> _Fault | None:
    sealed = _sealed_seq(entry)
    if sealed is None:
        return _Fault(
            ChainFault.EDITED, entry.seq, f"entry {entry.seq}'s content does not match its hash"
        )
    if head is not None and entry.seq > head.seq:
        return _Fault(
            ChainFault.INSERTED,
            entry.seq,
            f"entry {entry.seq} lies beyond the chain head (entry {head.seq})",
        )
    if sealed == entry.seq and entry.seq == prev.seq + 1 and entry.prev_hash == prev.hash:
        return _check_time(entry, prev, tolerance)
    return _diagnose(entry, sealed, prev, stream, recent)


def _sealed_seq(entry: AuditEntry) -> int | None:
    """The seq under which the entry's hash verifies: its own, a nearby one (moved), or None."""
    content = content_fields(entry)
    for seq in _seal_candidates(entry.seq):
        digest = entry_hash(content, seq=seq, prev_hash=entry.prev_hash)
        if hmac.compare_digest(digest, entry.hash):
            return seq
    return None


def _seal_candidates(seq: int) -> Iterator[int]:
    yield seq
    for step in range(1, _SEAL_SEARCH + 1):
        yield from (candidate for candidate in (seq - step, seq + step) if candidate >= 1)


def _check_time(entry: AuditEntry, prev: _Link, tolerance: float) -> _Fault | None:
    if prev.at is not None and entry.at < prev.at - tolerance:
        return _Fault(
            ChainFault.REORDERED_TIME,
            entry.seq,
            f"entry {entry.seq} is {prev.at - entry.at:.3f}s older than entry {prev.seq} "
            f"(tolerance {tolerance:g}s)",
        )
    return None


def _diagnose(
    entry: AuditEntry, sealed: int, prev: _Link, stream: _Lookahead, recent: dict[str, int]
) -> _Fault:
    """Name what happened at the first entry that does not continue the chain cleanly."""
    if prev.prev_hash is not None and entry.prev_hash == prev.prev_hash:
        return _fork(entry, prev, stream)
    if sealed != entry.seq:
        return _relabelled(entry, sealed, prev, stream)
    expected = prev.seq + 1
    if entry.seq > expected:
        return _gap(entry, expected, stream)
    if entry.seq < expected:
        return _backwards(entry, prev, recent)
    if prev.prev_hash is None:
        return _Fault(
            ChainFault.INSERTED,
            entry.seq,
            f"entry {entry.seq} does not continue from the chain's start "
            f"({'checkpoint' if prev.seq else 'genesis'} at entry {prev.seq})",
        )
    return _Fault(
        ChainFault.INSERTED,
        entry.seq,
        f"entry {entry.seq} does not link to entry {prev.seq} (prev_hash differs): it was "
        f"inserted or replaced, or entry {prev.seq} was rewritten",
    )


def _fork(entry: AuditEntry, prev: _Link, stream: _Lookahead) -> _Fault:
    """Two entries claim one predecessor: the one the chain does not continue from is foreign."""
    following = stream.peek()
    if following is not None and following.prev_hash == entry.hash:
        return _Fault(
            ChainFault.INSERTED,
            prev.seq,
            f"entry {prev.seq} is not part of the chain: entry {entry.seq} links past it",
            blames_previous=True,
        )
    return _Fault(
        ChainFault.INSERTED,
        entry.seq,
        f"entry {entry.seq} is not part of the chain: it links to the same "
        f"predecessor as entry {prev.seq}",
    )


def _relabelled(entry: AuditEntry, sealed: int, prev: _Link, stream: _Lookahead) -> _Fault:
    """The entry's content is genuine but was sealed as entry `sealed`, not `entry.seq`."""
    if stream.any_later(lambda later: later.hash == entry.prev_hash):
        return _Fault(
            ChainFault.REORDERED_SEQ,
            entry.seq,
            f"entry {entry.seq} holds the content sealed as entry {sealed}",
        )
    expected = prev.seq + 1
    if sealed > entry.seq:
        return _Fault(
            ChainFault.DELETED,
            expected,
            f"entry {expected} is missing (later entries were renumbered down)",
        )
    return _Fault(
        ChainFault.INSERTED,
        expected,
        f"an entry was inserted at {expected} (later entries were renumbered up)",
    )


def _gap(entry: AuditEntry, expected: int, stream: _Lookahead) -> _Fault:
    if stream.any_later(lambda later: expected <= later.seq < entry.seq):
        return _Fault(
            ChainFault.REORDERED_SEQ,
            entry.seq,
            f"entry {entry.seq} appears before entry {expected}",
        )
    missing = (
        f"entry {expected} is"
        if entry.seq == expected + 1
        else f"entries {expected}–{entry.seq - 1} are"
    )
    return _Fault(ChainFault.DELETED, expected, f"{missing} missing before entry {entry.seq}")


def _backwards(entry: AuditEntry, prev: _Link, recent: dict[str, int]) -> _Fault:
    if prev.prev_hash is None:
        return _Fault(
            ChainFault.INSERTED,
            entry.seq,
            f"entry {entry.seq} precedes the checkpoint at entry {prev.seq}",
        )
    if entry.hash in recent:
        return _Fault(
            ChainFault.INSERTED,
            entry.seq,
            f"entry {entry.seq} appears a second time after entry {prev.seq}",
        )
    return _Fault(
        ChainFault.REORDERED_SEQ, entry.seq, f"entry {entry.seq} appears after entry {prev.seq}"
    )


def _check_head(last: _Link, head: ChainHead | None) -> _Fault | None:
    if head is None:
        return None
    if last.seq < head.seq:
        return _Fault(
            ChainFault.DELETED,
            last.seq + 1,
            f"entries {last.seq + 1}–{head.seq} are missing (the tail was cut)",
        )
    if not hmac.compare_digest(last.hash, head.hash):
        return _Fault(
            ChainFault.EDITED, head.seq, f"entry {head.seq} does not match the recorded chain head"
        )
    return None
