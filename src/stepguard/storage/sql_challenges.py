"""Challenges in SQL: pending step-ups, their held request and single-use ceremony state."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sqlalchemy import delete, exc, insert, select, update
from sqlalchemy.engine import Connection

from stepguard.core.decision import Requirement
from stepguard.core.errors import Conflict
from stepguard.core.levels import Level
from stepguard.storage import tables as t
from stepguard.storage.records import ChallengeRecord, ChallengeStatus
from stepguard.storage.sql_base import Database, dumps, is_conflict, loads

_C = t.challenges.c


class SqlChallenges:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, challenge: ChallengeRecord) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(t.challenges), _row(challenge))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("a challenge with this id already exists") from None
                raise

    def get(self, challenge_id: str) -> ChallengeRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(t.challenges).where(_C.id == challenge_id)).first()
        return None if row is None else _record(row._mapping)

    def pending_for_session(self, session_id: str, *, now: float) -> tuple[ChallengeRecord, ...]:
        """Live challenges started by one session (newest first), e.g. to find push requests."""
        query = (select(t.challenges).where(_C.session_id == session_id, _C.status == "pending",
                                            _C.expires > now).order_by(_C.created.desc()).limit(20))
        with self._db.read() as connection:
            return tuple(_record(row._mapping) for row in connection.execute(query))

    def record_attempt(self, challenge_id: str, *, now: float) -> int:
        """Count one verification attempt on a live challenge; the new count (0: not live)."""
        query = (
            update(t.challenges)
            .where(*_live(challenge_id, now))
            .values(attempts=_C.attempts + 1)
            .returning(_C.attempts)
        )
        with self._db.write() as connection:
            attempts = connection.execute(query).scalar()
        return int(attempts or 0)

    def set_ceremony(self, challenge_id: str, ceremony: Mapping[str, Any], *, now: float) -> bool:
        """Store the factor's in-flight state (replacing any) on a live challenge."""
        return self._set(challenge_id, now, ceremony=dumps(dict(ceremony)))

    def take_ceremony(self, challenge_id: str, *, now: float) -> Mapping[str, Any] | None:
        """Read and clear the ceremony state of a live challenge: one caller gets it, once."""
        with self._db.write() as connection:
            text = connection.execute(
                select(_C.ceremony).where(*_live(challenge_id, now)).with_for_update()
            ).scalar()
            if text is None:
                return None
            _clear_ceremony(connection, challenge_id)
        return MappingProxyType(loads(text))

    def mark_passed(self, challenge_id: str, *, now: float) -> bool:
        """Pending and unexpired -> passed; True for exactly one caller."""
        return self._set(challenge_id, now, status="passed", ceremony=None)

    def take_held(self, challenge_id: str, *, session_id: str) -> ChallengeRecord | None:
        """Passed -> sent, returning the challenge with its held request: exactly one caller
        gets it (one conditional UPDATE ... RETURNING), so a held request is relayed once."""
        query = (
            update(t.challenges)
            .where(_C.id == challenge_id, _C.session_id == session_id, _C.status == "passed")
            .values(status="sent")
            .returning(*t.challenges.c)
        )
        with self._db.write() as connection:
            row = connection.execute(query).first()
        return None if row is None else _record(row._mapping)

    def abandon(self, challenge_id: str, *, now: float) -> bool:
        return self._set(challenge_id, now, status="abandoned", ceremony=None)

    def expire(self, *, now: float) -> int:
        """Mark every pending challenge past its expiry as expired; how many were."""
        query = (
            update(t.challenges)
            .where(_C.status == "pending", _C.expires <= now)
            .values(status="expired", ceremony=None)
        )
        with self._db.write() as connection:
            return int(connection.execute(query).rowcount)

    def purge(self, *, expired_before: float) -> int:
        """Delete challenges (of any status) that expired before the given time."""
        with self._db.write() as connection:
            result = connection.execute(delete(t.challenges).where(_C.expires < expired_before))
            return int(result.rowcount)

    def _set(self, challenge_id: str, now: float, **values: Any) -> bool:
        query = update(t.challenges).where(*_live(challenge_id, now)).values(**values)
        with self._db.write() as connection:
            return connection.execute(query).rowcount == 1


def _live(challenge_id: str, now: float) -> tuple[Any, ...]:
    return (_C.id == challenge_id, _C.status == "pending", _C.expires > now)


def _clear_ceremony(connection: Connection, challenge_id: str) -> None:
    connection.execute(update(t.challenges).where(_C.id == challenge_id).values(ceremony=None))


def requirement_to_json(requirement: Requirement) -> dict[str, Any]:
    return {
        "level": int(requirement.level),
        "max_age": requirement.max_age,
        "methods": sorted(requirement.methods),
        "scope": requirement.scope,
        "single_use": requirement.single_use,
        "bind": list(requirement.bind),
        "reason": requirement.reason,
        **({"via": requirement.via} if requirement.via else {}),
    }


def requirement_from_json(value: Mapping[str, Any]) -> Requirement:
    return Requirement(
        level=Level(value["level"]),
        max_age=value["max_age"],
        methods=frozenset(value["methods"]),
        scope=value["scope"],
        single_use=value["single_use"],
        bind=tuple(value["bind"]),
        reason=value["reason"],
        via=str(value.get("via", "")),
    )


def _row(challenge: ChallengeRecord) -> dict[str, Any]:
    ceremony = challenge.ceremony
    return {
        "id": challenge.id,
        "user_id": challenge.user_id,
        "session_id": challenge.session_id,
        "requirement": dumps(requirement_to_json(challenge.requirement)),
        "reasons": dumps(list(challenge.reasons)),
        "rule": challenge.rule,
        "login": challenge.login,
        "scope": challenge.scope,
        "binding": challenge.binding,
        "bound_values": dumps([list(pair) for pair in challenge.bound_values]),
        "return_url": challenge.return_url,
        "held_method": challenge.held_method,
        "held_headers": dumps([list(pair) for pair in challenge.held_headers]),
        "held_body": challenge.held_body,
        "created": challenge.created,
        "expires": challenge.expires,
        "attempts": challenge.attempts,
        "status": challenge.status,
        "ceremony": None if ceremony is None else dumps(dict(ceremony)),
        "reason_texts": dumps([list(p) for p in challenge.reason_texts])
        if challenge.reason_texts else None,
    }


def _record(row: Any) -> ChallengeRecord:
    status: ChallengeStatus = row["status"]
    ceremony = row["ceremony"]
    return ChallengeRecord(
        id=row["id"],
        user_id=row["user_id"],
        session_id=row["session_id"],
        requirement=requirement_from_json(loads(row["requirement"])),
        reasons=tuple(loads(row["reasons"])),
        reason_texts=_pairs(row["reason_texts"]) if row["reason_texts"] else (),
        rule=row["rule"],
        login=bool(row["login"]),
        scope=row["scope"],
        binding=row["binding"],
        bound_values=_pairs(row["bound_values"]),
        return_url=row["return_url"],
        held_method=row["held_method"],
        held_headers=_pairs(row["held_headers"]),
        held_body=bytes(row["held_body"]),
        created=row["created"],
        expires=row["expires"],
        attempts=row["attempts"],
        status=status,
        ceremony=None if ceremony is None else MappingProxyType(loads(ceremony)),
    )


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in loads(text))
