"""A rule's reason in the user's language on the step-up page (issue 15): the policy gives it
per language, the challenge stores each rendered text (SQLite here; the store contract covers
the others), and the page picks the one of its language — Accept-Language or the switch."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.service.runtime import Runtime
from stepguard.web.app import create_app
from tests.support.gateway import Clock, make_runtime, seed_user

BASE = "http://localhost:9091"
POLICY = """\
rules:
  - name: payout
    match: {paths: ["/payouts"]}
    require:
      level: aal2
      max_age: 0s
      reason: {en: "Approve the payouts at {request.path}",
               de: "Auszahlungen unter {request.path} freigeben"}
default: {level: aal1}
"""


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = make_runtime(tmp_path, clock=Clock(), policy=POLICY)
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=("127.0.0.1", 1000),
                    follow_redirects=False) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        client.post("/login", data={"username": "alice", "password": alice.password,
                                    "csrf_token": token.group(1)})
        yield client, runtime
    runtime.close()


def test_the_step_up_page_shows_the_reason_in_the_users_language(env) -> None:  # type: ignore[no-untyped-def]
    client, runtime = env
    asked = client.get("/api/authz/forward-auth", headers={
        "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "localhost:9091", "X-Forwarded-Uri": "/payouts",
        "Accept": "text/html"})
    assert asked.status_code == 302
    path = asked.headers["location"].removeprefix(BASE)
    stored = runtime.store.challenges.get(path.rsplit("/", 1)[1])
    assert stored is not None and dict(stored.reason_texts) == {
        "en": "Approve the payouts at /payouts", "de": "Auszahlungen unter /payouts freigeben"}
    german = client.get(path, headers={"Accept-Language": "de-CH, de;q=0.9"})
    assert "Auszahlungen unter /payouts freigeben" in german.text
    assert "Approve the payouts" not in german.text
    english = client.get(path, headers={"Accept-Language": "en-GB"})
    assert "Approve the payouts at /payouts" in english.text and "Auszahlung" not in english.text
    switched = client.get(path + "?lang=de", headers={"Accept-Language": "en"})
    assert "Auszahlungen unter /payouts freigeben" in switched.text
