"""Sessions in SQL: looked up by token hash, rotated, touched, revoked; events kept bounded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, delete, exc, insert, select, update
from sqlalchemy.engine import Connection

from stepguard.core.context import AuthEvent
from stepguard.core.errors import Conflict
from stepguard.core.levels import Level
from stepguard.storage import tables as t
from stepguard.storage.records import SESSION_EVENT_LIMIT, SessionRecord
from stepguard.storage.sql_base import Database, bump_session, bump_user, dumps, is_conflict, loads

_S = t.sessions.c
_E = t.session_events.c


class SqlSessions:
    """Every lookup returns live sessions only: a revoked session is never handed out."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, session: SessionRecord) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(t.sessions), _row(session))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("a session with this id or token already exists") from None
                raise
            _insert_events(connection, session.id, session.events[-SESSION_EVENT_LIMIT:])

    def get(self, session_id: str) -> SessionRecord | None:
        return self._one(_S.id == session_id)

    def by_token_hash(self, token_hash: str) -> SessionRecord | None:
        return self._one(_S.token_hash == token_hash)

    def list_for_user(self, user_id: str) -> tuple[SessionRecord, ...]:
        """The user's live sessions, most recently seen first."""
        query = (
            select(t.sessions)
            .where(_S.user_id == user_id, _S.revoked_at.is_(None))
            .order_by(_S.last_seen.desc(), _S.id)
        )
        with self._db.read() as connection:
            return _with_events(connection, list(connection.execute(query).mappings()))

    def touch(self, session_id: str, *, now: float, ip: str, user_agent: str) -> bool:
        return self._set(session_id, last_seen=now, ip=ip, user_agent=user_agent)

    def touch_many(self, seen: Iterable[tuple[str, float, str, str]]) -> None:
        """Write several last-seen times at once: (session id, now, ip, user agent) each. A
        later time never goes backwards; revoked sessions are left alone."""
        rows = [{"b_id": sid, "b_now": now, "b_ip": ip, "b_ua": ua} for sid, now, ip, ua in seen]
        if not rows:
            return
        query = (
            update(t.sessions)
            .where(_S.id == bindparam("b_id"), _S.revoked_at.is_(None),
                   _S.last_seen < bindparam("b_now"))
            .values(last_seen=bindparam("b_now"), ip=bindparam("b_ip"),
                    user_agent=bindparam("b_ua"))
        )
        with self._db.write() as connection:
            connection.execute(query, rows)

    def rotate(self, session_id: str, new_token_hash: str, *, now: float) -> bool:
        """Replace the token hash (the old token stops working at once)."""
        return self._set(session_id, bump=True, token_hash=new_token_hash, last_seen=now)

    def revoke(self, session_id: str, *, now: float) -> bool:
        return self._set(session_id, bump=True, revoked_at=now)

    def revoke_all_for_user(
        self, user_id: str, *, now: float, except_session: str | None = None
    ) -> int:
        query = update(t.sessions).where(_S.user_id == user_id, _S.revoked_at.is_(None))
        if except_session is not None:
            query = query.where(_S.id != except_session)
        with self._db.write() as connection:
            count = int(connection.execute(query.values(revoked_at=now)).rowcount)
            bump_user(connection, user_id)
            return count

    def add_event(self, session_id: str, event: AuthEvent) -> bool:
        """Append an authentication event to a live session, keeping the newest few."""
        with self._db.write() as connection:
            live = connection.execute(
                select(_S.id).where(_S.id == session_id, _S.revoked_at.is_(None)).with_for_update()
            ).first()
            if live is None:
                return False
            _insert_events(connection, session_id, [event])
            _prune_events(connection, session_id)
            bump_session(connection, session_id)
            return True

    def _one(self, condition: Any) -> SessionRecord | None:
        query = select(t.sessions).where(condition, _S.revoked_at.is_(None))
        with self._db.read() as connection:
            found = _with_events(connection, list(connection.execute(query).mappings()))
        return found[0] if found else None

    def _set(self, session_id: str, *, bump: bool = False, **values: Any) -> bool:
        query = update(t.sessions).where(_S.id == session_id, _S.revoked_at.is_(None))
        with self._db.write() as connection:
            changed = connection.execute(query.values(**values)).rowcount == 1
            if bump and changed:
                bump_session(connection, session_id)
            return changed


def _insert_events(connection: Connection, session_id: str, events: Iterable[AuthEvent]) -> None:
    rows = [
        {
            "session_id": session_id,
            "factor": event.factor,
            "amr": dumps(list(event.amr)),
            "level": int(event.level),
            "at": event.at,
        }
        for event in events
    ]
    if rows:
        connection.execute(insert(t.session_events), rows)


def _prune_events(connection: Connection, session_id: str) -> None:
    keep = (
        select(_E.id)
        .where(_E.session_id == session_id)
        .order_by(_E.id.desc())
        .limit(SESSION_EVENT_LIMIT)
        .scalar_subquery()
    )
    connection.execute(
        delete(t.session_events).where(_E.session_id == session_id, _E.id.not_in(keep))
    )


def _with_events(connection: Connection, rows: list[Any]) -> tuple[SessionRecord, ...]:
    events: dict[str, list[AuthEvent]] = {row["id"]: [] for row in rows}
    if events:
        query = select(t.session_events).where(_E.session_id.in_(events)).order_by(_E.id)
        for event in connection.execute(query).mappings():
            events[event["session_id"]].append(_event(event))
    return tuple(_record(row, tuple(events[row["id"]])) for row in rows)


def _event(row: Any) -> AuthEvent:
    return AuthEvent(
        factor=row["factor"], amr=tuple(loads(row["amr"])), level=Level(row["level"]), at=row["at"]
    )


def _row(session: SessionRecord) -> dict[str, Any]:
    return {
        "id": session.id,
        "token_hash": session.token_hash,
        "user_id": session.user_id,
        "created": session.created,
        "last_seen": session.last_seen,
        "ip": session.ip,
        "user_agent": session.user_agent,
        "revoked_at": session.revoked_at,
        "device_id": session.device_id,
    }


def _record(row: Any, events: tuple[AuthEvent, ...]) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        token_hash=row["token_hash"],
        user_id=row["user_id"],
        created=row["created"],
        last_seen=row["last_seen"],
        ip=row["ip"],
        user_agent=row["user_agent"],
        revoked_at=row["revoked_at"],
        device_id=row["device_id"],
        events=events,
    )
