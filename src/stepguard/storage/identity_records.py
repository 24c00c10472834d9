"""What is stored about identity providers: linked identities, sign-ins in flight, and which
Stepguard session came from which provider session (for back-channel logout).

Records are frozen values with keyword-only constructors; times are epoch seconds from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FlowPurpose = Literal["login", "step_up"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityRecord:
    """A Stepguard user's identity at one provider: `issuer` + `subject` (the `sub` claim) is the
    only key ever used to find the user; the email is kept for display, never for matching."""

    issuer: str
    subject: str
    user_id: str
    provider: str
    email: str = ""
    created: float
    last_login: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OidcFlow:
    """One authorization request in flight, found by the SHA-256 of its `state` and taken once.

    `browser_hash` is the SHA-256 of the random value in the browser's flow cookie: the callback
    must come from the browser that started the flow (login CSRF). `code_verifier` (PKCE) and
    `nonce` never leave the server except in the requests they are made for."""

    state_hash: str
    provider: str
    purpose: FlowPurpose
    browser_hash: str
    nonce: str
    code_verifier: str
    return_url: str = ""
    challenge_id: str = ""
    session_id: str = ""
    max_age: float | None = None
    acr_values: str = ""
    prompt: str = ""
    created: float
    expires: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLink:
    """A Stepguard session opened by a provider sign-in: which provider session it belongs to."""

    session_id: str
    provider: str
    issuer: str
    subject: str
    sid: str = ""
    id_token: str = ""  # the id_token_hint for RP-initiated logout
