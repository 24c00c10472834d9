"""Sign-in with identity providers, over HTTP: the bundled OpenID provider (a real server) and
Stepguard (a real server), a browser-like client between them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.oidc import Site, forward_auth, serve_site

PARTNER = "      username_prefix: \"partner:\"\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve_site(tmp_path_factory.mktemp("oidc"), {
        "corp": {"config": "      step_up: either\n"},
        "partner": {"config": PARTNER},
        "lax": {"honour_acr": False, "config": "      username_prefix: \"lax:\"\n"
                                               "      step_up: idp\n"},
    }) as running:
        yield running


def test_sign_in_creates_the_user_from_claims_and_maps_groups(site: Site) -> None:
    browser = site.browser()
    done = browser.sign_in("corp", user="alice", method="pwd", rd="https://app.test/home")
    assert done.status_code == 303, done.text[:300]
    assert done.headers["location"] == "https://app.test/home"
    user = site.runtime.store.users.by_username("alice")
    assert user is not None and user.password_hash == ""
    assert user.groups == frozenset({"staff", "engineering"})
    assert user.email == "alice@example.com" and user.display_name == "Alice Idp"
    allowed = forward_auth(browser, "/staff/page")
    assert allowed.status_code == 200
    assert allowed.headers["remote-user"] == "alice"
