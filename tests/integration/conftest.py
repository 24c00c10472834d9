"""Fixtures for integration tests that run real servers (see tests/support/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import UvicornServer, require_binaries


@pytest.fixture(scope="session")
def upstream_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """The protected application (tests/support/upstream_app.py): echoes what it received."""
    workdir = tmp_path_factory.mktemp("upstream-app")
    with UvicornServer("tests.support.upstream_app:app", workdir, name="upstream") as server:
        yield server


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return require_binaries("nginx")["nginx"]


@pytest.fixture(scope="session")
def caddy_binary() -> str:
    return require_binaries("caddy")["caddy"]
