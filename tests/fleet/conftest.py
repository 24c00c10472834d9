"""The fleet: one per test package (starting it takes a few seconds); tests restore what they
break (a stopped instance, PostgreSQL or Redis) before they end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stepguard.config.load import load_config
from stepguard.service.runtime import build_runtime
from stepguard.storage.migrate import upgrade
from tests.fleet.harness import (
    TEST_BASE_DELAY,
    Fleet,
    fleet_config,
    fleet_nginx,
    instance,
    start_all,
)
from tests.support.gateway import Seeded, seed_user
from tests.support.postgres import create_database, running_postgres
from tests.support.servers import Redis, UvicornServer, free_port, require_binaries


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_binaries("nginx", "redis-server", "redis-cli")
    workdir = tmp_path_factory.mktemp("fleet")
    with running_postgres() as postgres, Redis(workdir / "redis") as redis, UvicornServer(
        "tests.support.upstream_app:app", workdir / "app", name="app"
    ) as app:
        store_url = create_database(postgres.url(), prefix="fleet")
        upgrade(store_url)
        nginx_port = free_port()
        public_url = f"http://localhost:{nginx_port}"
        config = fleet_config(workdir, store_url=store_url, redis_url=redis.redis_url,
                              public_url=public_url, base_delay=TEST_BASE_DELAY)
        instances = [instance(workdir, config, name) for name in ("a", "b", "c")]
        start_all(instances)
        nginx = fleet_nginx(workdir, instances, app_port=app.port, listen=nginx_port)
        fleet = Fleet(workdir, postgres, store_url, redis, config, instances, nginx, public_url)
        try:
            with nginx:
                yield fleet
        finally:
            for member in instances:
                member.stop()


_users: dict[str, int] = {}


@pytest.fixture()
def user(fleet: Fleet, request: pytest.FixtureRequest) -> Seeded:
    """A fresh user with a TOTP factor (one per test: a TOTP step is accepted once per user)."""
    runtime = build_runtime(load_config(fleet.config))
    try:
        name = request.node.name.split("[")[0].removeprefix("test_")[:40].replace("_", "-")
        _users[name] = _users.get(name, 0) + 1
        return seed_user(runtime, f"{name}-{_users[name]}", groups=("staff",))
    finally:
        runtime.close()
