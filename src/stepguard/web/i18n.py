"""Languages of the portal: gettext catalogs (Babel) for English and German, and the choice
of language for a request — the `lang` switch (kept in a cookie), else `Accept-Language`.

Catalogs live in `web/locale/<lang>/LC_MESSAGES/messages.po` (compiled to `.mo` beside them;
`scripts/i18n` extracts, updates and compiles; a test checks the German catalog is complete and
compiled). English is the source language: its catalog is empty and texts pass through.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = {"en": "English", "de": "Deutsch"}
DEFAULT = "en"
LANGUAGE_COOKIE = "stepguard_lang"


@lru_cache(maxsize=len(LANGUAGES))
def translations(language: str) -> NullTranslations:
    """The compiled catalog of `language` (the identity for English or a missing catalog)."""
    if language == DEFAULT:
        return NullTranslations()
    return Translations.load(str(LOCALE_DIR), [language], domain="messages")


def gettext(language: str, message: str) -> str:
    return str(translations(language).gettext(message))


def choose(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The page's language: an explicit switch, the remembered choice, the browser's wish."""
    for asked in (query, cookie):
        if asked in LANGUAGES:
            return str(asked)
    return best_match(accept_language or "")


def best_match(header: str) -> str:
    """The first supported language of an `Accept-Language` header by its q-values."""
    wishes: list[tuple[float, int, str]] = []
    for index, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-", 1)[0]
        if primary in LANGUAGES and quality > 0:
            wishes.append((-quality, index, primary))
    return min(wishes)[2] if wishes else DEFAULT


def translated(language: str, context: Mapping[str, object],
               keys: tuple[str, ...]) -> dict[str, object]:
    """`context` with the texts under `keys` (messages made in Python) translated."""
    return {key: gettext(language, value) if key in keys and isinstance(value, str) else value
            for key, value in context.items()}
