"""Every distinct policy text `serve` has loaded, numbered: the version in force and its diff."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from stepguard.storage.rollout_tables import policy_versions
from stepguard.storage.sql_base import unavailable_on_driver_error


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: int
    digest: str
    loaded_at: float
    source: str
    text: str


def policy_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyVersions:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, text: str, *, source: str, now: float) -> PolicyVersion:
        """The version of this text, numbered anew if it was never loaded before."""
        digest = policy_digest(text)
        found = self._by_digest(digest)
        if found is not None:
            return found
        try:
            with unavailable_on_driver_error(), self._engine.begin() as connection:
                connection.execute(insert(policy_versions).values(
                    digest=digest, loaded_at=now, source=source[:255], text=text))
        except IntegrityError:
            pass  # another instance recorded it first
        found = self._by_digest(digest)
        assert found is not None
        return found

    def latest(self, limit: int = 2) -> list[PolicyVersion]:
        """The newest versions, newest first."""
        query = select(policy_versions).order_by(policy_versions.c.version.desc()).limit(limit)
        return self._rows(query)

    def get(self, version: int) -> PolicyVersion | None:
        rows = self._rows(select(policy_versions).where(policy_versions.c.version == version))
        return rows[0] if rows else None

    def _by_digest(self, digest: str) -> PolicyVersion | None:
        rows = self._rows(select(policy_versions).where(policy_versions.c.digest == digest))
        return rows[0] if rows else None

    def _rows(self, query: object) -> list[PolicyVersion]:
        with unavailable_on_driver_error(), self._engine.connect() as connection:
            return [PolicyVersion(int(r.version), r.digest, float(r.loaded_at), r.source, r.text)
                    for r in connection.execute(query)]  # type: ignore[call-overload]


def policy_diff(old: PolicyVersion | None, new: PolicyVersion) -> str:
    """A unified diff of two versions ("" when there is no previous one)."""
    if old is None:
        return ""
    return "".join(difflib.unified_diff(
        old.text.splitlines(keepends=True), new.text.splitlines(keepends=True),
        fromfile=f"version {old.version}", tofile=f"version {new.version}"))
