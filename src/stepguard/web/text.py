"""Plain-words helpers shared by the portal's pages: times, browsers, throttle messages, the
fields of a held form, base64url from the browser."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from babel.numbers import format_currency

from stepguard.audit.ledger import AuditEntry
from stepguard.core.display import AttributeDisplay
from stepguard.core.errors import Throttled
from stepguard.web.i18n import DEFAULT, translations
from stepguard.web.render import N_, duration_text

_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"),
             ("Chromium/", "Chromium"), ("Chrome/", "Chrome"), ("Version/", "Safari"))
_SYSTEMS = (("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Windows", "Windows"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def describe_browser(user_agent: str) -> str:
    """A User-Agent header as "Firefox 128 on Linux"; the raw text (cut) when unknown."""
    name = next(((label, key) for key, label in _BROWSERS if key in user_agent), None)
    system = next((label for key, label in _SYSTEMS if key in user_agent), "")
    if name is None:
        return user_agent[:80]
    label, key = name
    version = user_agent.split(key, 1)[1].split(".", 1)[0].split(" ", 1)[0]
    text = f"{label} {version}" if version.isdigit() else label
    return f"{text} on {system}" if system else text


def unb64url(text: str) -> bytes:
    """Base64url without padding -> bytes; ValueError when it is not that."""
    if len(text) > 4096 or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def when(at: float | None) -> str:
    """A stored time as "2026-01-31 09:05 UTC" ("" when there is none)."""
    if not at:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def reasons_in(language: str, reasons: Iterable[str],
               reason_texts: Iterable[tuple[str, str]] = ()) -> list[str]:
    """A challenge's reasons in `language`: the rule's own reason (the first) as the policy
    gives it in that language (exactly, else by its primary subtag: `de` for `de-AT`), the
    others — and a reason the policy gives in one language only — through the catalog."""
    say = translations(language)
    texts = dict(reason_texts)
    own = texts.get(language) or next(
        (t for code, t in texts.items() if code.split("-", 1)[0] == language), None)
    return [own if own is not None and i == 0 else str(say.gettext(r))
            for i, r in enumerate(reasons)]


def throttle_text(exc: Throttled, language: str = DEFAULT) -> str:
    """Why an attempt was refused, in `language`."""
    say = translations(language)
    if exc.locked:
        return str(say.gettext(N_("This account is locked after too many failed attempts. "
                                  "Contact your administrator.")))
    wait = duration_text(max(1.0, exc.retry_after), say.ngettext)
    return str(say.gettext(N_("Too many attempts. Try again in %(wait)s."))) % {"wait": wait}


def error_text(code: str | None) -> str | None:
    return {"expired": N_("That took too long; try again.")}.get(code or "")


def form_fields(body: bytes) -> list[tuple[str, str]]:
    """A held urlencoded body as (name, value) pairs for the confirmation page, secrets masked."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return []
    hidden = ("password", "csrf", "token", "secret", "code")
    return [(k, "••••" if any(h in k.lower() for h in hidden) else v[:200]) for k, v in pairs][:50]


def bound_view(values: Iterable[tuple[str, str]], display: Mapping[str, AttributeDisplay],
               language: str = "en") -> list[tuple[str, str]]:
    """Bound values as people read them: the policy's label, an amount with its currency."""
    shown = []
    for name, value in values:
        how = display.get(name, AttributeDisplay())
        shown.append((how.label(name, language), money(value, how.currency, language)))
    return shown


def money(value: str, currency: str, language: str = "en") -> str:
    """`value` with its currency in the reader's notation ("€2,500.00"); as it is otherwise."""
    if not currency:
        return value
    try:
        amount = float(value)
    except ValueError:
        return value
    if amount != amount or amount in (float("inf"), float("-inf")):
        return value
    return str(format_currency(amount, currency, locale=language))


_SESSION = {"signed_in": N_("Signed in"), "signed_out": N_("Signed out"),
            "revoked": N_("A session was ended")}
_PASSED = {"password": N_("Confirmed it was you with your password"),
           "totp": N_("Confirmed it was you with your authenticator app"),
           "webauthn": N_("Confirmed it was you with a passkey"),
           "recovery": N_("Confirmed it was you with a recovery code"),
           "push": N_("Confirmed it was you with an approval on another device")}
_FAILED = {"password": N_("Failed attempt with your password"),
           "totp": N_("Failed attempt with your authenticator app"),
           "webauthn": N_("Failed attempt with a passkey"),
           "recovery": N_("Failed attempt with a recovery code"),
           "push": N_("Failed attempt with an approval on another device")}
_ENROLLED = {"totp": N_("Authenticator app added"), "webauthn": N_("Passkey added"),
             "push": N_("Approving device added")}
_ENROLMENT = {"removed": N_("A sign-in method was removed"),
              "regenerated": N_("New recovery codes made")}
_ADMIN = {"user_added": N_("Account created"),
          "user_disabled": N_("Account disabled by an administrator"),
          "password_set": N_("Password changed"),
          "unlocked": N_("Account unlocked by an administrator"),
          "factors_reset": N_("Sign-in methods reset by an administrator")}
_OTHER = {("challenge", "started"): N_("Asked to confirm it was you"),
          ("decision", "deny"): N_("A request was blocked")}


def security_event(entry: AuditEntry) -> str | None:
    """An audit entry as the account holder reads it (the catalog's English, to translate);
    None for what is not worth showing."""
    kind, outcome, factor = entry.kind, entry.outcome, entry.factor
    if kind == "session":
        return _SESSION.get(outcome)
    if kind == "verification":
        table = _PASSED if outcome == "passed" else _FAILED if outcome.startswith("failed") else {}
        return table.get(factor)
    if kind == "enrolment":
        return _ENROLLED.get(factor) if outcome == "enrolled" else _ENROLMENT.get(outcome)
    if kind == "admin":
        return _ADMIN.get(outcome)
    return _OTHER.get((kind, outcome))
