"""Contract: each user's risk history, bounded and safe under concurrent updates."""

from __future__ import annotations

import pytest

from stepguard.core.risk import EMPTY_HISTORY, Location
from stepguard.storage.sql import SqlStore
from stepguard.storage.sql_history import FAILURE_WINDOW, HISTORY_ITEMS
from tests.contract import build
from tests.contract.build import NOW

BERLIN = Location(country="DE", city="Berlin", latitude=52.52, longitude=13.40)


def success(store: SqlStore, **fields: object) -> None:
    values: dict[str, object] = {
        "device_id": "dev-1",
        "network_prefix": "192.0.2.0/24",
        "country": "DE",
        "location": BERLIN,
        "at": NOW,
        "hour": 9,
        "amount": None,
    }
    store.history.record_success("u1", **{**values, **fields})  # type: ignore[arg-type]


def test_unknown_user_has_empty_history(store: SqlStore) -> None:
    assert store.history.load("u1") == EMPTY_HISTORY


def test_success_is_remembered(store: SqlStore) -> None:
    success(store, amount=120.5)
    success(
        store, device_id="dev-2", network_prefix="2001:db8::/64", country="FR", hour=9, at=NOW + 5
    )
    history = store.history.load("u1")
    assert history.known_devices == {"dev-1", "dev-2"}
    assert history.known_networks == {"192.0.2.0/24", "2001:db8::/64"}
    assert history.known_countries == {"DE", "FR"}
    assert history.last_location == BERLIN and history.last_seen_at == NOW + 5
    assert history.hour_histogram[9] == 2 and sum(history.hour_histogram) == 2
    assert history.amounts == (120.5,)


def test_without_location_the_last_place_and_time_stay(store: SqlStore) -> None:
    success(store)
    success(store, location=None, at=NOW + 50, device_id="")
    history = store.history.load("u1")
    assert (history.last_location, history.last_seen_at) == (BERLIN, NOW)
    assert history.known_devices == {"dev-1"}


def test_sizes_are_bounded_keeping_the_newest(store: SqlStore) -> None:
    for i in range(HISTORY_ITEMS + 10):
        success(store, device_id=f"dev-{i}", amount=float(i), hour=i % 24)
    history = store.history.load("u1")
    assert len(history.known_devices) == HISTORY_ITEMS
    assert (
        "dev-0" not in history.known_devices and f"dev-{HISTORY_ITEMS + 9}" in history.known_devices
    )
    assert history.amounts == tuple(float(i) for i in range(10, HISTORY_ITEMS + 10))


def test_a_seen_again_device_is_kept_as_newest(store: SqlStore) -> None:
    success(store, device_id="old-laptop")
    for i in range(HISTORY_ITEMS - 1):
        success(store, device_id=f"dev-{i}")
    success(store, device_id="old-laptop")
    success(store, device_id="one-more")
    assert "old-laptop" in store.history.load("u1").known_devices


def test_only_failures_within_the_window_are_kept(store: SqlStore) -> None:
    store.history.record_failure("u1", at=NOW)
    store.history.record_failure("u1", at=NOW + 10)
    store.history.record_failure("u1", at=NOW + FAILURE_WINDOW + 5)
    assert store.history.load("u1").recent_failures == (NOW + 10, NOW + FAILURE_WINDOW + 5)


def test_concurrent_failures_are_not_lost(store: SqlStore) -> None:
    build.race(20, lambda i: store.history.record_failure("u1", at=NOW + i))
    assert sorted(store.history.load("u1").recent_failures) == [NOW + i for i in range(20)]


def test_hour_must_be_a_utc_hour(store: SqlStore) -> None:
    with pytest.raises(ValueError):
        success(store, hour=24)
