"""Webhook deliveries that failed every retry, kept for operators (`notification_dead_letters`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from stepguard.notifications.webhook import DeadLetter
from stepguard.storage.rollout_tables import notification_dead_letters as table
from stepguard.storage.sql_base import unavailable_on_driver_error


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    id: int
    created_at: float
    target: str
    event: str
    payload: str
    attempts: int
    last_error: str


class DeadLetters:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, letter: DeadLetter, *, now: float) -> None:
        with unavailable_on_driver_error(), self._engine.begin() as connection:
            connection.execute(insert(table).values(
                created_at=now, channel="webhook", target=letter.target[:512],
                event=letter.event[:64], payload=letter.payload, attempts=letter.attempts,
                last_error=letter.last_error[:512]))

    def recent(self, limit: int = 50) -> list[StoredDeadLetter]:
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        with unavailable_on_driver_error(), self._engine.connect() as connection:
            return [StoredDeadLetter(r.id, r.created_at, r.target, r.event, r.payload,
                                     r.attempts, r.last_error)
                    for r in connection.execute(query)]

    def count(self) -> int:
        with unavailable_on_driver_error(), self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(table)).one()[0])
