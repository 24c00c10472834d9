"""Bearer tokens for OAuth resource servers: JWT access tokens held to the policy (RFC 9470).

`BearerValidator.validate(token)` checks a JWT access token from the one configured issuer:
the signature with an allow-listed asymmetric algorithm and a key of the matching type from the
issuer's JWKS (`none`, HS* and algorithm/key mismatches are refused), `iss`, `aud`, `exp`,
`nbf`, `iat` (with leeway, on Stepguard's clock). It turns `sub`, `acr`, `amr` and `auth_time`
into the core's `SessionState` with one authentication event:

- its level comes from `acr` through the configured acr → level map (default: the policy's
  `levels` acr URIs); a missing or unknown `acr` is aal1 at most (ASVS V6.8.4: assume the
  weakest);
- its time is `auth_time`. A token without `auth_time` counts as stale (ASVS V6.8.4): its event
  is dated to the very start of its level's session lifetime, so it can still pass rules without
  `max_age`, but every `max_age` fails and the client must re-authenticate with `max_age`.

`decide_bearer(guard, context, authorization)` is the one call adapters make: it validates the
`Authorization` header, then runs the one decision flow (`Guard.judge_token`: the core decides
with the policy as usual, a single-use token grant is spent in the grant store, the decision is
audited) and returns a `BearerCheck`; `bearer_response(check, runtime)` renders a refusal:
`401 invalid_token`, `401` with `WWW-Authenticate: Bearer
error="insufficient_user_authentication", acr_values=…, max_age=N` (RFC 9470), or `403`.

A bearer token has no Stepguard session, so rules that need a grant (a `scope`, `single_use`,
`max_age: 0s`) are met by the token's own authentication event when it reaches the level, the
methods and the freshness (`max_age: 0s` = within `bearer.fresh_window`); a `single_use` rule
spends that authentication event once (atomically, in the grant store). Rules with `bind` are
refused (403): the issuer never showed the user the bound values, so a token cannot approve them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import jwt
from starlette.responses import Response

from stepguard.adapters.rfc9470 import step_up_challenge, step_up_response, token_challenge
from stepguard.config.schema import BearerSection
from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import valid_events
from stepguard.core.decision import Decision, Outcome, Requirement
from stepguard.core.errors import InvalidToken
from stepguard.core.grant import Grant
from stepguard.core.levels import FACTOR_AMR, Level, LevelSettings
from stepguard.core.policy import Policy
from stepguard.core.risk import NO_RISK, RiskAssessment
from stepguard.service.guard import Guard
from stepguard.service.jwks import JwksCache, SigningKey, fits
from stepguard.service.runtime import Runtime

__all__ = [
    "BearerCheck",
    "BearerSettings",
    "BearerToken",
    "BearerValidator",
    "KeySource",
    "bearer_challenge",
    "bearer_credentials",
    "bearer_response",
    "decide_bearer",
    "token_grant",
    "validator_for",
]

MAX_TOKEN_CHARS = 8192
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})  # RFC 9068 §2.1
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# The strongest factor an `amr` list shows (RFC 8176 values, see core.levels.FACTOR_AMR).
_AMR_FACTOR = tuple((amr[0], factor) for factor, amr in FACTOR_AMR.items())
_FACTOR_ORDER = ("webauthn", "totp", "push", "recovery", "password")


class KeySource(Protocol):
    """Where the validator finds the issuer's public keys (`service.jwks.JwksCache`)."""

    def key_for(self, kid: str | None, *, alg: str) -> SigningKey: ...


