"""Fixtures shared by the unit tests of the service layer."""

from __future__ import annotations

from typing import Any

import pytest

from stepguard.core.context import RequestContext


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
