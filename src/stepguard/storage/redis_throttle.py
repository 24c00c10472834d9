"""Throttle counters in Redis: the `Throttle` role, one atomic script per failure.

Optional (`redis.url`): brute-force traffic then costs Redis one in-memory script call per
failure instead of a PostgreSQL upsert, row lock and WAL write (bench/fleet.py measures both).
The back-off itself still comes from `service.throttle`; the script mirrors `state_after` and
`delay_for` exactly (same doubling, cap and hard lock), so both backends pass one contract suite.

Each key is a hash `{consecutive, locked_until, hard_locked, last_failure}` under
`<prefix>throttle:<key>`. Forgetting an IP's failures is decided against the caller's `now`
(`forget_before`), like the SQL backend; IP keys also get a Redis TTL so that abandoned ones
are removed. Any Redis failure raises `StoreUnavailable`: sign-in and step-up then fail closed.
A retried command after a timeout may count one failure twice: that errs on the side of more
throttling, never less.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from stepguard.core.errors import StoreUnavailable
from stepguard.service.throttle import ThrottleSettings, forget_before, is_account_key
from stepguard.storage.records import ThrottleState

T = TypeVar("T")

# KEYS[1] = the hash; ARGV = now, forget (or "none"), base, max, hard_limit, account (1/0), ttl.
_RECORD_FAILURE = """
local now = tonumber(ARGV[1])
local forget = ARGV[2]
local base, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local hard_limit, account, ttl = tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local old = redis.call('HMGET', KEYS[1], 'consecutive', 'last_failure')
local count = tonumber(old[1]) or 0
if forget ~= 'none' and old[2] and tonumber(old[2]) < tonumber(forget) then count = 0 end
count = count + 1
local doublings = math.min(count - 1, 62)
local delay = math.min(cap, base * 2 ^ doublings)
local hard = account and count >= hard_limit
redis.call('HSET', KEYS[1], 'consecutive', count,
           'locked_until', string.format('%.17g', now + delay),
           'hard_locked', hard and '1' or '0',
           'last_failure', string.format('%.17g', now))
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return {count, string.format('%.17g', now + delay), hard and 1 or 0}
"""

_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


def connect(url: str, *, connect_timeout: float, socket_timeout: float, retries: int,
            health_check_interval: float) -> redis.Redis:
    """A client with bounded timeouts and retries (capped exponential back-off between them)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=health_check_interval,
        decode_responses=True,
    )


@contextmanager
def unavailable_on_redis_error() -> Iterator[None]:
    """Redis connection failures and timeouts become `StoreUnavailable` (fail closed)."""
    try:
        yield
    except _UNAVAILABLE as error:
        raise StoreUnavailable("redis is unavailable") from error


class RedisThrottle:
    """Counts consecutive failures per key in Redis; shared by every instance."""

    def __init__(self, client: redis.Redis, settings: ThrottleSettings, *,
                 prefix: str = "stepguard:") -> None:
        self._client = client
        self._settings = settings
        self._prefix = f"{prefix}throttle:"
        self._script = client.register_script(_RECORD_FAILURE)

    def record_failure(self, key: str, *, now: float) -> ThrottleState:
        """Count one failure under `key` at `now` and lock the key for the back-off delay."""
        s = self._settings
        forget = forget_before(key, now=now, settings=s)
        args = [repr(float(now)), "none" if forget is None else repr(forget), repr(s.base_delay),
                repr(s.max_delay), s.hard_limit, int(is_account_key(key)), self._ttl(key)]
        count, locked_until, hard = self._call(
            lambda: self._script(keys=[self._prefix + key], args=args))
        return ThrottleState(consecutive=int(count), locked_until=float(locked_until),
                             hard_locked=bool(int(hard)))

    def state(self, key: str, *, now: float) -> ThrottleState:
        fields = ("consecutive", "locked_until", "hard_locked", "last_failure")
        values: list[Any] = self._call(lambda: self._client.hmget(self._prefix + key, fields))
        if values[0] is None:
            return ThrottleState()
        forget = forget_before(key, now=now, settings=self._settings)
        if forget is not None and float(values[3]) < forget:
            return ThrottleState()
        return ThrottleState(consecutive=int(values[0]), locked_until=float(values[1]),
                             hard_locked=values[2] == "1")

    def reset(self, key: str) -> None:
        self._call(lambda: self._client.delete(self._prefix + key))

    def _ttl(self, key: str) -> int:
        """Seconds an IP key may live unused (0 = forever: account keys never forget)."""
        if is_account_key(key):
            return 0
        s = self._settings
        return math.ceil(max(s.ip_forget_after, s.max_delay)) + 60

    @staticmethod
    def _call(command: Callable[[], T]) -> T:
        with unavailable_on_redis_error():
            return command()
