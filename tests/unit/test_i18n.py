"""Languages (issue 15): English and German complete, the language from the switch, the
remembered choice or Accept-Language, and the script's texts in the catalog."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from stepguard.core.errors import Throttled
from stepguard.web.i18n import LOCALE_DIR, best_match, choose, translations
from stepguard.web.js_texts import JS_TEXTS, texts
from stepguard.web.render import Renderer, duration_text
from stepguard.web.text import throttle_text

ROOT = Path(__file__).resolve().parents[2]
GERMAN = LOCALE_DIR / "de" / "LC_MESSAGES" / "messages.po"


@pytest.mark.parametrize(("query", "cookie", "header", "expected"), [
    (None, None, None, "en"),
    (None, None, "de-DE,de;q=0.9,en;q=0.8", "de"),
    (None, None, "fr-FR, de;q=0.5, en;q=0.4", "de"),
    (None, None, "en;q=0.2, de;q=0.9", "de"),
    (None, None, "de;q=0, en", "en"),
    (None, None, "fr, it", "en"),
    (None, None, "de;q=garbage", "en"),
    (None, "de", "en", "de"),
    ("en", "de", "de", "en"),
    ("xx", "de", "en", "de"),
    ("../etc", "<script>", "de", "de"),
])
def test_the_language_is_the_switch_then_the_cookie_then_the_browser(
        query: str | None, cookie: str | None, header: str | None, expected: str) -> None:
    assert choose(query, cookie, header) == expected


def test_a_huge_accept_language_header_is_cheap() -> None:
    assert best_match("fr;q=0.1," * 10_000 + "de") == "en"  # only the first 20 items count


def test_the_german_catalog_is_complete_and_compiled(tmp_path: Path) -> None:
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [sys.executable, "-m", "babel.messages.frontend", "extract", "-F", "babel.cfg",
         "--no-location", "-k", "N_", "-k", "VerificationFailed", "-k", "ChallengeGone",
         "-k", "ReplayDetected", "-k", "NeedsFreshProof", "-o", str(pot), "."],
        cwd=ROOT, check=True, capture_output=True)
    wanted = {m.id for m in read_po(pot.open("rb")) if m.id}
    german = {m.id: m.string for m in read_po(GERMAN.open("rb")) if m.id}
    missing = sorted(str(i) for i in wanted if not german.get(i))
    assert missing == [], "untranslated (run scripts/i18n, then translate):\n" + "\n".join(missing)
    compiled = translations("de")
    for msgid, text in german.items():
        if isinstance(msgid, str):
            assert compiled.gettext(msgid) == text, f"messages.mo is stale for {msgid!r}"


def test_every_script_text_is_in_the_catalog() -> None:
    script = (ROOT / "src/stepguard/web/static/stepguard.js").read_text()
    used = set(re.findall(r'\bt\("((?:[^"\\]|\\.)*)"\)', script))
    assert used == set(JS_TEXTS)
    assert texts("en") == {}
    assert texts("de")["Checking…"] == "Wird geprüft …"


def test_pages_and_texts_in_german() -> None:
    html = Renderer().render("login.html", language="de", csrf_token="t", action_url="/login")
    assert '<html lang="de">' in html and "Benutzername" in html and "Anmelden" in html
    assert duration_text(61, translations("de").ngettext) == "2 Minuten"
    assert duration_text(1, translations("de").ngettext) == "1 Sekunde"
    assert throttle_text(Throttled(retry_after=1.0), "de") == (
        "Zu viele Versuche. Versuchen Sie es in 1 Sekunde erneut.")
    assert throttle_text(Throttled(retry_after=1.0)) == "Too many attempts. Try again in 1 second."
