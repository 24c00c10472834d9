"""Factors and recovery codes in SQL, with the compare-and-set updates that stop replays."""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from sqlalchemy import delete, exc, insert, or_, select, update

from stepguard.core.errors import Conflict
from stepguard.storage import tables as t
from stepguard.storage.records import FactorKind, FactorRecord, RecoveryCodeRecord
from stepguard.storage.sql_base import Database, dumps, is_conflict, loads

_F = t.factors.c
_R = t.recovery_codes.c


class SqlFactors:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, factor: FactorRecord) -> None:
        """Insert a factor; raise `Conflict` if its id or WebAuthn credential id exists."""
        with self._db.write() as connection:
            try:
                connection.execute(insert(t.factors), _row(factor))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("a factor with this id or credential already exists") from None
                raise

    def get(self, factor_id: str) -> FactorRecord | None:
        return self._one(_F.id == factor_id)

    def by_credential_id(self, credential_id: bytes) -> FactorRecord | None:
        if not credential_id:
            return None
        return self._one(_F.credential_id == credential_id)

    def for_user(self, user_id: str, *, kind: FactorKind | None = None) -> tuple[FactorRecord, ...]:
        query = select(t.factors).where(_F.user_id == user_id).order_by(_F.created, _F.id)
        if kind is not None:
            query = query.where(_F.kind == kind)
        with self._db.read() as connection:
            return tuple(_record(row) for row in connection.execute(query).mappings())

    def remove(self, factor_id: str, *, user_id: str) -> bool:
        with self._db.write() as connection:
            result = connection.execute(
                delete(t.factors).where(_F.id == factor_id, _F.user_id == user_id)
            )
            return result.rowcount == 1

    def mark_used(self, factor_id: str, *, now: float) -> bool:
        return self._set(_F.id == factor_id, last_used=now)

    def advance_totp_step(self, factor_id: str, step: int) -> bool:
        """Record `step` as used if it is newer than the last used step (exactly one racer wins)."""
        newer = or_(_F.last_step.is_(None), _F.last_step < step)
        return self._set(_F.id == factor_id, _F.kind == "totp", newer, last_step=step)

    def update_sign_count(self, factor_id: str, *, expected_old: int, new: int) -> bool:
        """Replace the WebAuthn sign count only if it still is `expected_old`."""
        return self._set(_F.id == factor_id, _F.sign_count == expected_old, sign_count=new)

    def replace_recovery_codes(
        self, user_id: str, code_hashes: Iterable[str], *, now: float
    ) -> None:
        """Void the user's old recovery codes and store the new set, in one transaction."""
        rows = [
            {"user_id": user_id, "code_hash": code_hash, "created": now, "used_at": None}
            for code_hash in dict.fromkeys(code_hashes)
        ]
        with self._db.write() as connection:
            connection.execute(delete(t.recovery_codes).where(_R.user_id == user_id))
            if rows:
                connection.execute(insert(t.recovery_codes), rows)

    def use_recovery_code(self, user_id: str, code_hash: str, *, now: float) -> bool:
        """Mark an unused code used; True for exactly one caller, False if unknown or used."""
        with self._db.write() as connection:
            result = connection.execute(
                update(t.recovery_codes)
                .where(_R.user_id == user_id, _R.code_hash == code_hash, _R.used_at.is_(None))
                .values(used_at=now)
            )
            return result.rowcount == 1

    def recovery_codes(self, user_id: str) -> tuple[RecoveryCodeRecord, ...]:
        query = select(t.recovery_codes).where(_R.user_id == user_id).order_by(_R.code_hash)
        with self._db.read() as connection:
            return tuple(
                RecoveryCodeRecord(
                    user_id=row["user_id"],
                    code_hash=row["code_hash"],
                    created=row["created"],
                    used_at=row["used_at"],
                )
                for row in connection.execute(query).mappings()
            )

    def _one(self, condition: Any) -> FactorRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(t.factors).where(condition)).mappings().first()
        return None if row is None else _record(row)

    def _set(self, *conditions: Any, **values: Any) -> bool:
        with self._db.write() as connection:
            result = connection.execute(update(t.factors).where(*conditions).values(**values))
            return result.rowcount == 1


def _row(factor: FactorRecord) -> dict[str, Any]:
    return {
        "id": factor.id,
        "user_id": factor.user_id,
        "kind": factor.kind,
        "label": factor.label,
        "created": factor.created,
        "last_used": factor.last_used,
        "secret": factor.secret,
        "credential_id": factor.credential_id or None,
        "public_key": factor.public_key,
        "sign_count": factor.sign_count,
        "last_step": factor.last_step,
        "data": dumps(dict(factor.data)),
    }


def _record(row: Any) -> FactorRecord:
    return FactorRecord(
        id=row["id"],
        user_id=row["user_id"],
        kind=row["kind"],
        label=row["label"],
        created=row["created"],
        last_used=row["last_used"],
        secret=row["secret"],
        credential_id=bytes(row["credential_id"] or b""),
        public_key=bytes(row["public_key"]),
        sign_count=row["sign_count"],
        last_step=row["last_step"],
        data=MappingProxyType(loads(row["data"])),
    )
