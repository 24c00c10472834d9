"""Identity providers as sources of the sign-in: just-in-time users, the baseline level from the
provider's proof, step-up at the provider, back-channel and RP-initiated logout.

Every flow (a sign-in or a step-up) is one authorization request whose `state` finds a stored
flow, taken exactly once, that holds the `nonce`, the PKCE verifier, the provider it was sent to
and a hash of a random value in the starting browser's cookie. A callback is accepted only on
its own provider's callback path, from that browser, with that provider's `iss` (RFC 9207).

A user is found by issuer + `sub` only; an email or a username never links a provider identity
to an existing account (a new identity whose username is taken is refused, not merged).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stepguard.audit.ledger import request_summary
from stepguard.config.schema import OidcProvider
from stepguard.core.context import AuthEvent, RequestContext
from stepguard.core.decision import Requirement
from stepguard.core.errors import ConfigError, Conflict, Problem
from stepguard.core.levels import Level
from stepguard.service.accounts import Accounts, SignedIn
from stepguard.service.oidc import (
    AuthorizationRequest,
    IdToken,
    OidcClient,
    OidcRefused,
    ProviderUnreachable,
    state_hash,
)
from stepguard.service.runtime import Runtime, new_id
from stepguard.service.stepup import ChallengeGone, Passed, StepUp
from stepguard.storage.identity_records import IdentityRecord, OidcFlow, SessionLink
from stepguard.storage.interfaces import Store
from stepguard.storage.records import SessionRecord, UserRecord

MAX_GROUPS = 100
# Strongest first: the factor a provider sign-in counts as, from its amr values.
_FACTOR_ORDER = ("webauthn", "push", "totp", "recovery", "password")


@dataclass(frozen=True, slots=True)
class Started:
    """Where to send the browser, and the flow cookie value it must bring back."""

    url: str
    browser: str


@dataclass(frozen=True, slots=True)
class SignedInAt:
    """A finished provider sign-in: the Stepguard session, where to go next."""

    signed: SignedIn
    return_url: str


def proof_of(token: IdToken, settings: OidcProvider, acr_levels: Mapping[str, Level],
             *, now: float) -> AuthEvent:
    """The provider's proof as a Stepguard authentication event (ASVS V6.8.4: assume the
    weakest when something is missing). The level is the highest that `acr` (through
    `acr_levels`), an `amr` value (through `amr_levels`) or an Entra ID auth context in `acrs`
    (through `auth_contexts`) proves; unknown values prove aal1.
    Without `auth_time` the age of the proof is unknown, so it counts as aal1, now."""
    level = acr_levels.get(token.acr, Level.AAL1)
    for value in token.amr:
        if value in settings.amr_levels:
            level = max(level, Level.parse(settings.amr_levels[value]))
    contexts = [settings.auth_contexts[c] for c in token.acrs if c in settings.auth_contexts]
    for context in contexts:
        level = max(level, Level.parse(context.level))
    factors = {settings.amr_factors[v] for v in token.amr if v in settings.amr_factors}
    factors |= {context.factor for context in contexts if context.factor}
    factor = next((f for f in _FACTOR_ORDER if f in factors), "oidc")
    if token.auth_time is None:
        return AuthEvent(factor=factor, amr=token.amr, level=Level.AAL1, at=now)
    return AuthEvent(factor=factor, amr=token.amr, level=level, at=min(token.auth_time, now))


class IdentityProviders:
    """The configured providers (discovered at start) and what Stepguard does with them."""

    def __init__(self, runtime: Runtime, accounts: Accounts, stepup: StepUp,
                 clients: Mapping[str, OidcClient]) -> None:
        self.rt, self.accounts, self.stepup = runtime, accounts, stepup
        self.clients = dict(clients)

    @classmethod
    def start(cls, runtime: Runtime, accounts: Accounts, stepup: StepUp, *,
              discover: Callable[..., OidcClient] = OidcClient.discover) -> IdentityProviders:
        """Discover every configured provider; one `ConfigError` names each that failed."""
        clients, problems = {}, []
        public = runtime.config.server.public_url.rstrip("/")
        for i, settings in enumerate(runtime.config.oidc.providers):
            try:
                clients[settings.name] = discover(
                    settings, redirect_uri=f"{public}/oidc/{settings.name}/callback",
                    clock=runtime.clock)
            except ProviderUnreachable as exc:
                problems.append(Problem("", f"oidc.providers[{i}] ({settings.name})",
                                        f"OpenID discovery failed: {exc}"))
        if problems:
            for client in clients.values():
                client.close()
            raise ConfigError(problems)
        return cls(runtime, accounts, stepup, clients)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def buttons(self) -> list[dict[str, str]]:
        return [{"name": c.name, "label": c.settings.label or f"Sign in with {c.name}",
                 "action": f"/oidc/{c.name}/start"} for c in self.clients.values()]

    # --- starting a flow -----------------------------------------------------------------------

    def begin_login(self, name: str, *, return_url: str, browser: str) -> Started:
        client = self._client(name)
        return self._begin(client, browser, purpose="login", return_url=return_url)

    def begin_step_up(self, challenge_id: str, session: SessionRecord, *,
                      browser: str) -> Started:
        """A new authorization request asking for the challenge's level and freshness."""
        challenge = self.stepup.live(challenge_id, session)
        if "idp" not in self.stepup.methods_for(challenge, session.user_id):
            raise OidcRefused("This request cannot be confirmed at your identity provider.",
                              code="not_allowed")
        _via, name = self.stepup.via(challenge, session.user_id)
        client = self._client(name)
        requirement = challenge.requirement
        fresh = requirement.max_age == 0 or requirement.single_use
        context = auth_context_for(client.settings, requirement)
        return self._begin(client, browser, purpose="step_up", challenge_id=challenge.id,
                           session_id=session.id, max_age=requirement.max_age,
                           prompt="login" if fresh else "", auth_context=context,
                           acr_values="" if context else " ".join(
                               self._acr_values(client, requirement.level)))

    def _begin(self, client: OidcClient, browser: str, *, purpose: str, return_url: str = "",
               challenge_id: str = "", session_id: str = "", max_age: float | None = None,
               prompt: str = "", acr_values: str = "", auth_context: str = "") -> Started:
        browser = browser if _usable_browser(browser) else secrets.token_urlsafe(32)
        request = AuthorizationRequest(
            state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64), max_age=max_age, prompt=prompt,
            acr_values=acr_values, essential_acr=purpose == "step_up", auth_context=auth_context)
        now = self.rt.now()
        self.rt.store.identities.purge(now=now)  # abandoned flows do not pile up
        self.rt.store.identities.add_flow(OidcFlow(
            state_hash=state_hash(request.state), provider=client.name,
            purpose="step_up" if purpose == "step_up" else "login",
            browser_hash=_digest(browser), nonce=request.nonce,
            code_verifier=request.code_verifier, return_url=return_url,
            challenge_id=challenge_id, session_id=session_id, max_age=max_age,
            acr_values=acr_values, prompt=prompt, created=now,
            expires=now + self.rt.config.oidc.flow_ttl))
        return Started(client.authorization_url(request), browser)

    def _acr_values(self, client: OidcClient, level: Level) -> list[str]:
        wanted = client.settings.level_acr.get(level.label)
        if wanted:
            return [wanted]
        levels = self.acr_levels(client.settings)
        return [acr for acr, lvl in sorted(levels.items(), key=lambda kv: kv[1]) if lvl >= level]

    def acr_levels(self, settings: OidcProvider) -> dict[str, Level]:
        if settings.acr_levels:
            return {acr: Level.parse(lvl) for acr, lvl in settings.acr_levels.items()}
        return {s.acr: level for level, s in self.rt.policy.levels.items()}

    # --- the callback --------------------------------------------------------------------------

    def finish(self, name: str, params: Mapping[str, str], *, browser: str,
               context: RequestContext, session: SessionRecord | None) -> SignedInAt | Passed:
        """Check the provider's answer and sign in or pass the step-up; `OidcRefused` else."""
        try:
            client = self._client(name)
            flow = self._flow(client, params, browser)
            token = self._token(client, flow, params)
            if flow.purpose == "step_up":
                return self._step_up(client, flow, token, session, context)
            return SignedInAt(self._sign_in(client, token, context), flow.return_url)
        except OidcRefused as exc:
            self.rt.record(kind="verification", subject=session.user_id if session else "",
                           session_id=session.id if session else "", factor="oidc",
                           outcome=f"failed:{exc.code}"[:64],
                           request=request_summary(context, ip_key=self.rt.ip_key),
                           detail={"provider": name[:32]})
            raise

    def _flow(self, client: OidcClient, params: Mapping[str, str], browser: str) -> OidcFlow:
        state = params.get("state", "")
        flow = (self.rt.store.identities.take_flow(state_hash(state), now=self.rt.now())
                if state else None)
        if flow is None:
            raise OidcRefused("This sign-in expired or was already used. Please start again.",
                              code="state")
        if flow.provider != client.name:
            raise OidcRefused("The sign-in answer came to another provider's address.",
                              code="mix_up")
        if not hmac.compare_digest(_digest(browser), flow.browser_hash):
            raise OidcRefused("This sign-in was started in another browser.", code="browser")
        client.check_response_issuer(params.get("iss"))
        if params.get("error"):
            raise OidcRefused(f"The identity provider refused the sign-in "
                              f"({params['error'][:64]}).", code="provider_error")
        return flow

    def _token(self, client: OidcClient, flow: OidcFlow, params: Mapping[str, str]) -> IdToken:
        code = params.get("code", "")
        if not code or len(code) > 2048:
            raise OidcRefused("The sign-in answer has no code.", code="no_code")
        tokens = client.exchange(code, code_verifier=flow.code_verifier)
        token = client.id_token(str(tokens["id_token"]), nonce=flow.nonce, max_age=flow.max_age,
                                access_token=tokens.get("access_token"))
        if flow.purpose == "login":
            token = client.with_userinfo(token, tokens.get("access_token"))
        return token

    # --- sign-in: just-in-time users ---------------------------------------------------------

    def _sign_in(self, client: OidcClient, token: IdToken, context: RequestContext) -> SignedIn:
        settings = client.settings
        identity = self.rt.store.identities.get(token.issuer, token.subject)
        refusal = _allow_list_refusal(settings, token.claims)
        if refusal:
            if identity is not None:  # no longer allowed: end what the user still has open
                self._end_all(identity.user_id, "not_allowed")
            raise OidcRefused(refusal, code="not_allowed")
        user = self._user(client, token, identity)
        if user.disabled:
            raise OidcRefused("This account is disabled.", code="disabled")
        email = _text(token.claims.get(settings.email_claim), 320)
        self.rt.store.identities.update_profile(
            user.id, display_name=_text(token.claims.get(settings.name_claim), 255),
            email=email, groups=groups_of(settings, token.claims))
        self.rt.store.identities.touch(token.issuer, token.subject, email=email,
                                       now=self.rt.now())
        event = proof_of(token, settings, self.acr_levels(settings), now=self.rt.now())
        signed = self.accounts._open_session(user, context, event)
        self.rt.store.identities.link_session(SessionLink(
            session_id=signed.session.id, provider=client.name, issuer=token.issuer,
            subject=token.subject, sid=token.sid[:255], id_token=token.raw))
        return signed

    def _user(self, client: OidcClient, token: IdToken,
              identity: IdentityRecord | None) -> UserRecord:
        if identity is not None:
            user = self.rt.store.users.get(identity.user_id)
            if user is None:
                raise OidcRefused("This account no longer exists.", code="no_user")
            return user
        settings, now = client.settings, self.rt.now()
        wanted = _text(token.claims.get(settings.username_claim), 200) or token.subject
        user = UserRecord(id=new_id(), username=f"{settings.username_prefix}{wanted}"[:255],
                          created=now)
        try:
            with self.rt.store.transaction():
                self.rt.store.users.add(user)
                self.rt.store.identities.link(IdentityRecord(
                    issuer=token.issuer, subject=token.subject, user_id=user.id,
                    provider=client.name, email=_text(token.claims.get(settings.email_claim),
                                                      320), created=now, last_login=now))
        except Conflict:
            self.rt.record(kind="admin", outcome="identity_conflict",
                           detail={"provider": client.name, "username": user.username})
            raise OidcRefused("An account with this name already exists here and is not linked "
                              "to this identity provider. Ask an administrator.",
                              code="identity_conflict") from None
        self.rt.record(kind="admin", subject=user.id, outcome="user_added",
                       detail={"username": user.username, "source": client.name})
        return user

    def _end_all(self, user_id: str, why: str) -> None:
        count = self.rt.store.sessions.revoke_all_for_user(user_id, now=self.rt.now())
        self.rt.record(kind="session", subject=user_id, outcome="revoked",
                       detail={"by": "identity_provider", "why": why, "count": count})

    # --- step-up at the provider -------------------------------------------------------------

    def _step_up(self, client: OidcClient, flow: OidcFlow, token: IdToken,
                 session: SessionRecord | None, context: RequestContext) -> Passed:
        if session is None or session.id != flow.session_id:
            raise OidcRefused("Sign in again: this confirmation belongs to another session.",
                              code="session")
        try:
            challenge = self.stepup.live(flow.challenge_id, session)
        except ChallengeGone as exc:
            raise OidcRefused(str(exc), code="challenge") from None
        identity = self.rt.store.identities.get(token.issuer, token.subject)
        if identity is None or identity.user_id != session.user_id:
            raise OidcRefused("You confirmed as another account at the identity provider.",
                              code="other_user")
        now = self.rt.now()
        proof = proof_of(token, client.settings, self.acr_levels(client.settings), now=now)
        self._check_proof(client, flow, token, proof, challenge.requirement, now)
        return self.stepup._complete(challenge, session, proof.factor, context.client_ip, proof)

    def _check_proof(self, client: OidcClient, flow: OidcFlow, token: IdToken, proof: AuthEvent,
                     requirement: Requirement, now: float) -> None:
        """Never trust the request, check the answer (RFC 9470's pattern): the id_token's own
        `acrs` must name the auth context asked for (the same one, worked out again from the
        challenge), its `acr`/`amr` must reach the level, and its `auth_time` the freshness."""
        leeway = client.settings.leeway
        if token.auth_time is None:
            raise OidcRefused("The identity provider did not say when you signed in.",
                              code="no_auth_time")
        wanted = auth_context_for(client.settings, requirement)
        if wanted and wanted not in token.acrs:
            raise OidcRefused("The identity provider did not confirm the authentication "
                              "context this request needs.", code="acrs")
        if proof.level < requirement.level:
            raise OidcRefused(f"The identity provider confirmed {proof.level.label}, but this "
                              f"needs {requirement.level.label}.", code="acr")
        if requirement.methods and proof.factor not in requirement.methods:
            raise OidcRefused("The identity provider's sign-in used another method than this "
                              "request needs.", code="amr")
        if requirement.max_age is not None and now - token.auth_time > requirement.max_age + leeway:
            raise OidcRefused("The identity provider reused an older sign-in.", code="max_age")
        if flow.prompt == "login" and token.auth_time < flow.created - leeway:
            raise OidcRefused("The identity provider did not ask you to sign in again.",
                              code="not_fresh")

    # --- logout --------------------------------------------------------------------------------

    def backchannel_logout(self, name: str, raw: str) -> int:
        """End the sessions a valid logout token names; the number ended."""
        client = self._client(name)
        if not client.settings.backchannel_logout:
            raise OidcRefused("Back-channel logout is off for this provider.", code="disabled")
        try:
            token = client.logout_token(raw)
            key = hashlib.sha256(f"{token.issuer}\n{token.jti}".encode()).hexdigest()
            if not self.rt.store.identities.use_logout_token(
                    key, expires=token.iat + 3600, now=self.rt.now()):
                raise OidcRefused("This logout token was already used.", code="replay")
        except OidcRefused as exc:
            self.rt.record(kind="session", outcome=f"failed:{exc.code}"[:64],
                           detail={"provider": name[:32], "by": "backchannel_logout"})
            raise
        ids = self.rt.store.identities.linked_sessions(token.issuer, subject=token.subject,
                                                        sid=token.sid)
        ended = 0
        for session_id in ids:
            session = self.rt.store.sessions.get(session_id)
            if session is not None and self.rt.store.sessions.revoke(session_id,
                                                                     now=self.rt.now()):
                ended += 1
                self.rt.record(kind="session", subject=session.user_id, session_id=session_id,
                               outcome="revoked", detail={"by": "backchannel_logout",
                                                          "provider": name})
        return ended

    def logout_url(self, session: SessionRecord, *, after: str) -> str:
        """The provider's end-session URL for a session it opened ("" when none)."""
        link = self.rt.store.identities.session_link(session.id)
        client = self.clients.get(link.provider) if link else None
        if link is None or client is None or not client.settings.logout:
            return ""
        return client.end_session_url(id_token_hint=link.id_token,
                                      post_logout_redirect_uri=after,
                                      state=secrets.token_urlsafe(16))

    def _client(self, name: str) -> OidcClient:
        client = self.clients.get(name)
        if client is None:
            raise OidcRefused("No such identity provider.", code="unknown_provider")
        return client


