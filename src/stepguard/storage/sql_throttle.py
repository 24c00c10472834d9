"""Throttle counters in SQL: reserve-then-verify in one transaction, shared by every instance.

`reserve` counts an attempt under every key *first* (`INSERT ... ON CONFLICT DO UPDATE ...
RETURNING`, which also takes the row lock on PostgreSQL and runs under SQLite's single writer),
then looks at the lock each key had before: if a checked key was locked, the transaction rolls
back (nothing counted) and `Throttled` is raised. Keys are taken in sorted order, so two
reservations never wait on each other in a cycle. A racing reservation waits for the row lock
and then sees the lock this one set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, case, delete, select, update
from sqlalchemy.engine import Connection

from stepguard.core.throttle import (
    ThrottleSettings,
    ThrottleState,
    check,
    forget_before,
    state_after,
    user_prefix,
)
from stepguard.storage import tables as t
from stepguard.storage.records import Reserved
from stepguard.storage.sql_base import Database, on_dialect, per_dialect

_T = t.throttle.c
_NEVER = float("-inf")


def _upsert(dialect: Any) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE ... RETURNING, built once per dialect with bound
    parameters (`k` key, `at` now, `forget`): building it per call cost more than running it."""
    restart = case((_T.last_failure < bindparam("forget"), 1), else_=_T.consecutive + 1)
    return (dialect.insert(t.throttle)
            .values(key=bindparam("k"), consecutive=1, locked_until=0.0, hard_locked=False,
                    last_failure=bindparam("at"))
            .on_conflict_do_update(index_elements=[_T.key],
                                   set_={"consecutive": restart, "last_failure": bindparam("at")})
            .returning(_T.consecutive, _T.locked_until, _T.hard_locked))


_UPSERT = per_dialect(_upsert)
_LOCK = (update(t.throttle).where(_T.key == bindparam("k"))
         .values(locked_until=bindparam("until"), hard_locked=bindparam("hard")))
_CONSECUTIVE = select(_T.consecutive).where(_T.key == bindparam("k")).with_for_update()
_SET_COUNT = update(t.throttle).where(_T.key == bindparam("k")).values(
    consecutive=bindparam("n"))
_RESTORE = update(t.throttle).where(_T.key == bindparam("k")).values(
    consecutive=bindparam("n"), locked_until=bindparam("until"), hard_locked=bindparam("hard"))
_DELETE = delete(t.throttle).where(_T.key == bindparam("k"))


class SqlThrottle:
    """Counts consecutive failures per key; the back-off comes from `core.throttle`."""

    def __init__(self, db: Database, settings: ThrottleSettings) -> None:
        self._db = db
        self._settings = settings

    def reserve(
        self, *, check: Sequence[str], count: Sequence[str], now: float
    ) -> tuple[Reserved, ...]:
        """Count one attempt under every `count` key, unless a `check` key is locked at `now`
        (then raise `Throttled` and count nothing). `check` keys are counted too."""
        keys = sorted({*count, *check})
        with self._db.write() as connection:
            reserved = tuple(self._bump(connection, key, now) for key in keys)
            _check(reserved, set(check), now)
            for one in reserved:
                after = state_after(one.key, one.consecutive, now=now, settings=self._settings)
                connection.execute(_LOCK, {"k": one.key, "until": after.locked_until,
                                           "hard": after.hard_locked})
        return reserved

    def record_failure(self, key: str, *, now: float) -> ThrottleState:
        """Count one failure under `key` at `now` and lock the key for the back-off delay."""
        (one,) = self.reserve(check=(), count=(key,), now=now)
        return state_after(key, one.consecutive, now=now, settings=self._settings)

    def release(self, reserved: Reserved) -> None:
        """Give a reserved attempt back: the prior state if nothing was counted since, else
        one failure fewer (the locks others caused stay)."""
        self.settle(clear=(), give_back=(reserved,))

    def settle(self, *, clear: Sequence[str], give_back: Sequence[Reserved]) -> None:
        """One verdict's follow-up in one transaction: forget every `clear` key, give every
        `give_back` attempt back (`release`)."""
        work = sorted([(key, None) for key in clear]
                      + [(reserved.key, reserved) for reserved in give_back],
                      key=lambda item: item[0])
        if not work:
            return
        with self._db.write() as connection:
            # Rows in sorted key order, as `reserve` takes them: a settle and a parallel
            # reservation of the same keys never wait on each other in a cycle.
            for key, reserved in work:
                if reserved is None:
                    connection.execute(_DELETE, {"k": key})
                else:
                    _give_back(connection, reserved)

    def state(self, key: str, *, now: float) -> ThrottleState:
        with self._db.read() as connection:
            row = connection.execute(select(t.throttle).where(_T.key == key)).first()
        if row is None or row.last_failure < self._forget(key, now):
            return ThrottleState()
        return ThrottleState(
            consecutive=row.consecutive,
            locked_until=row.locked_until,
            hard_locked=bool(row.hard_locked),
        )

    def reset(self, key: str) -> None:
        with self._db.write() as connection:
            connection.execute(_DELETE, {"k": key})

    def reset_user(self, subject: str) -> None:
        """Forget every key of one subject (an operator's unlock, a new password)."""
        with self._db.write() as connection:
            connection.execute(
                delete(t.throttle).where(_T.key.startswith(user_prefix(subject), autoescape=True))
            )

    def _bump(self, connection: Connection, key: str, now: float) -> Reserved:
        consecutive, locked_until, hard = _increment(
            connection, key, now=now, forget=self._forget(key, now))
        return Reserved.counted(key, consecutive, locked_until=locked_until, hard_locked=hard)

    def _forget(self, key: str, now: float) -> float:
        before = forget_before(key, now=now, settings=self._settings)
        return _NEVER if before is None else before


def _give_back(connection: Connection, reserved: Reserved) -> None:
    key = reserved.key
    row = connection.execute(_CONSECUTIVE, {"k": key}).first()
    if row is None:
        return
    prior = reserved.prior
    if row.consecutive != reserved.consecutive:
        connection.execute(_SET_COUNT, {"k": key, "n": max(0, row.consecutive - 1)})
    elif prior.consecutive == 0:
        connection.execute(_DELETE, {"k": key})
    else:
        connection.execute(_RESTORE, {"k": key, "n": prior.consecutive,
                                      "until": prior.locked_until, "hard": prior.hard_locked})


def _check(reserved: Sequence[Reserved], checked: set[str], now: float) -> None:
    check(*(one.prior for one in reserved if one.key in checked), now=now)


def _increment(connection: Connection, key: str, *, now: float,
               forget: float) -> tuple[int, float, bool]:
    """INSERT ... ON CONFLICT DO UPDATE ... RETURNING: the new count, and the lock the key had
    before (this statement leaves the lock columns as they were)."""
    row = connection.execute(on_dialect(connection, _UPSERT),
                             {"k": key, "at": now, "forget": forget}).one()
    return int(row[0]), float(row[1]), bool(row[2])
