"""Whether the stores Stepguard depends on answer: the hot-path gate and what `/readyz` reports.

PostgreSQL needs no watch: every decision for a session reads the store epoch first, so an
outage raises `StoreUnavailable` on that very request. Redis (when configured) is not read by a
decision, yet the fleet promise is "never an allow while a store is down", so `RedisWatch` keeps
one blocked `BLPOP` on a private key: when Redis stops, its connection closes and the watch
flips to down at once; when the network drops silently, the blocked call times out within
`health_check_interval + socket_timeout`. The gate is then one attribute read per request, no
round trip. The watch reconnects with capped back-off and flips back up by itself.
"""

from __future__ import annotations

import logging
import secrets
import threading

import redis

from stepguard.core.errors import StoreUnavailable
from stepguard.storage.redis_throttle import unavailable_on_redis_error

log = logging.getLogger("stepguard.health")

RETRY_MAX = 2.0  # seconds between reconnection attempts, at most


class RedisWatch:
    """Knows, without a round trip per request, whether Redis is reachable."""

    def __init__(self, client: redis.Redis, *, interval: float, key_prefix: str) -> None:
        self._client = client
        self._interval = max(0.1, interval)
        self._key = f"{key_prefix}watch:{secrets.token_hex(8)}"
        self._up = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepguard-redis-watch",
                                        daemon=True)

    @property
    def up(self) -> bool:
        return self._up

    def require(self) -> None:
        """Raise `StoreUnavailable` while Redis is known to be unreachable."""
        if not self._up:
            raise StoreUnavailable("redis is unavailable")

    def start(self) -> RedisWatch:
        """Try once now (so a healthy start is ready at once), then watch in the background."""
        self._up = self._probe()
        if not self._up:
            log.warning("redis is unavailable at start; protected requests get 503 until it is")
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        try:
            self._client.lpush(self._key, "stop")  # wake the blocked BLPOP
            self._client.delete(self._key)
        except (redis.RedisError, OSError):
            pass
        self._thread.join(timeout=self._interval + 1.0)
        self._client.close()

    def ping(self) -> None:
        """One real round trip (for `/readyz`); `StoreUnavailable` if it fails."""
        with unavailable_on_redis_error():
            self._client.ping()

    def _probe(self) -> bool:
        try:
            self._client.ping()
        except (redis.RedisError, OSError):
            return False
        return True

    def _run(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                self._client.blpop([self._key], timeout=self._interval)
            except (redis.RedisError, OSError) as error:
                self._set(False, error)
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._set(True)
            delay = 0.05

    def _set(self, up: bool, error: BaseException | None = None) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.warning("redis is reachable again")
        else:  # the error's class only: messages may name hosts or credentials
            log.warning("redis is unavailable (%s); protected requests get 503",
                        type(error).__name__ if error else "no answer")