def auth_context_for(settings: OidcProvider, requirement: Requirement) -> str:
    """The auth context a step-up at this provider asks for: the weakest configured one that
    reaches the rule's level (and counts as one of its `methods`, when it names some); "" when
    none does (the step-up then asks with `acr_values`)."""
    fitting = [(Level.parse(c.level), int(cid[1:]), cid)
               for cid, c in settings.auth_contexts.items()
               if Level.parse(c.level) >= requirement.level
               and (not requirement.methods or c.factor in requirement.methods)]
    return min(fitting)[2] if fitting else ""


def sources(store: Store, user_ids: list[str]) -> dict[str, str]:
    """user id -> where the user comes from: the identity provider that made it, else `local`."""
    found = {i.user_id: i.provider for i in store.identities.for_users(user_ids)}
    return {uid: found.get(uid, "local") for uid in user_ids}


def groups_of(settings: OidcProvider, claims: Mapping[str, Any]) -> list[str]:
    """The Stepguard groups of a provider user: the groups claim through `group_map` (all of
    them when no map is set), plus `static_groups`."""
    names = _claimed_groups(settings, claims)
    if settings.group_map:
        names = [settings.group_map[g] for g in names if g in settings.group_map]
    return sorted({*names, *settings.static_groups})


def _allow_list_refusal(settings: OidcProvider, claims: Mapping[str, Any]) -> str:
    if settings.allowed_domains:
        email = claims.get(settings.email_claim)
        domain = email.rpartition("@")[2].lower() if isinstance(email, str) else ""
        if claims.get("email_verified") is not True or domain not in {
                d.lower() for d in settings.allowed_domains}:
            return "Your account's email domain is not allowed here."
    allowed = set(settings.allowed_groups)
    if allowed and not set(_claimed_groups(settings, claims)) & allowed:
        return "Your account is not in a group allowed here."
    return ""


def _claimed_groups(settings: OidcProvider, claims: Mapping[str, Any]) -> list[str]:
    value = claims.get(settings.groups_claim) if settings.groups_claim else None
    raw = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [g for g in raw if isinstance(g, str) and 0 < len(g) <= 255][:MAX_GROUPS]


def _text(value: object, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value if c.isprintable())[:limit]


def _digest(browser: str) -> str:
    return hashlib.sha256(browser.encode()).hexdigest()


def _usable_browser(value: str) -> bool:
    return 40 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)
