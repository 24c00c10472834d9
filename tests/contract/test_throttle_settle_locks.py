"""Review of `Throttle.settle` (commit 3c76be5): the SQL settle must take its rows in the order
`reserve` takes them (sorted: `ip:...` before `user:...`), or a success's settle and a parallel
attempt's reservation from the same address for the same user wait on each other in a cycle.

`reserve(count=[address, ceiling])` upserts the address row first and the ceiling row second.
`settle(clear=[ceiling], give_back=[address])` deletes the ceiling row first and locks the
address row second: on PostgreSQL the two transactions deadlock and one of them is aborted
(`StoreUnavailable`) — a correct password or code answered with an error after its session
was opened or rotated, or a guess refused as "store unavailable". The test pauses the
reservation between its two rows (one transaction, the rows in reserve's own order) so the
interleaving is deterministic.
"""

from __future__ import annotations

import threading
import time

from stepguard.core.throttle import ip_key, user_factor_key
from stepguard.storage.sql import SqlStore
from tests.contract.build import NOW

ADDRESS = ip_key("198.51.100.77")
CEILING = user_factor_key("u1", "password")


def test_settle_and_a_parallel_reservation_never_deadlock(sql_store: SqlStore) -> None:
    store = sql_store
    mine = {one.key: one for one in
            store.throttle.reserve(check=[], count=[ADDRESS, CEILING], now=NOW)}
    assert sorted(mine) == [ADDRESS, CEILING]  # reserve's order: the address row first
    holding, go_on = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def parallel_reservation() -> None:
        """What `reserve(count=[ADDRESS, CEILING])` does, paused between its two rows."""
        try:
            with store.transaction():
                store.throttle.reserve(check=[], count=[ADDRESS], now=NOW + 1)
                holding.set()
                go_on.wait(10)
                store.throttle.reserve(check=[], count=[CEILING], now=NOW + 1)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            holding.set()

    def settle_my_success() -> None:
        try:
            store.throttle.settle(clear=[CEILING], give_back=[mine[ADDRESS]])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    other = threading.Thread(target=parallel_reservation)
    other.start()
    assert holding.wait(10)
    settler = threading.Thread(target=settle_my_success)
    settler.start()
    time.sleep(0.5)  # the settle has taken the ceiling row and waits for the address row
    go_on.set()
    other.join(30)
    settler.join(30)
    assert errors == [], [repr(e.__cause__) for e in errors]
