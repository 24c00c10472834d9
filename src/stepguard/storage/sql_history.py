"""Each user's risk history in SQL: one bounded JSON document per user, updated under a row lock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from stepguard.core.risk import EMPTY_HISTORY, Location, RiskHistory
from stepguard.storage import tables as t
from stepguard.storage.sql_base import Database, bump_user, dumps, loads, on_dialect, per_dialect

HISTORY_ITEMS = 50  # newest devices, networks, countries and amounts kept per user
FAILURE_WINDOW = 3600.0  # failures older than this (before the newest event) are dropped

_H = t.risk_history.c
Document = dict[str, Any]

# Built once (every sign-in and step-up runs them; building them per call cost as much).
_READ = select(_H.data).where(_H.user_id == bindparam("uid"))
_READ_LOCKED = _READ.with_for_update()
_WRITE = update(t.risk_history).where(_H.user_id == bindparam("uid")).values(
    data=bindparam("doc"))
_ENSURE = per_dialect(lambda dialect: dialect.insert(t.risk_history)
                      .values(user_id=bindparam("uid"), data="{}")
                      .on_conflict_do_nothing(index_elements=[_H.user_id]))


class HistoryUpdates:
    """The history's writes, the same for every backend: each is one change of the user's
    document, applied by the backend's `_change` (atomically, raising the user's version)."""

    def _change(self, user_id: str, change: Callable[[Document], None]) -> None:
        raise NotImplementedError

    def record_success(
        self,
        user_id: str,
        *,
        device_id: str,
        network_prefix: str,
        country: str,
        location: Location | None,
        at: float,
        hour: int,
        amount: float | None = None,
    ) -> None:
        """Remember what a successful sign-in or step-up looked like.

        Without a `location` the last known place and its time are kept as they were.
        """
        if not 0 <= hour < 24:
            raise ValueError("hour must be a UTC hour from 0 to 23")
        self._change(user_id, lambda doc: add_success(
            doc, device_id=device_id, network_prefix=network_prefix, country=country,
            location=location, at=at, hour=hour, amount=amount))

    def record_failure(self, user_id: str, *, at: float) -> None:
        """Remember a failed attempt; only those within the last hour are kept."""
        self._change(user_id, lambda doc: add_failure(doc, at=at))

    def record_trusted(self, user_id: str, *, entries: list[str]) -> None:
        """Remember clients (device, network) that passed a factor; the newest 50 are kept."""
        self._change(user_id, lambda doc: add_trusted(doc, entries))

    def record_amount(self, user_id: str, amount: float) -> None:
        """Remember the amount of an allowed action (the `unusual_amount` baseline)."""
        self._change(user_id, lambda doc: add_amount(doc, amount))


class SqlHistory(HistoryUpdates):
    def __init__(self, db: Database) -> None:
        self._db = db

    def load(self, user_id: str) -> RiskHistory:
        """The user's history; an empty one for a user never seen."""
        with self._db.read() as connection:
            text = connection.execute(_READ, {"uid": user_id}).scalar()
        return history_from_document(None if text is None else loads(text))

    def _change(self, user_id: str, change: Callable[[Document], None]) -> None:
        with self._db.write() as connection:
            bump_user(connection, user_id)  # deferred to the end of the transaction
            _ensure_row(connection, user_id)
            text = connection.execute(_READ_LOCKED, {"uid": user_id}).scalar_one()
            doc = loads(text)
            change(doc)
            connection.execute(_WRITE, {"uid": user_id, "doc": dumps(doc)})


def add_success(doc: Document, *, device_id: str, network_prefix: str, country: str,
                location: Location | None, at: float, hour: int, amount: float | None) -> None:
    """The history document after a success (every backend stores the same document)."""
    _remember(doc, "devices", device_id)
    _remember(doc, "networks", network_prefix)
    _remember(doc, "countries", country)
    if amount is not None:
        add_amount(doc, amount)
    hours = doc.get("hours") or [0] * 24
    hours[hour] += 1
    doc["hours"] = hours
    if location is not None:  # last place and time stay paired for impossible travel
        doc["location"] = _location_doc(location)
        doc["seen"] = at


def add_amount(doc: Document, amount: float) -> None:
    doc["amounts"] = [*doc.get("amounts", []), amount][-HISTORY_ITEMS:]


def add_trusted(doc: Document, entries: list[str]) -> None:
    for entry in entries:
        _remember(doc, "trusted", entry)


def add_failure(doc: Document, *, at: float) -> None:
    failures = [when for when in doc.get("failures", []) if when > at - FAILURE_WINDOW]
    doc["failures"] = [*failures, at][-HISTORY_ITEMS * 2 :]


def _ensure_row(connection: Connection, user_id: str) -> None:
    connection.execute(on_dialect(connection, _ENSURE), {"uid": user_id})


def _remember(doc: Document, name: str, value: str) -> None:
    """Move `value` to the newest end of a bounded list (empty values are not remembered)."""
    if not value:
        return
    values = [known for known in doc.get(name, []) if known != value]
    doc[name] = [*values, value][-HISTORY_ITEMS:]


def _location_doc(location: Location) -> Document:
    return {
        "country": location.country,
        "city": location.city,
        "latitude": location.latitude,
        "longitude": location.longitude,
    }


def history_from_document(doc: Document | None) -> RiskHistory:
    """The history stored as `doc` (None: a user never seen)."""
    if doc is None:
        return EMPTY_HISTORY
    location = doc.get("location")
    return RiskHistory(
        known_devices=frozenset(doc.get("devices", ())),
        known_networks=frozenset(doc.get("networks", ())),
        known_countries=frozenset(doc.get("countries", ())),
        last_location=None if location is None else Location(**location),
        last_seen_at=doc.get("seen"),
        recent_failures=tuple(doc.get("failures", ())),
        hour_histogram=tuple(doc.get("hours", ())),
        amounts=tuple(doc.get("amounts", ())),
        trusted=frozenset(doc.get("trusted", ())),
    )
