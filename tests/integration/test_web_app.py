"""The Starlette app around the portal: well-known document, root, factory, store outages."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.core.errors import StoreUnavailable
from stepguard.web.factory import app_from_env
from tests.integration.test_enforcement import Gw, gw  # noqa: F401 (the fixture)
from tests.support.gateway import write_config


def test_well_known_names_the_acr_values_and_the_portal(gw: Gw) -> None:  # noqa: F811
    with gw.client() as client:
        document = client.get("/.well-known/stepguard-configuration").json()
        assert document == {"acr_values_supported": [
            "urn:stepguard:aal1", "urn:stepguard:aal2", "urn:stepguard:aal3"],
            "portal": "http://localhost:9091"}
        root = client.get("/")
        assert root.status_code == 303 and root.headers["location"] == "/account"


def test_a_store_outage_is_a_503_and_readiness_says_so(gw: Gw, monkeypatch: pytest.MonkeyPatch  # noqa: F811
                                                       ) -> None:
    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    with gw.client() as client:
        monkeypatch.setattr(gw.runtime.store, "ping", down)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["store"] == "unavailable"
        monkeypatch.setattr(gw.runtime.store.session_states, "read", down)
        client.cookies.set("stepguard_session", "x" * 43)
        page = client.get("/account")
        assert page.status_code == 503 and page.headers["retry-after"] == "5"


def test_the_factory_builds_the_app_from_stepguard_config(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEPGUARD_CONFIG", str(config))
    with TestClient(app_from_env()) as client:
        assert client.get("/healthz").text == "ok\n"
