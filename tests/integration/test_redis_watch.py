"""Redis down (SECURITY.md attack case 16), in process where coverage sees the watch: a real
private Redis is stopped and started again under a gateway built in this process. While it is
down a protected request is refused (503), never allowed, and readiness says so; when it returns
the gateway resumes by itself. A gateway started while Redis is down waits for it the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.core.errors import StoreUnavailable
from stepguard.gateway import create_app
from tests.support.gateway import make_runtime, seed_user
from tests.support.servers import Redis, require_binaries

FORWARD = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https",
           "X-Forwarded-Host": "app.test", "X-Forwarded-Uri": "/dashboard"}


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the watch did not notice in time"
        time.sleep(0.05)


def _redis_config(redis: Redis) -> str:
    return (f'redis: {{url: "{redis.redis_url}", health_check_interval: 1s, '
            "socket_timeout: 1s, connect_timeout: 0.5s}\n")


@pytest.fixture()
def redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    require_binaries("redis-server", "redis-cli")
    server = Redis(tmp_path / "redis")
    yield server
    server.stop()


def test_redis_down_refuses_protected_requests_and_service_resumes_by_itself(
        tmp_path: Path, redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stepguard.health")
    redis.start()
    runtime = make_runtime(tmp_path / "gw", extra=_redis_config(redis))
    seed_user(runtime)
    watch = runtime.redis_watch
    assert watch is not None and watch.up
    try:
        with TestClient(create_app(runtime), base_url="http://localhost:9091",
                        client=("127.0.0.1", 1000)) as client:
            assert client.get("/readyz").status_code == 200
            redis.stop()
            _until(lambda: not watch.up)
            with pytest.raises(StoreUnavailable):
                runtime.require_stores()
            with pytest.raises(StoreUnavailable):
                watch.ping()
            refused = client.get("/api/authz/forward-auth", headers=FORWARD)
            assert refused.status_code == 503  # never an allow (nor a sign-in page) while down
            assert client.get("/readyz").status_code == 503
            redis.start()
            _until(lambda: watch.up)
            runtime.require_stores()
            assert client.get("/readyz").status_code == 200
            assert client.get("/api/authz/forward-auth", headers=FORWARD).status_code != 503
    finally:
        runtime.close()
    said = [r.getMessage() for r in caplog.records if r.name == "stepguard.health"]
    assert said == ["redis is unavailable (ConnectionError); protected requests get 503",
                    "redis is reachable again"]  # the error's class only, never its text


def test_a_gateway_started_while_redis_is_down_waits_for_it(tmp_path: Path, redis: Redis) -> None:
    runtime = make_runtime(tmp_path / "gw", extra=_redis_config(redis))  # redis not started
    try:
        watch = runtime.redis_watch
        assert watch is not None and not watch.up
        with pytest.raises(StoreUnavailable):
            runtime.require_stores()
        redis.start()
        _until(lambda: watch.up)
        runtime.require_stores()
    finally:
        runtime.close()
