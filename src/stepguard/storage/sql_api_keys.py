"""Decision API client keys in SQL: only secret hashes are stored; rotation and revocation are
single statements, so a key is either valid or not for every instance sharing the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc, insert, select, update
from sqlalchemy.engine import Engine

from stepguard.core.errors import Conflict
from stepguard.storage.api_key_tables import api_keys
from stepguard.storage.records import ApiKeyRecord
from stepguard.storage.sql_base import Database, is_conflict

_K = api_keys.c


class SqlApiKeys:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def on(cls, engine: Engine) -> SqlApiKeys:
        """The API key role on a store's engine (see `SqlStore.engine`)."""
        return cls(Database(engine))

    def add(self, record: ApiKeyRecord) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(api_keys), _row(record))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("an API key with this name or id already exists") from None
                raise

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._one(_K.id == key_id)

    def by_name(self, name: str) -> ApiKeyRecord | None:
        return self._one(_K.name == name)

    def list(self) -> tuple[ApiKeyRecord, ...]:
        with self._db.read() as connection:
            rows = connection.execute(select(api_keys).order_by(_K.name)).mappings()
            return tuple(_record(row) for row in rows)

    def rotate(self, key_id: str, *, new_hash: str, previous_until: float, now: float) -> bool:
        """Replace the secret of a live key; the old one stays valid until `previous_until`."""
        query = (
            update(api_keys)
            .where(_K.id == key_id, _K.revoked_at.is_(None))
            .values(previous_hash=_K.secret_hash, previous_until=previous_until,
                    secret_hash=new_hash, rotated_at=now)
        )
        with self._db.write() as connection:
            return connection.execute(query).rowcount == 1

    def revoke(self, key_id: str, *, now: float) -> bool:
        query = (
            update(api_keys)
            .where(_K.id == key_id, _K.revoked_at.is_(None))
            .values(revoked_at=now, previous_hash=None, previous_until=None)
        )
        with self._db.write() as connection:
            return connection.execute(query).rowcount == 1

    def touch(self, key_id: str, *, now: float) -> bool:
        with self._db.write() as connection:
            query = update(api_keys).where(_K.id == key_id).values(last_used=now)
            return connection.execute(query).rowcount == 1

    def _one(self, condition: Any) -> ApiKeyRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(api_keys).where(condition)).mappings().first()
        return None if row is None else _record(row)


def _row(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": record.id, "name": record.name, "secret_hash": record.secret_hash,
        "previous_hash": record.previous_hash, "previous_until": record.previous_until,
        "created": record.created, "rotated_at": record.rotated_at,
        "revoked_at": record.revoked_at, "last_used": record.last_used,
    }


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(**{name: row[name] for name in _row_names()})


def _row_names() -> tuple[str, ...]:
    return tuple(column.name for column in api_keys.columns)
