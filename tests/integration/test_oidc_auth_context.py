"""Microsoft Entra ID authentication contexts (`acrs`), over HTTP: the bundled OpenID provider
speaking Entra's claims request, once honouring it and once ignoring it, and Stepguard. The
answer's `acrs` is what counts, never the request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.oidc import Browser, Site, forward_auth, query, serve_site

CONTEXTS = ("      step_up: idp\n"
            "      auth_contexts:\n"
            "        c1: {level: aal2}\n"
            "        c2: {level: aal3, factor: webauthn}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve_site(tmp_path_factory.mktemp("acrs"), {
        "entra": {"config": CONTEXTS},
        "ignores": {"honour_acrs": False,
                    "config": "      username_prefix: \"ignores:\"\n" + CONTEXTS},
    }) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_hooks(site: Site) -> Iterator[None]:
    yield
    for idp in site.idps.values():
        idp.id_token_hook = None
        idp.userinfo_hook = None


def _with_acrs(*values: str) -> Any:
    return lambda header, claims: (header, {**claims, "acrs": list(values)})


def _challenge(response: Any) -> str:
    assert response.status_code == 302, response.text[:300]
    location = response.headers["location"]
    return location[location.index("/step-up/"):]


def _start_step_up(browser: Browser, path: str) -> Any:
    """The challenge's 'confirm at your provider' button: Stepguard's redirect to the provider."""
    cid_url = _challenge(forward_auth(browser, path))
    page = browser.get(cid_url)
    return browser.post(f"{cid_url}/idp", {"csrf_token": browser.csrf(page)})


def _finish(browser: Browser, start: Any, *, method: str) -> Any:
    back = browser.at_provider(start, method=method)
    assert back.status_code == 302, back.text[:400]
    return browser.get(back.headers["location"])


# --- sign-in: the auth contexts in `acrs` raise the level --------------------------------------


def test_sign_in_acrs_map_to_the_configured_level(site: Site) -> None:
    site.idps["entra"].id_token_hook = _with_acrs("c1", "c77")
    raised = site.browser()
    assert raised.sign_in("entra", method="pwd").status_code == 303
    assert forward_auth(raised, "/idp-strong/x").status_code == 200  # c1: aal2

    site.idps["entra"].id_token_hook = _with_acrs("c77", "", "C1")  # unknown ids are ignored
    unknown = site.browser()
    assert unknown.sign_in("entra", method="pwd").status_code == 303
    assert forward_auth(unknown, "/idp-strong/x").status_code == 302

    acr_only = site.browser()  # the acr/amr mapping still applies beside acrs
    assert acr_only.sign_in("entra", method="mfa").status_code == 303
    assert forward_auth(acr_only, "/idp-strong/x").status_code == 200


def test_a_context_with_a_factor_counts_as_that_factor(site: Site) -> None:
    site.idps["entra"].id_token_hook = _with_acrs("c2")
    browser = site.browser()
    assert browser.sign_in("entra", method="pwd").status_code == 303
    assert forward_auth(browser, "/passkey/x").status_code == 200  # c2: webauthn


def test_acrs_from_userinfo_is_ignored(site: Site) -> None:
    site.idps["entra"].userinfo_hook = lambda info: {**info, "acrs": ["c1", "c2"]}
    browser = site.browser()
    assert browser.sign_in("entra", method="pwd").status_code == 303
    assert forward_auth(browser, "/idp-strong/x").status_code == 302
    assert forward_auth(browser, "/passkey/x").status_code == 302


# --- step-up at the provider: ask with the claims parameter, check the answer ------------------


def test_step_up_asks_for_the_context_and_is_satisfied_by_it(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("entra", method="pwd")
    start = _start_step_up(browser, "/idp-strong/report")
    asked = query(start.headers["location"])
    assert json.loads(asked["claims"])["id_token"]["acrs"] == {"essential": True, "value": "c1"}
    assert "acr_values" not in asked and asked["max_age"] == "600"
    done = _finish(browser, start, method="mfa")
    assert done.status_code == 303, done.text[:400]
    assert done.headers["location"] == "https://app.test/idp-strong/report"
    assert forward_auth(browser, "/idp-strong/report").status_code == 200


def test_a_rule_with_methods_asks_for_the_context_of_that_factor(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("entra", method="pwd")
    start = _start_step_up(browser, "/passkey/x")
    assert json.loads(query(start.headers["location"])["claims"])["id_token"]["acrs"][
        "value"] == "c2"
    assert _finish(browser, start, method="phr").status_code == 303
    assert forward_auth(browser, "/passkey/x").status_code == 200


def test_a_provider_that_ignores_the_context_does_not_satisfy_the_rule(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("ignores", method="pwd")
    start = _start_step_up(browser, "/idp-strong/x")
    # The answer proves aal2 through acr/amr, but no acrs came back: still refused.
    site.idps["ignores"].id_token_hook = lambda h, c: (
        h, {**c, "acr": "urn:demo-idp:mfa", "amr": ["pwd", "otp"]})
    refused = _finish(browser, start, method="mfa")
    assert refused.status_code == 403, refused.text[:400]
    assert "authentication context" in refused.text
    assert forward_auth(browser, "/idp-strong/x").status_code == 302


def test_another_context_than_the_one_asked_for_is_refused(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("entra", method="pwd")
    start = _start_step_up(browser, "/passkey/x")  # asks for c2
    site.idps["entra"].id_token_hook = _with_acrs("c1")
    refused = _finish(browser, start, method="phr")
    assert refused.status_code == 403 and "authentication context" in refused.text
    assert forward_auth(browser, "/passkey/x").status_code == 302


def test_an_old_sign_in_does_not_satisfy_the_context(site: Site) -> None:
    browser = site.browser()
    browser.sign_in("entra", method="pwd")
    start = _start_step_up(browser, "/idp-strong/x")
    site.idps["entra"].id_token_hook = lambda h, c: (h, {**c, "auth_time": c["iat"] - 3600})
    refused = _finish(browser, start, method="mfa")
    assert refused.status_code == 403 and "older sign-in" in refused.text
