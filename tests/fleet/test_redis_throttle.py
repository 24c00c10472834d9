"""Redis throttle counters pass the same contract suite as the SQL ones (tests/contract), on a
real Redis; and a Redis outage makes them fail closed (`StoreUnavailable`), never "not locked"."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stepguard.core.errors import StoreUnavailable
from stepguard.core.throttle import ThrottleSettings, ip_key
from stepguard.storage.redis_throttle import RedisThrottle, connect
from tests.contract import test_throttle as contract
from tests.support.servers import Redis, require_binaries

CASES = [f for name, f in inspect.getmembers(contract, inspect.isfunction)
         if name.startswith("test_")]


@dataclass
class RedisBacked:
    """What the contract tests use of a store: its `throttle` role."""

    throttle: Any


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    require_binaries("redis-server", "redis-cli")
    with Redis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


def client_for(server: Redis, **overrides: float) -> Any:
    settings = {"connect_timeout": 0.5, "socket_timeout": 0.5, "retries": 1,
                "health_check_interval": 0.0, **overrides}
    return connect(server.redis_url, **settings)  # type: ignore[arg-type]


@pytest.fixture()
def store(redis_server: Redis) -> Iterator[RedisBacked]:
    client = client_for(redis_server)
    client.flushdb()
    yield RedisBacked(RedisThrottle(client, ThrottleSettings()))
    client.close()


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_redis_throttle_meets_the_throttle_contract(case: Any, store: RedisBacked) -> None:
    case(store)


def test_ip_keys_expire_in_redis_and_account_keys_do_not(store: RedisBacked,
                                                         redis_server: Redis) -> None:
    client = client_for(redis_server)
    store.throttle.record_failure(ip_key("203.0.113.5"), now=1.0)
    store.throttle.record_failure(contract.KEY, now=1.0)
    assert 3600 < client.ttl("stepguard:throttle:ip:203.0.113.5") <= 3660
    assert client.ttl("stepguard:throttle:" + contract.KEY) == -1  # never forgotten
    client.close()


def test_an_unreachable_redis_fails_closed(tmp_path: Path) -> None:
    require_binaries("redis-server", "redis-cli")
    server = Redis(tmp_path)  # never started: connection refused
    throttle = RedisThrottle(client_for(server, connect_timeout=0.2), ThrottleSettings())
    with pytest.raises(StoreUnavailable):
        throttle.state(contract.KEY, now=1.0)
    with pytest.raises(StoreUnavailable):
        throttle.record_failure(contract.KEY, now=1.0)
    with pytest.raises(StoreUnavailable):
        throttle.settle(clear=[contract.KEY], give_back=[])


def test_settle_is_applied_whole_after_redis_lost_its_scripts(store: RedisBacked,
                                                               redis_server: Redis) -> None:
    """A verdict's follow-up is one script call: after Redis lost its scripts (SCRIPT FLUSH, a
    restart, a failover to a replica with its own script cache) it is sent again whole, never
    half applied. (A first form ran DEL and EVALSHA in one MULTI/EXEC, whose script check came
    before MULTI: a loss in between applied the DEL alone and raised NOSCRIPT.)"""
    throttle = store.throttle
    address = ip_key("198.51.100.9")
    throttle.record_failure(contract.KEY, now=1.0)
    (reserved,) = throttle.reserve(check=[], count=[address], now=2.0)
    other = client_for(redis_server)
    try:
        other.script_flush()  # the scripts this client loaded are gone
        throttle.settle(clear=[contract.KEY], give_back=[reserved])
    finally:
        other.close()
    assert throttle.state(contract.KEY, now=3.0).consecutive == 0  # cleared
    assert throttle.state(address, now=3.0).consecutive == 0  # and given back
