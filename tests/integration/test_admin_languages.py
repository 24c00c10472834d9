"""The admin console in the operator's language (issue 15): every admin page, confirmation,
refusal and message the console makes in Python is German for a German browser, English
otherwise — nothing of the console is left in English on a German page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepguard.config.load import load_config
from stepguard.service.runtime import build_runtime
from tests.integration.test_admin_console import BASE, GROUPS, POLICY, Console, csrf_of
from tests.support.gateway import Clock, seed_user, write_config

GERMAN = {"Accept-Language": "de-DE,de;q=0.9"}
ENGLISH = {"Accept-Language": "en"}
NAV = [("Users and status", "Personen und Status"), ("Audit log", "Prüfprotokoll"),
       ("Your role: admin", "Ihre Rolle: admin")]
PAGES = {
    "/admin": [("Verify the chain now", "Kette jetzt prüfen"), ("Unlock", "Entsperren"),
               ("End sessions", "Sitzungen beenden"), ("Reset factors", "Faktoren zurücksetzen"),
               ("Not verified since this instance started.",
                "Seit dem Start dieser Instanz nicht geprüft.")],
    "/admin/dashboard": [("Decisions over time", "Entscheidungen im Zeitverlauf"),
                         ("Period:", "Zeitraum:"), ("Decisions as a table",
                                                    "Entscheidungen als Tabelle"),
                         ("No data in the period", "Keine Daten im Zeitraum")],
    "/admin/audit": [("From (UTC day)", "Von (Tag, UTC)"), ("Filter", "Filtern"),
                     ("Reasons", "Gründe")],
    "/admin/policy": [("Rule (first match wins)", "Regel (die erste passende gilt)"),
                      ("Changes since the previous version",
                       "Änderungen seit der vorigen Version")],
    "/admin/notifications": [("Undelivered webhook notices",
                              "Nicht zugestellte Webhook-Benachrichtigungen"),
                             ("Every notice was delivered.",
                              "Jede Benachrichtigung wurde zugestellt.")],
}


@pytest.fixture()
def console(tmp_path: Path) -> Iterator[Console]:
    clock = Clock()
    runtime = build_runtime(load_config(write_config(tmp_path, policy=POLICY)), clock=clock)
    users = {role: seed_user(runtime, role, groups=groups) for role, groups in GROUPS.items()}
    yield Console(runtime, clock, users, seed_user(runtime, "target", groups=()))
    runtime.close()


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def has(html: str, phrase: str) -> bool:
    """`phrase` as whole words in the page's text ("Filter" is not in "Filtern")."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text_of(html)) is not None


@pytest.mark.parametrize("path", list(PAGES))
def test_every_admin_page_is_german_for_a_german_browser(console: Console, path: str) -> None:
    with console.client("admin") as client:
        english = client.get(path, headers=ENGLISH)
        german = client.get(path, headers=GERMAN)
    assert english.status_code == german.status_code == 200
    assert german.headers["content-language"] == "de"
    for en, de in [*NAV, *PAGES[path]]:
        assert has(english.text, en), (path, en)
        assert has(german.text, de) and not has(german.text, en), (path, en)


def test_confirmations_refusals_and_outcomes_are_german(console: Console) -> None:
    console.session(console.target)
    with console.client("admin") as client:
        token = csrf_of(client)
        headers = {**GERMAN, "Origin": BASE}
        target = {"user_id": console.target.user.id, "csrf_token": token}
        asked = client.post("/admin/users/unlock", data=target, headers=headers)
        assert asked.status_code == 200
        assert "target entsperren?" in asked.text and "Bestätigen" in asked.text
        assert "Das hebt jede Sperre und Wartezeit auf" in asked.text
        done = client.post("/admin/users/unlock", data={**target, "confirm": "yes"},
                           headers=headers)
        assert done.status_code == 303
        console_page = client.get(done.headers["location"], headers=GERMAN)
        assert "target entsperren." not in console_page.text  # the outcome line, in German:
        assert "target entsperrt." in console_page.text
        mine = {"user_id": console.users["admin"].user.id, "csrf_token": token, "confirm": "yes"}
        refused = client.post("/admin/users/disable", data=mine, headers=headers)
        assert refused.status_code == 409 and "Nicht bei sich selbst" in refused.text
        assert ">Zurück</a>" in refused.text
        missing = client.post("/admin/users/unlock", data={**target, "user_id": "nobody-here"},
                              headers=headers)
        assert missing.status_code == 404 and "Diese Person gibt es nicht." in missing.text
        bad = client.post("/admin/users/create", headers=headers, data={
            "csrf_token": token, "username": "no spaces allowed"})
        assert bad.status_code == 400 and "Ein Benutzername besteht aus" in bad.text
        create = {"csrf_token": token, "username": "newcomer", "groups": "auditors"}
        confirm = client.post("/admin/users/create", headers=headers, data=create)
        assert "newcomer anlegen?" in confirm.text and "die Gruppen auditors" in confirm.text
        created = client.post("/admin/users/create", headers=headers,
                              data={**create, "confirm": "yes"})
        assert created.status_code == 200 and "newcomer angelegt" in created.text
        assert "Einmalpasswort" in created.text and "one-time" not in created.text
    with console.client("auditor") as client:
        token = csrf_of(client)
        below = client.post("/admin/users/unlock", headers={**GERMAN, "Origin": BASE},
                            data={"csrf_token": token, "user_id": console.target.user.id})
        assert below.status_code == 403
        assert "Ihr Konto darf diese Aktion nicht ausführen (nötig: operator)." in below.text
