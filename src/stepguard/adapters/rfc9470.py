"""`WWW-Authenticate` challenges, rendered in one place for every door (RFC 6750, RFC 9470).

- `step_up_challenge`: `Bearer error="insufficient_user_authentication", error_description=…,
  acr_values="…", max_age=N` — the step-up answer of forward-auth, the reverse proxy, bearer
  tokens and the ASGI middleware (RFC 9470 §3);
- `token_challenge`: `Bearer error="invalid_token", error_description=…` (RFC 6750 §3.1).

Texts from reasons go in a quoted-string: only printable ASCII, without `"` and `\\`, at most
300 characters, so no reason can break the header or add a parameter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.responses import Response

from stepguard.core.decision import Decision
from stepguard.core.durations import format_duration
from stepguard.core.policy import Policy

DEFAULT_DESCRIPTION = "A stronger authentication is required."
STEP_UP_ERROR = "insufficient_user_authentication"


def quoted(text: str) -> str:
    """`text` safe inside a header quoted-string."""
    return "".join(ch for ch in text if 32 <= ord(ch) < 127 and ch not in '"\\')[:300]


def describe(reasons: Sequence[str]) -> str:
    return quoted(" ".join(reasons) or DEFAULT_DESCRIPTION)


def step_up_challenge(reasons: Sequence[str], *, acr_values: str | None = None,
                      max_age: float | None = None, challenge_url: str | None = None) -> str:
    """The RFC 9470 challenge: what level (acr) and how fresh (max_age seconds) is needed.

    `challenge_url` adds the extension parameter `stepguard_challenge` (where the user
    completes it): nginx `auth_request` passes only this header of a 401 on, not its body, and
    the inline dialog (stepguard.js) needs the address behind every proxy."""
    parts = [f'Bearer error="{STEP_UP_ERROR}"', f'error_description="{describe(reasons)}"']
    if acr_values:
        parts.append(f'acr_values="{quoted(acr_values)}"')
    if max_age is not None:
        parts.append(f"max_age={int(max_age)}")
    if challenge_url:
        parts.append(f'stepguard_challenge="{quoted(challenge_url)}"')
    return ", ".join(parts)


def token_challenge(code: str, description: str) -> str:
    """A refused token (RFC 6750): `invalid_token`, or `invalid_request` for a bad header."""
    return f'Bearer error="{quoted(code)}", error_description="{quoted(description)}"'


def step_up_response(decision: Decision, location: str, policy: Policy, *,
                     with_location: bool = True, portal_challenge: bool = True) -> Response:
    """The `401` step-up answer of forward-auth, the reverse proxy and bearer tokens: the
    challenge header and a JSON body naming the reasons, the level, `max_age` and where the
    user completes it (`Location` too unless `with_location` is off; the header's
    `stepguard_challenge` too unless `portal_challenge` is off: a bearer token's "location" is
    its issuer, not a Stepguard step-up page)."""
    requirement = decision.requirement
    acr = policy.levels[requirement.level].acr if requirement is not None else None
    header = step_up_challenge(decision.reasons, acr_values=acr,
                               max_age=requirement.max_age if requirement else None,
                               challenge_url=location if portal_challenge else None)
    body = {"error": STEP_UP_ERROR, "reasons": list(decision.reasons),
            "challenge_url": location,
            "level": requirement.level.label if requirement else "aal1",
            "max_age": format_duration(requirement.max_age)
            if requirement and requirement.max_age is not None else None}
    headers = {"WWW-Authenticate": header, **({"Location": location} if with_location else {})}
    return Response(json.dumps(body), 401, media_type="application/json", headers=headers)
