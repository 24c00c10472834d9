"""Which audit events are security notices, and what a notice says.

A `Notice` is built from an already checked (redacted) audit event, so it can hold nothing the
ledger would not: no secret, code or token. Its text names what happened, when, where (place,
address as the ledger keeps it, host) and how to react.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stepguard.audit.ledger import AuditEvent

_ENROLMENT = {"enrolled": "factor_added", "removed": "factor_removed",
              "regenerated": "recovery_codes_regenerated"}
_FACTOR_NAMES = {"totp": "an authenticator app", "webauthn": "a passkey",
                 "recovery": "recovery codes", "push": "a push device", "factor": "a factor"}
_TITLES = {
    "sign_in_new_device": "New sign-in from a device not seen before",
    "sign_in_new_location": "New sign-in from a country not seen before",
    "factor_added": "A sign-in method was added to your account",
    "factor_removed": "A sign-in method was removed from your account",
    "recovery_codes_regenerated": "Your recovery codes were regenerated",
    "lockout": "Sign-in locked after too many failed attempts",
    "request_denied": "A request was blocked",
    "step_up_declined": "A confirmation request was declined",
    "admin_action": "An administrator changed something",
}
_REACT = {
    "sign_in_new_device": "If this was you, nothing needs doing. If not, change your password, "
                          "end your other sessions on your account page and tell your "
                          "administrator.",
    "factor_added": "If you did not add it, remove it on your account page, change your "
                    "password and tell your administrator at once.",
    "factor_removed": "If you did not remove it, change your password and tell your "
                      "administrator at once.",
    "recovery_codes_regenerated": "Your old codes no longer work. If you did not do this, "
                                  "change your password and tell your administrator.",
    "lockout": "Further attempts are refused. If these attempts were not yours, someone may be "
               "guessing your password or codes: tell your administrator, who can unlock the "
               "account after checking.",
    "request_denied": "If the request was yours and should have worked, contact your "
                      "administrator with the time shown.",
    "step_up_declined": "If you declined an approval you did not ask for, someone may have "
                        "your password: change it and tell your administrator.",
    "admin_action": "Check that the change was expected (the audit log has the details).",
}
_REACT["sign_in_new_location"] = _REACT["sign_in_new_device"]


@dataclass(frozen=True, slots=True)
class Notice:
    """One security notice: its kind, the user concerned, and what to tell them."""

    kind: str
    at: float
    subject: str
    title: str
    facts: tuple[tuple[str, str], ...]
    react: str
    to_user: bool
    data: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        lines = [self.title, ""]
        lines += [f"{name}: {value}" for name, value in self.facts]
        return "\n".join([*lines, "", "What to do: " + self.react, ""])

    def as_json(self) -> dict[str, Any]:
        return {"type": self.kind, "occurred_at": iso(self.at), "subject": self.subject,
                "title": self.title, "facts": dict(self.facts), "what_to_do": self.react,
                "data": dict(self.data)}


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def notice_kind(event: AuditEvent) -> str:
    """The notice kind of an audit event, or "" when it is not a security notice."""
    kind, outcome = event.kind, event.outcome
    if kind == "session" and outcome == "signed_in":
        if event.detail.get("new_device"):
            return "sign_in_new_device"
        return "sign_in_new_location" if event.detail.get("new_location") else ""
    if kind == "enrolment":
        return _ENROLMENT.get(outcome, "")
    if kind == "verification":
        return {"locked": "lockout", "refused": "step_up_declined"}.get(outcome, "")
    if kind == "decision" and event.decision == "deny":
        return "request_denied"
    if kind == "admin":
        return "admin_action"
    return ""


def notice_for(event: AuditEvent, kind: str) -> Notice:
    """The notice for a checked audit event whose `notice_kind` is `kind`."""
    facts = [("When", datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    place = str(event.detail.get("place", ""))
    if place:
        facts.append(("Where", place))
    request = event.request
    if request.get("client_ip"):
        facts.append(("Address", str(request["client_ip"])))
    if request.get("host") or request.get("path"):
        facts.append(("Request", f"{request.get('method', '')} {request.get('host', '')}"
                                 f"{request.get('path', '')}".strip()))
    if event.factor:
        facts.append(("Method", _FACTOR_NAMES.get(event.factor, event.factor)))
    if event.rule:
        facts.append(("Rule", event.rule))
    if kind == "admin_action":
        facts.append(("Action", event.outcome.replace("_", " ")))
        if event.detail.get("by"):
            facts.append(("By", str(event.detail["by"])))
    if event.reasons:
        facts.append(("Reason", " ".join(event.reasons)))
    data = {"kind": event.kind, "outcome": event.outcome, "factor": event.factor,
            "rule": event.rule, "request": dict(request), "session": event.session}
    return Notice(kind=kind, at=event.at, subject=event.subject, title=_TITLES[kind],
                  facts=tuple(facts), react=_REACT[kind],
                  to_user=bool(event.subject), data=data)
