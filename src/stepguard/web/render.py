"""Jinja2 rendering for the portal pages: autoescaped, strict about missing context.

Every page receives `title`, `csrf_token` (required: pass "" only where no form is possible),
`user` (None or {name, email}), `flash`, `error` and `static_prefix`; the page-specific context is
listed in each template's header comment. A missing variable raises (`StrictUndefined`) instead
of rendering an empty string. Only `qr_svg` in `enrol_totp.html` is marked safe: it must be
segno output (`qr.svg_inline(...)`), never text from a request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Undefined

from stepguard.web.i18n import DEFAULT, LANGUAGES, translations

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"



def N_(message: str) -> str:
    """Marks a text for the catalog (`scripts/i18n` extracts it); translated where shown."""
    return message


LEVEL_WORDS = {
    "aal1": N_("your password"),
    "aal2": N_("a second proof, such as a passkey or a code from your authenticator app"),
    "aal3": N_("a passkey or security key that checks your PIN or fingerprint"),
}
METHOD_NAMES = {
    "password": N_("Password"),
    "totp": N_("Authenticator app"),
    "webauthn": N_("Passkey or security key"),
    "recovery": N_("Recovery code"),
    "push": N_("Approval on another device"),
}
_PAGE_DEFAULTS: dict[str, Any] = {"user": None, "flash": None, "error": None,
                                  "language": DEFAULT, "language_links": [], "js_texts": {},
                                  "embedded": False, "parent_origin": None,
                                  "inline_challenge": ""}


class Renderer:
    """Renders the portal's templates; one instance per application."""

    def __init__(
        self,
        templates_dir: str | Path = TEMPLATES_DIR,
        *,
        title: str = "Stepguard",
        static_prefix: str = "/static",
    ) -> None:
        self.title = title
        self.static_prefix = static_prefix
        self.templates_dir = templates_dir
        self.environments = {language: self._environment(language) for language in LANGUAGES}
        self.environment = self.environments[DEFAULT]

    def _environment(self, language: str) -> Environment:
        """One environment per language (gettext installed once, never swapped per request)."""
        environment = Environment(
            loader=FileSystemLoader(str(self.templates_dir)),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.i18n"],
            auto_reload=False,  # packaged templates: no stat() of the file per render
        )
        catalog = translations(language)
        environment.install_gettext_translations(catalog, newstyle=True)  # type: ignore[attr-defined]
        say = catalog.gettext
        environment.filters.update(
            duration=lambda seconds: duration_text(seconds, catalog.ngettext),
            group4=group_by_four,
            level_words=lambda label: say(level_words(label)),
            method_name=lambda method: say(method_name(method)),
            as_text=as_text,
        )
        environment.globals["require"] = require
        return environment

    def render(self, name: str, **context: Any) -> str:
        """Render template `name` in `context["language"]`; `context` overrides the defaults."""
        page = {
            "title": self.title,
            "static_prefix": self.static_prefix,
            **_PAGE_DEFAULTS,
            **context,
        }
        environment = self.environments.get(str(page["language"]), self.environment)
        return environment.get_template(name).render(page)


def require(*values: object) -> str:
    """Fail now for any missing value, even one the page would only use in some branch.

    Templates call `{{ require(url_a, url_b) }}` for context that is needed only sometimes (a URL
    used when the list it serves is not empty), so a wiring mistake shows on every render.
    """
    for value in values:
        if isinstance(value, Undefined):
            str(value)  # StrictUndefined raises UndefinedError naming the variable
    return ""


def _english(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def duration_text(seconds: float, ngettext: Callable[[str, str, int], str] = _english) -> str:
    """Plain words for a remaining time: "45 seconds", "5 minutes", "1 hour 30 minutes"
    (in the language of `ngettext`)."""
    total = max(0, math.ceil(seconds))
    if total < 60:
        return ngettext("%(num)d second", "%(num)d seconds", total) % {"num": total}
    minutes = math.ceil(total / 60)
    if minutes < 60:
        return ngettext("%(num)d minute", "%(num)d minutes", minutes) % {"num": minutes}
    hours, rest = divmod(minutes, 60)
    text = ngettext("%(num)d hour", "%(num)d hours", hours) % {"num": hours}
    if rest:
        text += " " + ngettext("%(num)d minute", "%(num)d minutes", rest) % {"num": rest}
    return text


def group_by_four(secret: str) -> str:
    """A TOTP secret in groups of four for manual entry: "JBSW Y3DP EHPK 3PXP"."""
    compact = "".join(secret.split())
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def level_words(label: str) -> str:
    """What an assurance level asks of the user, in plain words."""
    return LEVEL_WORDS.get(label, label)


def method_name(method: str) -> str:
    """A factor or step-up method's display name."""
    return METHOD_NAMES.get(method, method)


def as_text(value: str | Iterable[Any] | None, separator: str = "; ") -> str:
    """A string as is, a list joined (groups, reasons), None as ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return separator.join(str(item) for item in value)

