"""Fixtures shared by the unit tests of the service layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepguard.audit.memory import MemoryAuditLog
from stepguard.config.load import load_config
from stepguard.core.context import RequestContext
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.memory import MemoryStore
from tests.support.gateway import Clock, write_config
from tests.unit.test_guard import POLICY

IP_KEY = 'ip_pseudonym_key: "0123456789abcdef0123"'


@pytest.fixture
def decides(monkeypatch: pytest.MonkeyPatch) -> list[RequestContext]:
    """Every context `core.decide` is called with (the memo saves exactly these calls)."""
    from stepguard.service import guard as module

    seen: list[RequestContext] = []
    real = module.decide

    def counted(policy: Any, context: RequestContext, *args: Any) -> Any:
        seen.append(context)
        return real(policy, context, *args)

    monkeypatch.setattr(module, "decide", counted)
    return seen


Make = Callable[..., Runtime]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator[Make]:
    """Runtimes on the memory store (`sqlite=True`: the SQLite store with its version board),
    closed at the end; `audit` is the config's audit section, `ip_key` adds the IP key."""
    made: list[Runtime] = []

    def runtime(*, policy: str = POLICY, audit: str = "", ip_key: bool = False,
                sqlite: bool = False, extra: str = "") -> Runtime:
        folder = tmp_path / f"rt{len(made)}"
        extra += f"audit: {audit}\n" if audit else ""
        config = write_config(folder, policy=policy, extra=extra)
        if ip_key:
            config.write_text(config.read_text().replace("totp_current: k1}",
                                                         f"totp_current: k1, {IP_KEY}}}"))
        rt = build_runtime(load_config(config), clock=clock,
                           store=None if sqlite else MemoryStore(),
                           audit_log=MemoryAuditLog())
        made.append(rt)
        return rt

    yield runtime
    for rt in made:
        rt.close()
