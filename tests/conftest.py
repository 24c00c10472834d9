"""Shared fixtures. `postgres_url`: one real PostgreSQL database for the whole test session.

The server starts only when a test asks for it (tests marked `postgres`; deselect them with
`-m "not postgres"`). For a fresh database per module or test, call
`tests.support.postgres.create_database(postgres_url, prefix=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import postgres_for_tests


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_for_tests() as url:
        yield url
