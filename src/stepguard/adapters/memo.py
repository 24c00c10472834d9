"""A bounded memo of computed answers for the request hot path (parsed addresses, verified
cookies): pure functions of their key, so a remembered answer is the answer."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most `size` answers; the oldest goes first. Shared by the event loop and worker
    threads: each step is one dict operation under the GIL, and a racing eviction is harmless."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        items = self._items
        items[key] = value
        while len(items) > self.size:
            try:
                del items[next(iter(items))]
            except (KeyError, StopIteration, RuntimeError):  # another thread got there first
                return

    def __len__(self) -> int:
        return len(self._items)
