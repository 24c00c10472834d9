"""Push approval requests in SQL; the answer is one compare-and-set on `status = 'pending'`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, exc, func, insert, select, update

from stepguard.core.errors import Conflict
from stepguard.storage import tables as t
from stepguard.storage.records import PushRecord, PushStatus
from stepguard.storage.sql_base import Database, is_conflict

_P = t.push_requests.c


class SqlPushes:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, push: PushRecord) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(t.push_requests), _row(push))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("a push with this id already exists") from None
                raise

    def get(self, push_id: str) -> PushRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(t.push_requests).where(_P.id == push_id)).first()
        return None if row is None else _record(row._mapping)

    def latest_for_challenge(self, challenge_id: str) -> PushRecord | None:
        query = (
            select(t.push_requests)
            .where(_P.challenge_id == challenge_id)
            .order_by(_P.created.desc(), _P.id)
            .limit(1)
        )
        with self._db.read() as connection:
            row = connection.execute(query).first()
        return None if row is None else _record(row._mapping)

    def pending_for_user(self, user_id: str, *, now: float) -> tuple[PushRecord, ...]:
        """Unanswered, unexpired pushes of one user, newest first (at most 20)."""
        query = (
            select(t.push_requests)
            .where(_P.user_id == user_id, _P.status == "pending", _P.expires > now)
            .order_by(_P.created.desc(), _P.id)
            .limit(20)
        )
        with self._db.read() as connection:
            return tuple(_record(row._mapping) for row in connection.execute(query))

    def starts_for_user(self, user_id: str, *, since: float) -> tuple[float, ...]:
        """Start times of the user's pushes created at or after `since`, oldest first."""
        query = (
            select(_P.created)
            .where(_P.user_id == user_id, _P.created >= since)
            .order_by(_P.created)
        )
        with self._db.read() as connection:
            return tuple(float(v) for v in connection.execute(query).scalars())

    def count_pending(self, user_id: str, *, now: float) -> int:
        query = select(func.count()).where(
            _P.user_id == user_id, _P.status == "pending", _P.expires > now
        )
        with self._db.read() as connection:
            return int(connection.execute(query).scalar() or 0)

    def answer(self, push_id: str, *, status: PushStatus, device_id: str, now: float) -> bool:
        """Pending and unexpired -> `status`, answered by `device_id`; True for one caller only."""
        if status == "pending":
            raise ValueError("an answer closes the push")
        query = (
            update(t.push_requests)
            .where(_P.id == push_id, _P.status == "pending", _P.expires > now)
            .values(status=status, device_id=device_id, answered_at=now)
        )
        with self._db.write() as connection:
            return connection.execute(query).rowcount == 1

    def purge(self, *, expired_before: float) -> int:
        with self._db.write() as connection:
            result = connection.execute(
                delete(t.push_requests).where(_P.expires < expired_before)
            )
            return int(result.rowcount)


def _row(push: PushRecord) -> dict[str, Any]:
    return {
        "id": push.id,
        "challenge_id": push.challenge_id,
        "user_id": push.user_id,
        "requesting_session_id": push.requesting_session_id,
        "number": push.number,
        "options": json.dumps(list(push.options)),
        "nonce": push.nonce,
        "digest": push.digest,
        "created": push.created,
        "expires": push.expires,
        "status": push.status,
        "answered_at": push.answered_at,
        "device_id": push.device_id,
        "client_ip": push.client_ip,
        "user_agent": push.user_agent,
        "location": push.location,
    }


def _record(row: Any) -> PushRecord:
    return PushRecord(
        id=row["id"],
        challenge_id=row["challenge_id"],
        user_id=row["user_id"],
        requesting_session_id=row["requesting_session_id"],
        number=int(row["number"]),
        options=tuple(int(o) for o in json.loads(row["options"])),
        nonce=row["nonce"],
        digest=row["digest"],
        created=row["created"],
        expires=row["expires"],
        status=row["status"],
        answered_at=row["answered_at"],
        device_id=row["device_id"],
        client_ip=row["client_ip"],
        user_agent=row["user_agent"],
        location=row["location"],
    )
