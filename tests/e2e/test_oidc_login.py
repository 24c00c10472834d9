"""Stepguard as an OpenID relying party against a real, OpenID-certified provider (oidc-provider
on Node.js, tests/e2e/oidc/login_provider.mjs): sign-in, step-up at the provider with
`acr_values` / `max_age` / an essential `acr` claim, and a provider that ignores `acr_values`
(its answer must not satisfy the rule). Everything over HTTP; no browser."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from stepguard.config.load import load_config
from stepguard.demo.idp import ThreadServer
from stepguard.gateway import create_app
from stepguard.service.runtime import build_runtime
from tests.e2e.test_oidc_step_up import OIDC_DIR, _install_provider, signing_key
from tests.support.gateway import write_config
from tests.support.oidc import POLICY, Browser, Site, forward_auth, query
from tests.support.servers import Process, free_port

pytestmark = pytest.mark.e2e
SECRET = secrets.token_urlsafe(24)
LEVELS = '{"urn:stepguard:aal1": aal1, "urn:stepguard:aal2": aal2, "urn:stepguard:aal3": aal3}'


@pytest.fixture(autouse=True)
def _demo_log_on_failure() -> None:
    """No demo server for these tests (overrides tests/e2e/conftest.py)."""


def _provider(node: str, workdir: Path, rp: str, name: str, *, ignore_acr: bool) -> Process:
    port = free_port()
    keys = workdir / f"jwks-{name}.json"
    keys.write_text(json.dumps({"keys": [signing_key(f"{name}-1")]}))
    keys.chmod(0o600)
    env = {**os.environ, "OIDC_PORT": str(port), "OIDC_JWKS_FILE": str(keys),
           "OIDC_CLIENT_SECRET": SECRET, "OIDC_RP": rp, "OIDC_PROVIDER_NAME": name,
           "OIDC_IGNORE_ACR": "1" if ignore_acr else "0", "NODE_ENV": "test"}
    return Process([node, "login_provider.mjs"], port=port, workdir=workdir,
                   name=f"oidc-login-{name}", env=env, cwd=OIDC_DIR,
                   ready_path="/.well-known/openid-configuration").start()


def _entry(name: str, process: Process, prefix: str) -> str:
    return (f"    - name: {name}\n      issuer: \"http://127.0.0.1:{process.port}\"\n"
            f"      client_id: stepguard\n      client_secret: \"{SECRET}\"\n"
            f"      algorithms: [ES256]\n      groups_claim: groups\n"
            f"      acr_levels: {LEVELS}\n      username_prefix: \"{prefix}\"\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    node = _install_provider()
    workdir = tmp_path_factory.mktemp("oidc-login")
    port = free_port()
    rp = f"http://localhost:{port}"
    honest = _provider(node, workdir, rp, "node", ignore_acr=False)
    lax = _provider(node, workdir, rp, "nodelax", ignore_acr=True)
    try:
        config = write_config(workdir / "sg", public_url=rp, policy=POLICY, extra=(
            "oidc:\n  providers:\n" + _entry("node", honest, "")
            + _entry("nodelax", lax, "lax:")))
        runtime = build_runtime(load_config(config), clock=time.time)
        server = ThreadServer(create_app(runtime), port, lifespan="on").start()
        try:
            yield Site(rp, runtime, {})
        finally:
            server.stop()
    finally:
        honest.stop()
        lax.stop()


def _through_provider(browser: httpx.Client, url: str, rp: str) -> httpx.Response:
    """Follow the provider's redirects (interaction, resume) until it sends us back."""
    for _ in range(10):
        response = browser.get(url)
        assert response.status_code in (302, 303), response.text[:400]
        url = response.headers["location"]
        if url.startswith("/"):
            parts = urlsplit(str(response.request.url))
            url = f"{parts.scheme}://{parts.netloc}{url}"
        if url.startswith(rp):
            return browser.get(url)
    raise AssertionError("the provider did not send the browser back")


def _sign_in(site: Site, name: str) -> Browser:
    browser = site.browser()
    start = browser.start_login(name)
    done = _through_provider(browser.http, start.headers["location"], site.url)
    assert done.status_code == 303, done.text[:400]
    return browser


def test_sign_in_and_step_up_at_a_real_provider(site: Site) -> None:
    browser = _sign_in(site, "node")
    user = site.runtime.store.users.by_username("alice")
    assert user is not None and user.groups == frozenset({"staff"})
    assert forward_auth(browser, "/staff/x").status_code == 200
    needs = forward_auth(browser, "/idp-fresh/pay", method="POST")
    cid_url = needs.headers["location"][needs.headers["location"].index("/step-up/"):]
    page = browser.get(cid_url)
    start = browser.post(f"{cid_url}/idp", {"csrf_token": browser.csrf(page)})
    asked = query(start.headers["location"])
    assert asked["prompt"] == "login" and asked["max_age"] == "0"
    done = _through_provider(browser.http, start.headers["location"], site.url)
    assert done.status_code == 303, done.text[:400]
    assert forward_auth(browser, "/idp-fresh/pay", method="POST").status_code == 200


def test_a_provider_that_ignores_acr_values_is_refused(site: Site) -> None:
    browser = _sign_in(site, "nodelax")
    needs = forward_auth(browser, "/idp-strong/x")
    cid_url = needs.headers["location"][needs.headers["location"].index("/step-up/"):]
    page = browser.get(cid_url)
    start = browser.post(f"{cid_url}/idp", {"csrf_token": browser.csrf(page)})
    refused = _through_provider(browser.http, start.headers["location"], site.url)
    assert refused.status_code == 403 and "needs aal2" in refused.text
    assert forward_auth(browser, "/idp-strong/x").status_code in (302, 303)
