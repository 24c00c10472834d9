"""IdP access tokens (JWT) as agent credentials at the MCP door.

An MCP client that signed its user in at the company IdP (the MCP authorization flow) presents
the IdP's access token instead of a Stepguard agent token. It is validated by the bearer
adapter's validator (`adapters.bearer`: the one configured issuer, its JWKS, allow-listed
asymmetric algorithms, `iss`, `exp`/`nbf`/`iat` on Stepguard's clock, tokens bound to a client
key refused) with one difference: the audience must be one of `mcp.audience` — the door's own
resource URL — never the web API's `bearer.audience`, so a token minted for another resource is
not accepted here (no token passthrough, MCP authorization spec). Empty `mcp.audience`: the door
accepts Stepguard agent tokens only.

The user is the one linked to the token's issuer + `sub` (`store.identities`, as the OpenID
sign-in links them: never by email or username); a token of an identity linked to no user, or
to a disabled one, is refused. The agent is then the same as a Stepguard agent token's: a
session of that user whose only authentication event is aal1, factor `agent` (at the token's
issue time) — the IdP's `acr`/`amr` say how the
human signed in when the agent was connected, not that they approve this call — so anything
above aal1 needs the human's bound, single-use approval on the step-up page. Its session is one
per (issuer, user, OAuth client): a refreshed token of the same client finds the approval its
predecessor asked for; another client of the same user does not.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import NoReturn

from stepguard.adapters.bearer import BearerToken, BearerValidator, validator_for
from stepguard.core.errors import InvalidToken
from stepguard.service.agent_tokens import AGENT_FACTOR, Agent
from stepguard.service.runtime import Runtime
from stepguard.storage.agent_tokens import AgentTokenRecord

JWT_AGENT_PREFIX = "jwt-"  # an IdP agent's id (`agent` in audit entries, its session's suffix)


def looks_like_jwt(credential: str | None) -> bool:
    return credential is not None and credential.count(".") == 2


class BearerAgents:
    """Agents authenticated by an IdP access token; `validator` None: none are accepted."""

    def __init__(self, runtime: Runtime, validator: BearerValidator | None = None) -> None:
        self.rt = runtime
        self.validator = validator or _door_validator(runtime)

    def authenticate(self, raw: str | None) -> Agent:
        """The agent a valid access token stands for; `InvalidToken` (audited, without the
        token), `IssuerUnavailable` when the keys cannot be had. Blocking: call in a thread."""
        if self.validator is None or raw is None:
            self._refuse("IdP access tokens are not accepted at the MCP door")
        token = self._validate(raw)
        identity = self.rt.store.identities.get(token.issuer, token.subject.id)
        user = self.rt.store.users.get(identity.user_id) if identity is not None else None
        if user is None or user.disabled:
            self._refuse("the token's subject is not an active Stepguard user")
        client = token.client_id or token.state.id  # no client named: one per sign-in
        material = "\0".join((token.issuer, token.subject.id, client))
        agent_id = JWT_AGENT_PREFIX + hashlib.sha256(material.encode()).hexdigest()[:28]
        # its one event: when the IdP last vouched for this client (the token's issue time)
        record = AgentTokenRecord(id=agent_id, user_id=user.id, name=(client or "idp")[:64],
                                  secret_hash="", created=token.issued_at,
                                  expires=token.expires_at)
        return Agent(record, user)

    def _validate(self, raw: str) -> BearerToken:
        assert self.validator is not None
        try:
            return self.validator.validate(raw)
        except InvalidToken as exc:
            self._refuse(exc.reason)

    def _refuse(self, reason: str) -> NoReturn:
        self.rt.record(kind="verification", factor=AGENT_FACTOR, outcome="failed:invalid",
                       detail={"via": "mcp", "credential": "idp", "error": reason})
        raise InvalidToken(reason)


def _door_validator(runtime: Runtime) -> BearerValidator | None:
    """The bearer validator with the door's audiences (its JWKS cache shared)."""
    audiences = tuple(runtime.config.mcp.audience)
    base = validator_for(runtime) if audiences else None
    if base is None:
        return None
    return BearerValidator(replace(base.settings, audiences=audiences), base.jwks,
                           now=runtime.now)