@dataclass(frozen=True, slots=True)
class BearerSettings:
    """The validator's settings, resolved from the `bearer` config section and the policy."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    leeway: float
    acr_levels: Mapping[str, Level]
    levels: Mapping[Level, LevelSettings]
    groups_claim: str = ""
    fresh_window: float = 60.0

    @classmethod
    def from_config(cls, section: BearerSection, policy: Policy) -> BearerSettings:
        acr = {uri: Level.parse(level) for uri, level in section.acr_levels.items()}
        return cls(issuer=section.issuer, audiences=tuple(section.audience),
                   algorithms=frozenset(section.algorithms), leeway=section.leeway,
                   acr_levels=acr or _policy_acrs(policy), levels=policy.levels,
                   groups_claim=section.groups_claim, fresh_window=section.fresh_window)

    def acr_values(self, level: Level) -> tuple[str, ...]:
        """The acr URIs that reach `level`, the lowest sufficient first (RFC 9470 preference)."""
        ranked = sorted((lvl, uri) for uri, lvl in self.acr_levels.items() if lvl >= level)
        return tuple(uri for _, uri in ranked)


def _policy_acrs(policy: Policy) -> dict[str, Level]:
    return {s.acr: level for level, s in policy.levels.items() if level > Level.AAL0 and s.acr}


@dataclass(frozen=True, slots=True)
class BearerToken:
    """A validated access token: who, how and when they authenticated, as the core sees it."""

    issuer: str
    client_id: str
    token_id: str  # `jti`, "" when absent
    acr: str
    amr: tuple[str, ...]
    auth_time: float | None  # None: the token did not say (counts as stale)
    issued_at: float
    expires_at: float
    state: SessionState  # one event; its level from `acr`, its time from `auth_time`

    @property
    def subject(self) -> Subject:
        return self.state.subject

    @property
    def event(self) -> AuthEvent:
        return self.state.events[0]


class BearerValidator:
    """Validates JWT access tokens of one issuer; `now` is the clock (epoch seconds)."""

    def __init__(self, settings: BearerSettings, jwks: KeySource, *,
                 now: Callable[[], float]) -> None:
        self.settings = settings
        self.jwks = jwks
        self._now = now

    def validate(self, token: str) -> BearerToken:
        """A `BearerToken`, or raise `InvalidToken` (`IssuerUnavailable` if keys can't be had)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("the token is too long")
        header = self._header(token)
        key = self.jwks.key_for(header.get("kid"), alg=header["alg"])
        if not fits(key, header["alg"]):
            raise InvalidToken("the token's algorithm does not fit the issuer's key")
        claims = self._verify(token, key, header["alg"])
        if "cnf" in claims:  # RFC 9449 / 8705: presented as a plain bearer token, it is stolen
            raise InvalidToken("the token is bound to a client key (DPoP or mTLS), "
                               "which this server does not check")
        now = self._now()
        _check_times(claims, now, self.settings.leeway)
        return self._token(token, claims, now)

    def _header(self, token: str) -> dict[str, Any]:
        header = _read_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise InvalidToken("the token's signature algorithm is not allowed")
        if "crit" in header:
            raise InvalidToken("the token needs header extensions this server does not support")
        kid, typ = header.get("kid"), header.get("typ")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token's key id is malformed")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES):
            raise InvalidToken("the token is not an access token")
        return header

    def _verify(self, token: str, key: SigningKey, alg: str) -> dict[str, Any]:
        options: Any = {"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                        "require": ["iss", "aud", "sub", "exp", "iat"]}
        try:
            return jwt.decode(token, key.key, algorithms=[alg], options=options,
                              audience=list(self.settings.audiences), issuer=self.settings.issuer)
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token comes from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no `{exc.claim}` claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("the token is malformed") from None

    def _token(self, token: str, claims: Mapping[str, Any], now: float) -> BearerToken:
        acr = _optional_text(claims, "acr")
        amr = _text_list(claims, "amr")
        level = self.settings.acr_levels.get(acr, Level.AAL1)
        auth_time = _optional_number(claims, "auth_time")
        at = auth_time if auth_time is not None else self._stale_time(level, now)
        event = AuthEvent(factor=_factor(amr), amr=amr, level=level, at=at)
        issued = float(claims["iat"])
        jti = _optional_text(claims, "jti")
        state = SessionState(id=_session_id(claims, auth_time, jti, token),
                             subject=self._subject(claims), created=min(at, issued),
                             last_seen=now, events=(event,))
        client = _optional_text(claims, "client_id") or _optional_text(claims, "azp")
        return BearerToken(issuer=claims["iss"], client_id=client, token_id=jti, acr=acr, amr=amr,
                           auth_time=auth_time, issued_at=issued,
                           expires_at=float(claims["exp"]), state=state)

    def _subject(self, claims: Mapping[str, Any]) -> Subject:
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise InvalidToken("the token's `sub` claim is malformed")
        claim = self.settings.groups_claim
        groups = _text_list(claims, claim) if claim else ()
        return Subject(id=sub, name=_optional_text(claims, "name"),
                       email=_optional_text(claims, "email"), groups=frozenset(groups))

    def _stale_time(self, level: Level, now: float) -> float:
        """No `auth_time`: as old as the level's session lifetime allows (every max_age fails)."""
        setting = self.settings.levels.get(level)
        if setting is None or not math.isfinite(setting.max_session):
            return -math.inf
        return now - setting.max_session + min(1e-3, setting.max_session / 2)


def _read_header(token: str) -> dict[str, Any]:
    """The JOSE header, unverified (PyJWT re-parses and verifies the whole token after)."""
    segments = token.split(".")
    if len(segments) != 3 or _B64URL.fullmatch(segments[0]) is None:
        raise InvalidToken("the token is not a well-formed JWT")
    try:
        header = json.loads(base64.urlsafe_b64decode(segments[0] + "=" * (-len(segments[0]) % 4)))
    except ValueError:
        raise InvalidToken("the token is not a well-formed JWT") from None
    if not isinstance(header, dict):
        raise InvalidToken("the token is not a well-formed JWT")
    return header


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    nbf, auth_time = _optional_number(claims, "nbf"), _optional_number(claims, "auth_time")
    if now > exp + leeway:
        raise InvalidToken("the token has expired")
    if nbf is not None and now + leeway < nbf:
        raise InvalidToken("the token is not valid yet")
    if iat > now + leeway:
        raise InvalidToken("the token was issued in the future")
    if auth_time is not None and auth_time > min(now, iat) + leeway:
        raise InvalidToken("the token's authentication time is in the future")


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = _optional_number(claims, name)
    if value is None:
        raise InvalidToken(f"the token has no `{name}` claim")
    return value


def _optional_number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"the token's `{name}` claim is not a number")
    return float(value)


def _optional_text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        raise InvalidToken(f"the token's `{name}` claim is not a string")
    return value


def _text_list(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidToken(f"the token's `{name}` claim is not a list of strings")
    return tuple(dict.fromkeys(value))


def _factor(amr: Sequence[str]) -> str:
    """The strongest Stepguard factor among the `amr` values ("" when none is known)."""
    found = {factor for value, factor in _AMR_FACTOR if value in amr}
    return next((f for f in _FACTOR_ORDER if f in found), "")


def _session_id(claims: Mapping[str, Any], auth_time: float | None, jti: str, token: str) -> str:
    """A stable id per authentication event (all tokens of one sign-in share it)."""
    if auth_time is not None:
        event = f"t{auth_time!r}"
    else:
        event = f"j{jti}" if jti else "h" + hashlib.sha256(token.encode()).hexdigest()
    material = "\0".join((str(claims["iss"]), str(claims["sub"]), event))
    return "bearer-" + hashlib.sha256(material.encode()).hexdigest()[:48]


# --- deciding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BearerCheck:
    """One decision on a bearer request, with what it was made from (like `service.guard.Check`).

    `error` is set when the token was missing-but-malformed or invalid: then the answer is
    `401 invalid_token` (`400 invalid_request` for a malformed header) whatever the policy says.
    """

    decision: Decision
    context: RequestContext
    token: BearerToken | None
    risk: RiskAssessment = NO_RISK
    error: InvalidToken | None = None
    settings: BearerSettings | None = None  # what the token was validated with

    @property
    def allowed(self) -> bool:
        return self.error is None and self.decision.allowed

    @property
    def subject(self) -> Subject | None:
        return self.token.subject if self.token else None

    @property
    def session(self) -> SessionState | None:
        return self.token.state if self.token else None

    @property
    def status(self) -> int:
        """200 allow, 400 malformed header, 401 invalid token or step-up, 403 deny."""
        if self.error is not None:
            return 400 if self.error.code == "invalid_request" else 401
        return {Outcome.ALLOW: 200, Outcome.DENY: 403}.get(self.decision.outcome, 401)


def bearer_credentials(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header; None when there is no bearer header.

    Raises `InvalidToken(code="invalid_request")` for a Bearer header without a well-formed token.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    if not value or _B64TOKEN.fullmatch(value) is None:
        raise InvalidToken("the Authorization header does not hold a bearer token",
                           code="invalid_request")
    return value


def decide_bearer(guard: Guard, context: RequestContext, authorization: str | None, *,
                  validator: BearerValidator | None = None,
                  risk: RiskAssessment = NO_RISK) -> BearerCheck:
    """Validate the `Authorization` header, then the one decision flow (`Guard.judge_token`:
    decide, a token grant, consume, audit): the adapters' one call.

    Raises `IssuerUnavailable` (a `StoreUnavailable`) when the issuer's keys cannot be fetched:
    answer 503, never allow. Blocking (may fetch the JWKS): call it from a worker thread.
    """
    runtime = guard.rt
    try:
        raw = bearer_credentials(authorization)
    except InvalidToken as exc:
        return _refused(guard, context, exc)
    if raw is None:
        check = guard.judge_token(context, None, grant_for=_no_grant, risk=risk,
                                  detail={"via": "bearer"})
        return BearerCheck(check.decision, context, None, risk,
                           settings=_settings(runtime, validator))
    validator = validator or validator_for(runtime)
    if validator is None:
        return _refused(guard, context, InvalidToken("bearer tokens are not accepted here"))
    try:
        token = validator.validate(raw)
    except InvalidToken as exc:
        return _refused(guard, context, exc)
    settings = validator.settings

    def grant_for(decision: Decision) -> Grant | None:
        return token_grant(token, decision, settings=settings, now=runtime.now())

    check = guard.judge_token(context, token.state, grant_for=grant_for, risk=risk,
                              detail=_token_detail(token))
    return BearerCheck(check.decision, context, token, risk, settings=settings)


def _no_grant(_: Decision) -> None:
    return None


def token_grant(token: BearerToken, decision: Decision, *, settings: BearerSettings,
                now: float) -> Grant | None:
    """The grant a token's own authentication makes for a step-up decision, if it reaches the
    required level, methods and freshness (`max_age: 0s` = within `fresh_window`)."""
    requirement = decision.requirement
    event = token.event
    if requirement is None or event.level < requirement.level:
        return None
    if requirement.methods and event.factor not in requirement.methods:
        return None
    if event not in valid_events(settings.levels, token.state, now):
        return None
    limit = settings.fresh_window if requirement.max_age == 0 else requirement.max_age
    if limit is not None and now - event.at > limit:
        return None
    lifetime = settings.levels[event.level].max_session if event.level in settings.levels else 0
    # Kept (for single use) while this authentication could still satisfy the requirement.
    until = max(event.at + (limit if limit is not None else lifetime), token.expires_at)
    key = "\0".join((token.state.id, decision.scope, decision.binding))
    return Grant(id="bearer-" + hashlib.sha256(key.encode()).hexdigest()[:48],
                 subject_id=token.subject.id, session_id=token.state.id, scope=decision.scope,
                 level=event.level, amr=event.amr, granted_at=event.at,
                 expires_at=until + settings.leeway + 1.0, single_use=requirement.single_use,
                 binding=decision.binding, factor=event.factor)


def _refused(guard: Guard, context: RequestContext, error: InvalidToken) -> BearerCheck:
    decision = Decision(outcome=Outcome.STEP_UP, rule="bearer-token", reasons=(error.reason,),
                        login=True)
    guard.refused(context, decision, outcome=error.code,
                  detail={"via": "bearer", "error": error.code})
    return BearerCheck(decision, context, None, NO_RISK, error)


def _token_detail(token: BearerToken) -> dict[str, object]:
    return {"via": "bearer", "issuer": token.issuer, "client_id": token.client_id,
            "jti": token.token_id, "acr": token.acr, "amr": list(token.amr),
            "auth_time": token.auth_time}


# --- answering ----------------------------------------------------------------------------------


def bearer_challenge(check: BearerCheck, runtime: Runtime) -> str | None:
    """The `WWW-Authenticate` value for a refused bearer request (None when allowed or denied)."""
    if check.error is not None:
        return token_challenge(check.error.code, check.error.reason)
    decision = check.decision
    if decision.outcome is not Outcome.STEP_UP:
        return None
    if check.token is None or decision.requirement is None:
        return "Bearer"  # no token sent: RFC 6750 §3.1, no error code
    settings = check.settings or _settings(runtime)
    requirement = _challenge_requirement(check, settings, runtime.now())
    return step_up_challenge(decision.reasons,
                             acr_values=" ".join(settings.acr_values(requirement.level)),
                             max_age=requirement.max_age)


def bearer_response(check: BearerCheck, runtime: Runtime) -> Response | None:
    """The refusal to send (None when allowed): 400/401 invalid token, 401 step-up, 403 deny."""
    if check.allowed:
        return None
    if check.error is not None:
        body = {"error": check.error.code, "error_description": check.error.reason}
        return Response(json.dumps(body), check.status, media_type="application/json",
                        headers={"WWW-Authenticate": bearer_challenge(check, runtime) or "Bearer"})
    decision = check.decision
    if decision.outcome is Outcome.DENY:
        return Response(json.dumps({"error": "denied", "reasons": list(decision.reasons)}), 403,
                        media_type="application/json")
    settings = check.settings or _settings(runtime)
    if check.token is not None and decision.requirement is not None:
        requirement = _challenge_requirement(check, settings, runtime.now())
        decision = replace(decision, requirement=requirement)
    # body: reasons, level, max_age; no Location: an API client goes back to the issuer, named
    # in the body
    response = step_up_response(decision, settings.issuer, runtime.policy, with_location=False,
                                portal_challenge=False)
    response.headers["WWW-Authenticate"] = bearer_challenge(check, runtime) or "Bearer"
    return response


def _challenge_requirement(check: BearerCheck, settings: BearerSettings,
                           now: float) -> Requirement:
    """The requirement to announce: with `max_age` set to the level's lifetime when the token's
    authentication is too old to count at all, since `acr_values` alone lets the issuer reuse
    that old sign-in silently."""
    requirement = check.decision.requirement
    assert requirement is not None and check.token is not None
    if requirement.max_age is not None or check.token.event in valid_events(
            settings.levels, check.token.state, now):
        return requirement
    setting = settings.levels.get(requirement.level)
    return replace(requirement, max_age=setting.max_session if setting else 0.0)


# --- one validator per runtime ------------------------------------------------------------------

_validators: dict[int, BearerValidator] = {}


def validator_for(runtime: Runtime) -> BearerValidator | None:
    """The runtime's validator (built on first use from `config.bearer`); None when no issuer is
    configured. Its JWKS cache is shared by every request of that runtime."""
    found = _validators.get(id(runtime))
    if found is not None:
        return found
    section = runtime.config.bearer
    if not section.issuer:
        return None
    jwks = JwksCache(issuer=section.issuer, jwks_uri=section.jwks_uri, ttl=section.jwks_ttl,
                     refetch_interval=section.jwks_refetch_interval,
                     timeout=section.http_timeout, clock=runtime.now)
    validator = BearerValidator(BearerSettings.from_config(section, runtime.policy), jwks,
                                now=runtime.now)
    found = _validators.setdefault(id(runtime), validator)
    if found is validator:
        weakref.finalize(runtime, _forget, id(runtime), jwks)
    else:
        jwks.close()
    return found


def _forget(key: int, jwks: JwksCache) -> None:
    _validators.pop(key, None)
    jwks.close()


def _settings(runtime: Runtime, validator: BearerValidator | None = None) -> BearerSettings:
    validator = validator or validator_for(runtime)
    if validator is not None:
        return validator.settings
    return BearerSettings.from_config(runtime.config.bearer, runtime.policy)
