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
from stepguard.web.render import duration_text

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


def throttle_text(exc: Throttled) -> str:
    if exc.locked:
        return "This account is locked after too many failed attempts. Contact your administrator."
    return f"Too many attempts. Try again in {duration_text(max(1.0, exc.retry_after))}."


def error_text(code: str | None) -> str | None:
    return {"expired": "That took too long; try again."}.get(code or "")


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


_METHODS = {"password": "your password", "totp": "your authenticator app",
            "webauthn": "a passkey", "recovery": "a recovery code",
            "push": "an approval on another device", "api_key": "an API key"}
_ADMIN = {"user_added": "Account created", "user_disabled": "Account disabled by an administrator",
          "password_set": "Password changed", "unlocked": "Account unlocked by an administrator",
          "factors_reset": "Sign-in methods reset by an administrator"}
_ENROLMENT = {"enrolled": "{method} added", "removed": "A sign-in method was removed",
              "regenerated": "New recovery codes made"}


def security_event(entry: AuditEntry) -> str | None:
    """An audit entry as the account holder reads it; None for what is not worth showing."""
    method = _METHODS.get(entry.factor, "a sign-in method")
    kind, outcome = entry.kind, entry.outcome
    if kind == "session":
        return {"signed_in": "Signed in", "signed_out": "Signed out",
                "revoked": "A session was ended"}.get(outcome)
    if kind == "verification":
        if outcome == "passed":
            return f"Confirmed it was you with {method}"
        return f"Failed attempt with {method}" if outcome.startswith("failed") else None
    if kind == "enrolment":
        text = _ENROLMENT.get(outcome)
        return text.format(method=method[0].upper() + method[1:]) if text else None
    if kind == "challenge" and outcome == "started":
        return "Asked to confirm it was you"
    if kind == "decision" and outcome == "deny":
        return "A request was blocked"
    if kind == "admin":
        return _ADMIN.get(outcome)
    return None
