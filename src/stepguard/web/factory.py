"""An application factory for servers that import the app by name (uvicorn workers, granian).

`STEPGUARD_CONFIG` names the configuration file; each worker process builds its own runtime.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from stepguard.config.load import load_config
from stepguard.gateway import create_app
from stepguard.service.runtime import build_runtime


def app_from_env() -> Starlette:
    loaded = load_config(os.environ.get("STEPGUARD_CONFIG", "stepguard.yaml"))
    return create_app(build_runtime(loaded))
