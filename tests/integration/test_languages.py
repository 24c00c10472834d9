"""The portal in German and English through the application (issue 15)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from stepguard.web.app import create_app
from stepguard.web.i18n import LANGUAGE_COOKIE
from tests.support.gateway import make_runtime, seed_user

BASE = "http://localhost:9091"


def test_accept_language_the_switch_and_the_remembered_choice(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, follow_redirects=False) as client:
        german = client.get("/login", headers={"Accept-Language": "de-DE,de;q=0.9"})
        assert german.headers["content-language"] == "de"
        assert "Benutzername" in german.text and '<html lang="de">' in german.text
        assert 'hreflang="en"' in german.text  # the switch offers the other language
        english = client.get("/login?lang=en&rd=%2Faccount",
                             headers={"Accept-Language": "de"})
        assert "Username" in english.text
        assert english.cookies.get(LANGUAGE_COOKIE) == "en"
        again = client.get("/login", headers={"Accept-Language": "de"})
        assert "Username" in again.text  # the switch is remembered over the browser's wish
        switched = client.get("/login?lang=de")
        assert "Benutzername" in switched.text
        assert 'href="/login?rd=%2Faccount&amp;lang=de"' in english.text  # keeps the query
        # A failed sign-in's message is translated where it is shown.
        page = client.get("/login")
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        failed = client.post("/login", data={"username": "alice", "password": "wrong",
                                             "csrf_token": token})
        shown = client.get(failed.headers["location"])
        assert "Benutzername oder Passwort stimmen nicht." in shown.text
    runtime.close()
