"""A real Chromium signs in through real nginx (`auth_request`, the deploy/ config) with the
bundled OpenID provider, steps up once locally (TOTP) and once at the provider, and loses access
when the provider sends a back-channel logout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyotp
import pytest
from playwright.sync_api import Browser, Page

from stepguard.config.load import load_config
from stepguard.demo.idp import ThreadServer
from stepguard.gateway import create_app
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import build_runtime
from tests.support.gateway import write_config
from tests.support.oidc import CLIENT_ID, POLICY, make_idp, provider_config
from tests.support.servers import Nginx, UvicornServer, free_port, nginx_conf, require_binaries

pytestmark = [pytest.mark.browser, pytest.mark.proxy, pytest.mark.e2e]
TIMEOUT_MS = 10_000


@pytest.fixture(autouse=True)
def _demo_log_on_failure() -> None:
    """No demo server for these tests (overrides tests/e2e/conftest.py)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    require_binaries("nginx")
    workdir = tmp_path_factory.mktemp("oidc-browser")
    nginx_port, stepguard_port = free_port(), free_port()
    origin = f"http://localhost:{nginx_port}"
    idp, idp_server = make_idp("corp", origin)
    idp.clients[CLIENT_ID].backchannel_logout_uri = (
        f"http://127.0.0.1:{stepguard_port}/oidc/corp/backchannel-logout")
    config = write_config(workdir / "sg", public_url=origin, policy=POLICY, extra=(
        "oidc:\n  providers:\n" + provider_config("corp", idp, extra="      step_up: either\n")))
    runtime = build_runtime(load_config(config), clock=time.time)
    with UvicornServer("tests.support.upstream_app:app", workdir / "up", name="upstream") as up:
        server = ThreadServer(create_app(runtime), stepguard_port, lifespan="on").start()
        ports = {"listen_port": nginx_port, "stepguard_port": stepguard_port,
                 "upstream_port": up.port}
        try:
            with Nginx(nginx_conf(**ports, server_name="localhost"), workdir / "nginx"):
                yield {"origin": origin, "idp": idp, "runtime": runtime}
        finally:
            server.stop()
            idp_server.stop()


def _at_provider(page: Page, method: str) -> None:
    try:
        page.wait_for_selector('input[name="method"]', timeout=TIMEOUT_MS)
    except Exception:
        print(page.url, page.content()[:2000])
        raise
    page.check(f'input[name="method"][value="{method}"]')
    page.click('button[type="submit"]')


def test_browser_sign_in_local_and_provider_step_up_and_back_channel_logout(
        browser: Browser, stack: dict[str, object]) -> None:
    origin, idp, runtime = stack["origin"], stack["idp"], stack["runtime"]
    context = browser.new_context(base_url=str(origin))
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # 1. Signing in through nginx: the provider's button, its login page, back to the app.
    page.goto("/reports/q3")
    assert "/login" in page.url
    page.click('button[data-provider="corp"]')
    _at_provider(page, "pwd")
    page.wait_for_url(f"{origin}/reports/q3")
    assert '"alice"' in page.content()  # the upstream echoes Remote-User
    # 2. A local step-up (TOTP): the rule says `via: local`.
    user = runtime.store.users.by_username("alice")  # type: ignore[attr-defined]
    secret = pyotp.random_base32(32)
    Accounts(runtime).add_totp_secret(user, secret)  # type: ignore[arg-type]
    page.goto("/local-strong/x")
    assert "/step-up/" in page.url and "Confirm at your identity provider" not in page.content()
    page.fill("#totp-code", pyotp.TOTP(secret).now())
    page.click("text=Confirm with code")
    page.wait_for_url(f"{origin}/local-strong/x")
    # 3. A step-up at the provider: the rule says `via: idp` and `max_age: 0s` (a new proof).
    page.goto("/idp-fresh/report")
    assert "/step-up/" in page.url
    page.click("text=Confirm at your identity provider")
    _at_provider(page, "mfa")
    page.wait_for_url(f"{origin}/idp-fresh/report")
    assert "Stepguard-Acr" in page.content() or "stepguard-acr" in page.content().lower()
    # 4. The provider ends the session by back-channel logout: the next request signs in again.
    assert idp.backchannel_logout(CLIENT_ID, sub="sub-alice") == 200  # type: ignore[attr-defined]
    page.goto("/reports/q3")
    assert "/login" in page.url
    context.close()
