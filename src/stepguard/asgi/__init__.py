"""Stepguard inside an ASGI application: middleware, a route dependency, and remote mode.

    from stepguard.asgi import StepguardMiddleware, require_step_up, from_json

    app.add_middleware(StepguardMiddleware, mode="embedded", runtime=runtime)
"""

from __future__ import annotations

from stepguard.asgi.dependency import (
    StepUpDependency,
    StepUpRequired,
    from_form,
    from_json,
    from_path,
    from_query,
    require_step_up,
    step_up_exception_handler,
)
from stepguard.asgi.middleware import (
    PORTAL_PATHS,
    Decider,
    EmbeddedDecider,
    GrantInfo,
    StepguardMiddleware,
    StepguardState,
    rfc9470,
)
from stepguard.asgi.remote import RemoteDecider

__all__ = [
    "PORTAL_PATHS",
    "Decider",
    "EmbeddedDecider",
    "GrantInfo",
    "RemoteDecider",
    "StepUpDependency",
    "StepUpRequired",
    "StepguardMiddleware",
    "StepguardState",
    "from_form",
    "from_json",
    "from_path",
    "from_query",
    "require_step_up",
    "rfc9470",
    "step_up_exception_handler",
]
