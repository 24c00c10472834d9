"""Throttle counters in Redis: the `Throttle` role, one atomic script per reservation.

Optional (`redis.url`): brute-force traffic then costs Redis one in-memory script call per
attempt instead of a PostgreSQL upsert, row lock and WAL write (bench/fleet.py measures both).
The back-off itself still comes from `core.throttle`; the scripts mirror `state_after`,
`delay_for` and `check` exactly (same free failures, doubling, cap and hard lock), so both
backends pass one contract suite. A script runs atomically, so reserve-then-verify holds: of
parallel reservations only those the locks allow are counted.

Each key is a hash `{consecutive, locked_until, hard_locked, last_failure}` under
`<prefix>throttle:<key>`. Forgetting an address's failures is decided against the caller's
`now` (`forget_before`), like the SQL backend; keys that forget also get a Redis TTL so that
abandoned ones are removed. Any Redis failure raises `StoreUnavailable`: sign-in and step-up
then fail closed. A retried command after a timeout may count one attempt twice: that errs on
the side of more throttling, never less. (The keys of one reservation must live on one Redis
node: a single instance or a replicated primary, not Redis Cluster.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from stepguard.core.errors import StoreUnavailable, Throttled
from stepguard.core.throttle import (
    ThrottleSettings,
    ThrottleState,
    forget_before,
    policy_for,
    state_after,
    user_prefix,
)
from stepguard.storage.records import Reserved

T = TypeVar("T")

# KEYS = the hashes; ARGV = now, base, cap, hard_limit, then per key: forget (or "none"),
# free failures, hard (1/0), checked (1/0), ttl. Returns {0, wait, locked} when a checked key
# is locked (nothing counted), else {1, then per key: new count, prior locked_until, prior hard}.
_RESERVE = """
local now, base, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hard_limit = tonumber(ARGV[4])
local priors, wait, locked = {}, 0, false
for i = 1, #KEYS do
  local o = 4 + (i - 1) * 5
  local forget = ARGV[o + 1]
  local old = redis.call('HMGET', KEYS[i], 'consecutive', 'locked_until', 'hard_locked',
                         'last_failure')
  local count, lock, hard = tonumber(old[1]) or 0, tonumber(old[2]) or 0, old[3] == '1'
  if forget ~= 'none' and old[4] and tonumber(old[4]) < tonumber(forget) then
    count, lock, hard = 0, 0, false
  end
  if count == 0 then lock, hard = 0, false end
  priors[i] = {count, lock, hard}
  if ARGV[o + 4] == '1' then
    if hard then locked = true end
    if lock - now > wait then wait = lock - now end
  end
end
if locked then return {0, '0', 1} end
if wait > 0 then return {0, string.format('%.17g', wait), 0} end
local out = {1}
for i = 1, #KEYS do
  local o = 4 + (i - 1) * 5
  local free, hardkey, ttl = tonumber(ARGV[o + 2]), ARGV[o + 3] == '1', tonumber(ARGV[o + 5])
  local count = priors[i][1] + 1
  local delay = 0
  if count - free > 0 then delay = math.min(cap, base * 2 ^ math.min(count - free - 1, 62)) end
  local hard = hardkey and count >= hard_limit
  redis.call('HSET', KEYS[i], 'consecutive', count,
             'locked_until', string.format('%.17g', now + delay),
             'hard_locked', hard and '1' or '0',
             'last_failure', string.format('%.17g', now))
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
  out[#out + 1] = count
  out[#out + 1] = string.format('%.17g', priors[i][2])
  out[#out + 1] = priors[i][3] and 1 or 0
end
return out
"""

# KEYS = the hashes to clear, then those to give an attempt back to; ARGV = how many to clear,
# then per given-back key: the count it reserved, and its prior count, locked_until and
# hard_locked. One script, so a verdict's follow-up is applied whole or not at all.
_SETTLE = """
local cleared = tonumber(ARGV[1])
for i = 1, cleared do redis.call('DEL', KEYS[i]) end
for i = cleared + 1, #KEYS do
  local o = 1 + (i - cleared - 1) * 4
  local current = tonumber(redis.call('HGET', KEYS[i], 'consecutive'))
  if current then
    if current ~= tonumber(ARGV[o + 1]) then
      if current > 0 then redis.call('HSET', KEYS[i], 'consecutive', current - 1) end
    elseif tonumber(ARGV[o + 2]) == 0 then
      redis.call('DEL', KEYS[i])
    else
      redis.call('HSET', KEYS[i], 'consecutive', ARGV[o + 2], 'locked_until', ARGV[o + 3],
                 'hard_locked', ARGV[o + 4])
    end
  end
end
return 1
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
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def reserve(
        self, *, check: Sequence[str], count: Sequence[str], now: float
    ) -> tuple[Reserved, ...]:
        """Count one attempt under every `count` key, unless a `check` key is locked at `now`
        (then raise `Throttled` and count nothing). `check` keys are counted too."""
        s = self._settings
        keys = sorted({*count, *check})
        args: list[str | int] = [repr(float(now)), repr(s.base_delay), repr(s.max_delay),
                                 s.hard_limit]
        for key in keys:
            policy = policy_for(key, s)
            forget = forget_before(key, now=now, settings=s)
            args += ["none" if forget is None else repr(forget), policy.free, int(policy.hard),
                     int(key in check), self._ttl(key)]
        out: list[Any] = self._call(
            lambda: self._reserve(keys=[self._prefix + k for k in keys], args=args))
        if not int(out[0]):
            raise Throttled(float(out[1]), locked=bool(int(out[2])))
        return tuple(
            Reserved.counted(key, int(out[1 + 3 * i]), locked_until=float(out[2 + 3 * i]),
                             hard_locked=bool(int(out[3 + 3 * i])))
            for i, key in enumerate(keys))

    def record_failure(self, key: str, *, now: float) -> ThrottleState:
        """Count one failure under `key` at `now` and lock the key for the back-off delay."""
        (one,) = self.reserve(check=(), count=(key,), now=now)
        return state_after(key, one.consecutive, now=now, settings=self._settings)

    def release(self, reserved: Reserved) -> None:
        """Give a reserved attempt back (see `SqlThrottle.release`)."""
        self.settle(clear=(), give_back=(reserved,))

    def settle(self, *, clear: Sequence[str], give_back: Sequence[Reserved]) -> None:
        """`SqlThrottle.settle` as one script call: atomic, and re-sent whole (redis-py loads
        the script again) when Redis has lost its scripts."""
        if not clear and not give_back:
            return
        keys = [self._prefix + key for key in clear]
        keys += [self._prefix + reserved.key for reserved in give_back]
        args: list[str | int] = [len(clear)]
        for reserved in give_back:
            prior = reserved.prior
            args += [reserved.consecutive, prior.consecutive, repr(prior.locked_until),
                     "1" if prior.hard_locked else "0"]
        self._call(lambda: self._settle(keys=keys, args=args))

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

    def reset_user(self, subject: str) -> None:
        """Forget every key of one subject (an operator's unlock, a new password)."""
        pattern = _glob_escape(self._prefix + user_prefix(subject)) + "*"

        def delete_all() -> None:
            for name in self._client.scan_iter(match=pattern, count=500):
                self._client.delete(name)

        self._call(delete_all)

    def _ttl(self, key: str) -> int:
        """Seconds a key that forgets may live unused (0 = forever)."""
        s = self._settings
        if not policy_for(key, s).forgets:
            return 0
        return math.ceil(max(s.ip_forget_after, s.max_delay)) + 60

    @staticmethod
    def _call(command: Callable[[], T]) -> T:
        with unavailable_on_redis_error():
            return command()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
