"""Identity-provider state in SQL: linked identities, flows taken exactly once, provider
sessions, and used logout tokens (see `identity_tables`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from sqlalchemy import delete, exc, insert, select, update

from stepguard.core.errors import Conflict
from stepguard.storage.identity_records import IdentityRecord, OidcFlow, SessionLink
from stepguard.storage.identity_tables import (
    oidc_flows,
    oidc_logout_tokens,
    oidc_sessions,
    user_identities,
)
from stepguard.storage.sql_base import Database, bump_user, dumps, is_conflict
from stepguard.storage.sql_users import _update as update_user

_I, _F, _S, _L = user_identities.c, oidc_flows.c, oidc_sessions.c, oidc_logout_tokens.c


class SqlIdentities:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- identities -----------------------------------------------------------------------------

    def link(self, identity: IdentityRecord) -> None:
        with self._db.write() as connection:
            try:
                connection.execute(insert(user_identities).values(**asdict(identity)))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    raise Conflict("this identity is already linked") from None
                raise

    def get(self, issuer: str, subject: str) -> IdentityRecord | None:
        with self._db.read() as connection:
            row = connection.execute(select(user_identities).where(
                _I.issuer == issuer, _I.subject == subject)).mappings().first()
        return None if row is None else IdentityRecord(**row)

    def for_users(self, user_ids: Iterable[str]) -> tuple[IdentityRecord, ...]:
        ids = list(user_ids)
        if not ids:
            return ()
        with self._db.read() as connection:
            rows = connection.execute(select(user_identities).where(_I.user_id.in_(ids))
                                      .order_by(_I.user_id, _I.provider)).mappings()
            return tuple(IdentityRecord(**row) for row in rows)

    def touch(self, issuer: str, subject: str, *, email: str, now: float) -> bool:
        query = (update(user_identities).where(_I.issuer == issuer, _I.subject == subject)
                 .values(email=email, last_login=now))
        with self._db.write() as connection:
            return connection.execute(query).rowcount == 1

    def update_profile(self, user_id: str, *, display_name: str, email: str,
                       groups: Iterable[str]) -> None:
        """The provider's current name, email and groups, written over the user's (each login)."""
        with self._db.write() as connection:
            bump_user(connection, user_id)
            update_user(connection, user_id, display_name=display_name[:255], email=email[:320],
                        groups=dumps(sorted(set(groups))))

    # --- flows ----------------------------------------------------------------------------------

    def add_flow(self, flow: OidcFlow) -> None:
        with self._db.write() as connection:
            connection.execute(insert(oidc_flows).values(**asdict(flow)))

    def take_flow(self, state_hash: str, *, now: float) -> OidcFlow | None:
        """The flow, deleted in the same transaction: of racing callbacks exactly one gets it."""
        with self._db.write() as connection:
            row = connection.execute(select(oidc_flows).where(_F.state_hash == state_hash)
                                     ).mappings().first()
            if row is None:
                return None
            gone = connection.execute(delete(oidc_flows).where(_F.state_hash == state_hash))
            if gone.rowcount != 1 or row["expires"] <= now:
                return None
        return OidcFlow(**row)

    # --- provider sessions ----------------------------------------------------------------------

    def link_session(self, link: SessionLink) -> None:
        with self._db.write() as connection:
            connection.execute(insert(oidc_sessions).values(**asdict(link)))

    def session_link(self, session_id: str) -> SessionLink | None:
        with self._db.read() as connection:
            row = connection.execute(select(oidc_sessions).where(_S.session_id == session_id)
                                     ).mappings().first()
        return None if row is None else SessionLink(**row)

    def linked_sessions(self, issuer: str, *, subject: str = "", sid: str = "") -> tuple[str, ...]:
        """Ids of the sessions opened by this provider session (`sid`) or subject."""
        condition: Any = _S.issuer == issuer
        if sid:
            condition = condition & (_S.sid == sid)
        if subject:
            condition = condition & (_S.subject == subject)
        with self._db.read() as connection:
            return tuple(connection.execute(select(_S.session_id).where(condition)).scalars())

    # --- logout tokens --------------------------------------------------------------------------

    def use_logout_token(self, key: str, *, expires: float, now: float) -> bool:
        """Record a logout token's key; False when it was used before (a replay)."""
        with self._db.write() as connection:
            connection.execute(delete(oidc_logout_tokens).where(_L.expires <= now))
            try:
                with connection.begin_nested():
                    connection.execute(insert(oidc_logout_tokens).values(key=key,
                                                                         expires=expires))
            except exc.IntegrityError as error:
                if is_conflict(error):
                    return False
                raise
        return True

    def purge(self, *, now: float) -> int:
        with self._db.write() as connection:
            return int(connection.execute(delete(oidc_flows).where(_F.expires <= now)).rowcount)
