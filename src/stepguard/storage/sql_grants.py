"""Grants in SQL: stored after a passed challenge, listed per session, consumed exactly once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, exc, insert, select, update

from stepguard.core.errors import Conflict
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.storage import tables as t
from stepguard.storage.records import GrantRecord
from stepguard.storage.sql_base import Database, bump_session, dumps, is_conflict, loads

_G = t.grants.c


class SqlGrants:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, grant: Grant) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(t.grants), _row(grant))
                bump_session(connection, grant.session_id)
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("a grant with this id already exists") from None
                raise

    def get(self, grant_id: str) -> GrantRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(t.grants).where(_G.id == grant_id)).first()
        return None if row is None else _record(row._mapping)

    def active_for_session(self, session_id: str, *, now: float) -> tuple[Grant, ...]:
        """Unexpired, unconsumed grants of a session, oldest first."""
        query = (
            select(t.grants)
            .where(_G.session_id == session_id, _G.consumed_at.is_(None), _G.expires_at > now)
            .order_by(_G.granted_at, _G.id)
        )
        with self._db.read() as connection:
            return tuple(_record(row).grant for row in connection.execute(query).mappings())

    def consume(self, grant_id: str, *, session_id: str, now: float) -> bool:
        """Spend a grant of this session that is unexpired and unspent: True for one caller."""
        query = (
            update(t.grants)
            .where(
                _G.id == grant_id,
                _G.session_id == session_id,
                _G.consumed_at.is_(None),
                _G.expires_at > now,
            )
            .values(consumed_at=now)
        )
        with self._db.write() as connection:
            spent = connection.execute(query).rowcount == 1
            if spent:
                bump_session(connection, session_id)
            return spent

    def purge(self, *, expired_before: float) -> int:
        with self._db.write() as connection:
            result = connection.execute(delete(t.grants).where(_G.expires_at < expired_before))
            return int(result.rowcount)


def _row(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "subject_id": grant.subject_id,
        "session_id": grant.session_id,
        "scope": grant.scope,
        "level": int(grant.level),
        "amr": dumps(list(grant.amr)),
        "granted_at": grant.granted_at,
        "expires_at": grant.expires_at,
        "single_use": grant.single_use,
        "binding": grant.binding,
        "factor": grant.factor,
        "consumed_at": None,
    }


def _record(row: Any) -> GrantRecord:
    grant = Grant(
        id=row["id"],
        subject_id=row["subject_id"],
        session_id=row["session_id"],
        scope=row["scope"],
        level=Level(row["level"]),
        amr=tuple(loads(row["amr"])),
        granted_at=row["granted_at"],
        expires_at=row["expires_at"],
        single_use=bool(row["single_use"]),
        binding=row["binding"],
        factor=row["factor"],
    )
    return GrantRecord(grant=grant, consumed_at=row["consumed_at"])
