"""Users in SQL: accounts, groups, password hashes; disabling revokes every session at once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import exc, insert, select, update
from sqlalchemy.engine import Connection

from stepguard.core.errors import Conflict
from stepguard.storage import tables as t
from stepguard.storage.records import UserRecord
from stepguard.storage.sql_base import Database, bump_user, dumps, is_conflict, loads


def username_key(username: str) -> str:
    """The form usernames are compared in: `Alice` and `alice` are the same account."""
    return username.strip().casefold()


class SqlUsers:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, user: UserRecord) -> None:
        self.import_many([user])

    def import_many(self, users: Iterable[UserRecord]) -> int:
        """Insert all users in one transaction; on a duplicate raise `Conflict`, inserting none."""
        rows = [_row(user) for user in users]
        if not rows:
            return 0
        with self._db.write() as connection:
            _insert(connection, rows)
        return len(rows)

    def get(self, user_id: str) -> UserRecord | None:
        return self._one(t.users.c.id == user_id)

    def by_username(self, username: str) -> UserRecord | None:
        return self._one(t.users.c.username_key == username_key(username))

    def list(self, *, offset: int = 0, limit: int = 100) -> tuple[UserRecord, ...]:
        query = select(t.users).order_by(t.users.c.username_key).offset(offset).limit(limit)
        with self._db.read() as connection:
            return tuple(_record(row) for row in connection.execute(query).mappings())

    def set_disabled(self, user_id: str, disabled: bool, *, now: float) -> bool:
        """Disable (revoking every session in the same transaction) or re-enable a user."""
        with self._db.write() as connection:
            changed = _update(connection, user_id, disabled=disabled)
            if changed and disabled:
                connection.execute(
                    update(t.sessions)
                    .where(t.sessions.c.user_id == user_id, t.sessions.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
            bump_user(connection, user_id)
            return changed

    def set_groups(self, user_id: str, groups: Iterable[str]) -> bool:
        with self._db.write() as connection:
            bump_user(connection, user_id)
            return _update(connection, user_id, groups=dumps(sorted(set(groups))))

    def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        with self._db.write() as connection:
            return _update(connection, user_id, password_hash=password_hash)

    def _one(self, condition: Any) -> UserRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(t.users).where(condition)).mappings().first()
        return None if row is None else _record(row)


def _insert(connection: Connection, rows: list[dict[str, Any]]) -> None:
    try:
        connection.execute(insert(t.users), rows)
    except exc.IntegrityError as error:
        if is_conflict(error):
            raise Conflict("a user with this id or username already exists") from None
        raise


def _update(connection: Connection, user_id: str, **values: Any) -> bool:
    result = connection.execute(update(t.users).where(t.users.c.id == user_id).values(**values))
    return result.rowcount == 1


def _row(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "username_key": username_key(user.username),
        "display_name": user.display_name,
        "email": user.email,
        "groups": dumps(sorted(user.groups)),
        "password_hash": user.password_hash,
        "disabled": user.disabled,
        "created": user.created,
    }


def _record(row: Any) -> UserRecord:
    return UserRecord(
        id=row["id"],
        username=row["username"],
        display_name=row["display_name"],
        email=row["email"],
        groups=frozenset(loads(row["groups"])),
        password_hash=row["password_hash"],
        disabled=bool(row["disabled"]),
        created=row["created"],
    )
