"""The server configuration schema: every setting and every default, in one place.

`stepguard config validate` and `stepguard serve` both load through `config.load`, which reports
every problem at once with the file, the path inside it, the line and what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from stepguard.core.canonical import is_token
from stepguard.core.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_networks(values: list[str]) -> list[str]:
    for value in values:
        ipaddress.ip_network(value, strict=False)
    return values


class ServerSettings(Section):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(9091, ge=1, le=65535, description="port to listen on")
    public_url: str = Field("http://localhost:9091",
                            description="where users reach the portal (scheme, host, port)")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs whose X-Forwarded-* headers are honoured; empty = none")
    server: Literal["auto", "uvicorn", "granian"] = Field(
        "auto", description="ASGI server for `serve`: auto = uvicorn (httptools, uvloop) in "
        "reverse-proxy mode (`upstreams` set: ~1.1x granian's req/s there, its relay and the "
        "client share one thread) and granian otherwise (~1.8x uvicorn on forward-auth)"
    )
    workers: int = Field(1, ge=1, le=64, description="worker processes for `serve`")
    request_timeout: Duration = Field(30.0, description="upstream timeout in reverse-proxy mode")
    method_override: Literal["refuse", "honour"] = Field(
        "refuse", description="X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override and "
        "_method form fields: refuse = 400; honour = decide on the overriding method (only on "
        "POST, one override; reverse proxy sends that method upstream). See docs/security.md")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="structured log level (debug logs every allowed decision)")
    log_format: Literal["json", "console"] = Field("json", description="log line format")

    _networks = field_validator("trusted_proxies")(_check_networks)


class StoreSettings(Section):
    url: str = Field("sqlite:///data/stepguard.db",
                     description="sqlite:///path.db (embedded) or postgresql://user@host/db")
    connect_timeout: Duration = Field(5.0, description="give up reaching the store after this")
    auto_migrate: bool = Field(True, description="apply migrations at start (SQLite only)")
    statement_timeout: Duration = Field(
        5.0, description="PostgreSQL: cancel any statement (or lock wait) running longer than this")
    tcp_user_timeout: Duration = Field(
        5.0, description="PostgreSQL: drop a connection whose sent data stays unacknowledged this "
                         "long (a server that vanished without closing the connection)")


class SecretSettings(Section):
    cookie_key: str = Field(
        "", description="HMAC key for signed cookies (device id); use file: or ${ENV}")
    totp_keys: dict[str, str] = Field(default_factory=dict,
                                      description="id -> base64 32-byte AES-GCM key for TOTP seeds")
    totp_current: str = Field("", description="id of the key in totp_keys that seals new seeds")
    audit_signing_key: str = Field("", description="PEM Ed25519 private key for ledger checkpoints")
    ip_pseudonym_key: str = Field("", description="HMAC key for pseudonymised IPs in the ledger")


class SessionSettings(Section):
    cookie_name: str = Field("stepguard_session",
                             description="session cookie (prefixed __Host- on https)")
    cookie_domain: str = Field(
        "", description="share the session across subdomains, e.g. example.com")


class PortalSettings(Section):
    title: str = Field("Stepguard", description="name shown in the portal and authenticator apps")
    protected_domains: list[str] = Field(default_factory=list,
                                         description="hosts (or *.suffix) allowed as return URLs")


class WebauthnSettings(Section):
    rp_id: str = Field("localhost", description="WebAuthn relying party id (a registrable domain)")
    rp_name: str = Field("Stepguard", description="name shown by the authenticator")
    origins: list[str] = Field(default_factory=lambda: ["http://localhost:9091"],
                               description="origins (with port) where the portal is served, "
                               "written as the browser sends them: scheme://host[:port], lower "
                               "case, no path (not even '/')")


class LocationEntry(Section):
    network: str
    country: str
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None

    _network = field_validator("network")(lambda v: _check_networks([v])[0])


class RiskSection(Section):
    weights: dict[str, int] = Field(default_factory=dict, description="signal name -> points")
    medium: int = Field(30, ge=0, le=100, description="lowest score of risk level medium")
    high: int = Field(60, ge=0, le=100, description="lowest score of risk level high")
    critical: int = Field(90, ge=0, le=100, description="lowest score of risk level critical")
    max_speed_kmh: float = Field(900.0, description="faster travel between sign-ins is impossible")
    trusted_networks: list[str] = Field(default_factory=list,
                                        description="CIDRs; outside them `untrusted_network` fires")
    geoip_database: str | None = Field(
        None, description="MaxMind-format .mmdb file (City or Country)")
    locations: list[LocationEntry] = Field(default_factory=list,
                                           description="static network -> place entries")

    _networks = field_validator("trusted_networks")(_check_networks)


class ThrottleSection(Section):
    base_delay: Duration = Field(1.0, description="first back-off after a failure (doubles)")
    max_delay: Duration = Field(900.0, description="longest back-off between attempts")
    hard_lock_after: int = Field(
        100, ge=1, le=100,
        description="consecutive failures per user+factor that lock it for unknown clients "
                    "(the owner's known devices keep their own count; `users unlock` lifts it)")
    ip_forget_after: Duration = Field(
        3600.0, description="an IP's failures are forgotten after this")
    free_failures: int = Field(
        10, ge=0, le=99,
        description="failures a client address, or all clients of one user together, may make "
                    "before the back-off starts (a user+address starts at the first)")


class AuditSection(Section):
    pseudonymise_ips: bool = Field(False, description="store keyed hashes instead of client IPs")
    retention: Duration | None = Field(None, description="`stepguard audit prune` keeps this much")
    shutdown_timeout: Duration = Field(
        20.0, description="on shutdown, wait this long for queued audit entries to be written; "
                          "what is still unwritten then goes to spill_dir")
    spill_dir: str = Field(
        "audit-spill", description="entries that could not be written at shutdown (store down) are "
                                   "saved here as JSON Lines and written at the next start "
                                   "(relative to this file)")
    allows: Literal["summary", "every_request"] = Field(
        "summary", description="plain allows (no grant, nothing above a sign-in, low risk) "
                               "as one entry per subject, session, rule and interval, or one "
                               "entry each (`every_request`: PCI DSS 10.2.1, see "
                               "docs/security.md); every other decision is always its own entry")
    summary_interval: Duration = Field(
        60.0, gt=0, description="length of a plain-allow summary interval; a crash loses at most "
                                "the allows of the open interval")


class ChallengeSection(Section):
    ttl: Duration = Field(600.0, description="how long a step-up challenge stays open")
    held_body_limit: int = Field(65536, ge=0, le=65536,
                                 description="bytes of a POST body held across a step-up")
    grant_ttl: Duration = Field(300.0, description="grant lifetime when the rule has no max_age")


class UpstreamRoute(Section):
    paths: list[str] = Field(default_factory=lambda: ["/**"], description="path globs")
    action: str = Field("", description="action name given to matching requests")
    attributes: dict[str, str] = Field(
        default_factory=dict, description="attribute -> query:name | form:name | json:path")


# Not settable on an upstream's answers: the framing and hop-by-hop headers Stepguard sets or
# drops itself, and cookies (a proxy-set cookie would reach every user of the upstream).
FIXED_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "content-length", "set-cookie"})
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # what every server sends as it is


def _check_response_headers(value: dict[str, str]) -> dict[str, str]:
    seen: set[str] = set()
    problems = []
    for name, text in value.items():
        if not is_token(name):
            problems.append(f"expected an HTTP header name, got {name!r}")
        if name.lower() in FIXED_RESPONSE_HEADERS:
            problems.append(f"{name} is set by Stepguard itself (framing, hop-by-hop, cookies)")
        if name.lower() in seen:
            problems.append(f"{name} is named twice (header names ignore case)")
        if not _HEADER_VALUE.fullmatch(text):
            problems.append(f"the value of {name} holds a character a header cannot carry "
                            "(expected visible ASCII, spaces and tabs)")
        seen.add(name.lower())
    if problems:
        raise ValueError("; ".join(problems))
    return value


class Upstream(Section):
    host: str = Field(description="Host header this upstream serves ('*' = any)")
    url: str = Field(description="base URL of the upstream application")
    routes: list[UpstreamRoute] = Field(default_factory=list)
    response_headers: dict[str, str] = Field(
        default_factory=lambda: {"Cache-Control": "no-store"},
        description="added to the upstream's answers that do not set them (the default keeps "
                    "shared caches from storing what the gate let through); "
                    "Strict-Transport-Security too when the public URL is https (unless named "
                    "here). The portal's "
                    "page headers (its CSP, framing and permissions) are not: they are for "
                    "Stepguard's pages, not the application's")
    _response_headers = field_validator("response_headers")(_check_response_headers)


ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _check_issuer_url(value: str | None) -> str | None:
    """https, or http only on a loopback host (tests, a local provider)."""
    from urllib.parse import urlsplit

    if not value:
        return value
    parts = urlsplit(value)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError("expected an https URL (http only on localhost or 127.0.0.1)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("expected a URL without query, fragment or user information")
    return value


class BearerSection(Section):
    """OAuth resource-server mode: JWT access tokens from one issuer (see docs/bearer.md)."""

    issuer: str = Field("", description="the tokens' `iss`; empty = bearer tokens are refused")
    audience: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list, validate_default=True,
        description="accepted `aud` values; a token must name one")
    jwks_uri: str | None = Field(None, description="default: from the issuer's OpenID discovery")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"],
                                  description="signature algorithms allowed (asymmetric only)")
    leeway: Duration = Field(30.0, description="clock skew allowed on exp, nbf, iat")
    jwks_ttl: Duration = Field(300.0, description="how long a fetched key set is used")
    jwks_refetch_interval: Duration = Field(
        30.0, description="at most one refetch per interval on an unknown `kid` (rotation)")
    http_timeout: Duration = Field(2.0, description="timeout of discovery and JWKS requests")
    acr_levels: dict[str, str] = Field(
        default_factory=dict,
        description="acr URI -> aal1..aal3; empty = the policy's `levels` acr URIs")
    groups_claim: str = Field("", description="claim holding the subject's groups, e.g. groups")
    fresh_window: Duration = Field(
        60.0, description="how old `auth_time` may be to count as `max_age: 0s` (prove it now)")

    _urls = field_validator("issuer", "jwks_uri")(_check_issuer_url)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one algorithm")
        refused = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if refused:
            allowed = ", ".join(ASYMMETRIC_ALGORITHMS)
            raise ValueError(f"only asymmetric algorithms are allowed ({allowed}); "
                             f"refused: {', '.join(refused)}")
        return value

    @field_validator("acr_levels")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        from stepguard.core.levels import Level

        for acr, level in value.items():
            if Level.parse(level) is Level.AAL0:
                raise ValueError(f"acr {acr!r}: expected aal1, aal2 or aal3")
        return value

    @field_validator("audience")
    @classmethod
    def _audience_with_issuer(cls, value: list[str], info: object) -> list[str]:
        data = getattr(info, "data", {})
        if data.get("issuer") and not value:
            raise ValueError("expected at least one audience when an issuer is set")
        return value


_PROVIDER_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# RFC 8176 amr values -> the Stepguard factor they stand for (a sign-in that used a passkey at the
# identity provider counts as a passkey here). Values not listed count as the factor `oidc`.
DEFAULT_AMR_FACTORS = {"hwk": "webauthn", "swk": "webauthn", "otp": "totp", "mca": "push",
                       "pwd": "password"}


_AUTH_CONTEXT_ID = re.compile(r"^c([1-9]|[1-9][0-9])$")


class AuthContext(Section):
    """What one authentication context of the provider proves when the id_token's `acrs`
    claim names it (Microsoft Entra ID Conditional Access authentication context)."""

    level: Literal["aal1", "aal2", "aal3"] = Field(
        description="the level a sign-in that satisfied this context proves")
    factor: str = Field("", description="the Stepguard factor it counts as, for rules with "
                                        "`methods` (e.g. webauthn when its Conditional Access "
                                        "policy demands phishing-resistant MFA); empty = from "
                                        "amr")

    @field_validator("factor")
    @classmethod
    def _factor(cls, value: str) -> str:
        from stepguard.core.levels import FACTORS

        if value and value not in FACTORS:
            raise ValueError(f"unknown factor {value} (expected one of: {', '.join(FACTORS)})")
        return value


class OidcProvider(Section):
    """One OpenID Connect identity provider: a button on the sign-in page (see
    docs/identity-providers.md)."""

    name: str = Field(pattern=_PROVIDER_NAME,
                      description="short id used in URLs (/oidc/NAME/callback) and the ledger")
    label: str = Field("", description="button text; default 'Sign in with NAME'")
    issuer: str = Field(description="the provider's issuer URL (its OpenID discovery is read "
                                    "from ISSUER/.well-known/openid-configuration at start)")
    client_id: str = Field(min_length=1, description="Stepguard's client id at the provider")
    client_secret: str = Field("", description="client secret (use file: or ${ENV}); empty = a "
                                               "public client (PKCE only)")
    token_auth: Literal["client_secret_basic", "client_secret_post", "none"] = Field(
        "client_secret_basic", description="how Stepguard authenticates at the token endpoint")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"],
                              description="scopes asked for (openid is always included)")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"],
                                  description="id_token signature algorithms allowed "
                                              "(asymmetric only)")
    leeway: Duration = Field(60.0, description="clock skew allowed on exp, iat, auth_time")
    max_token_age: Duration = Field(
        600.0, description="an id_token issued (iat) longer ago than this is refused")
    http_timeout: Duration = Field(5.0, description="timeout of discovery, JWKS and token calls")
    jwks_refetch_interval: Duration = Field(
        30.0, description="at most one JWKS refetch per interval on an unknown `kid` (rotation)")
    username_claim: str = Field("preferred_username",
                                description="claim giving the new user's username (kept "
                                            "afterwards); falls back to `sub`")
    username_prefix: str = Field("", description="prefix of usernames made by this provider "
                                                 "(e.g. `corp:`) so two providers never collide")
    email_claim: str = Field("email", description="claim with the email address")
    name_claim: str = Field("name", description="claim with the display name")
    groups_claim: str = Field("", description="claim with the user's groups, e.g. groups")
    group_map: dict[str, str] = Field(
        default_factory=dict, description="provider group -> Stepguard group; when set, "
                                          "unmapped groups are dropped")
    static_groups: list[str] = Field(default_factory=list,
                                     description="groups every user of this provider gets")
    allowed_domains: list[str] = Field(
        default_factory=list, description="only users whose verified email is in one of these "
                                          "domains may sign in (empty = any)")
    allowed_groups: list[str] = Field(
        default_factory=list, description="only users in one of these provider groups may sign "
                                          "in (empty = any)")
    acr_levels: dict[str, str] = Field(
        default_factory=dict,
        description="acr value -> aal1..aal3; empty = the policy's `levels` acr URIs; an acr "
                    "not listed counts as aal1")
    amr_levels: dict[str, str] = Field(
        default_factory=dict, description="amr value -> aal2/aal3 it proves on its own "
                                          "(e.g. hwk: aal3); empty = levels come from acr only")
    amr_factors: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_AMR_FACTORS),
        description="amr value -> Stepguard factor, for rules with `methods`")
    level_acr: dict[str, str] = Field(
        default_factory=dict,
        description="aal2/aal3 -> the acr_values to ask for when stepping up at the provider "
                    "(Entra ID: use auth_contexts instead); default: the inverse of "
                    "acr_levels")
    auth_contexts: dict[str, AuthContext] = Field(
        default_factory=dict,
        description="Entra ID authentication context id (c1..c99) -> what it proves; a sign-in "
                    "whose id_token `acrs` names one counts as its level, and a step-up at the "
                    "provider asks for the weakest context reaching the rule's level (claims "
                    "parameter) and needs it back in `acrs`; unknown ids are ignored")
    step_up: Literal["local", "idp", "either"] = Field(
        "local", description="where this provider's users step up when the rule does not say "
                             "(`require.via`): Stepguard factors, a new login at the provider, "
                             "or the user's choice")
    request_auth_time: bool = Field(
        True, description="ask for `auth_time` as an essential claim (claims parameter) at "
                          "every sign-in; without it a sign-in counts as aal1")
    logout: bool = Field(True, description="signing out also ends the provider's session "
                                           "(RP-initiated logout) when it offers one")
    backchannel_logout: bool = Field(
        True, description="accept OIDC Back-Channel Logout at /oidc/NAME/backchannel-logout")

    _urls = field_validator("issuer")(_check_issuer_url)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        return BearerSection._asymmetric_only(value)

    @field_validator("acr_levels", "amr_levels")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        return BearerSection._levels(value)

    @field_validator("level_acr")
    @classmethod
    def _level_keys(cls, value: dict[str, str]) -> dict[str, str]:
        wrong = [k for k in value if k not in ("aal1", "aal2", "aal3")]
        if wrong:
            raise ValueError(f"expected aal1, aal2 or aal3 as keys; got {', '.join(wrong)}")
        return value

    @field_validator("auth_contexts")
    @classmethod
    def _context_ids(cls, value: dict[str, AuthContext]) -> dict[str, AuthContext]:
        wrong = [k for k in value if not _AUTH_CONTEXT_ID.match(k)]
        if wrong:
            raise ValueError(f"expected auth context ids c1..c99; got {', '.join(wrong)}")
        return value

    @field_validator("amr_factors")
    @classmethod
    def _factors(cls, value: dict[str, str]) -> dict[str, str]:
        from stepguard.core.levels import FACTORS

        wrong = [f for f in value.values() if f not in FACTORS]
        if wrong:
            raise ValueError(f"unknown factor(s) {', '.join(wrong)} "
                             f"(expected some of: {', '.join(FACTORS)})")
        return value


class OidcSection(Section):
    """Sign-in with identity providers (OpenID Connect); see docs/identity-providers.md."""

    providers: list[OidcProvider] = Field(default_factory=list,
                                          description="one sign-in button each")
    passwords: bool = Field(True, description="also offer Stepguard's own username + password "
                                              "form on the sign-in page")
    flow_ttl: Duration = Field(600.0, description="how long a sign-in at a provider may take")

    @field_validator("providers")
    @classmethod
    def _unique(cls, value: list[OidcProvider]) -> list[OidcProvider]:
        names = [p.name for p in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(twice)}")
        return value


class RedisSettings(Section):
    """Optional Redis for the throttle counters (see docs/deploy.md). Empty url = no Redis."""

    url: str = Field("", description="redis://[user:password@]host:6379/0 or rediss://…; empty = "
                                     "no Redis (throttle counters stay in the store)")
    connect_timeout: Duration = Field(0.5, description="give up connecting to Redis after this")
    socket_timeout: Duration = Field(
        0.5, description="give up waiting for a Redis reply after this")
    retries: int = Field(1, ge=0, le=5,
                         description="retries of a Redis command after a connection error or "
                                     "timeout (then the request fails closed with 503)")
    health_check_interval: Duration = Field(
        1.0, description="the liveness watch pings Redis this often; an outage is noticed at once "
                         "when Redis closes its connections, else within this + socket_timeout")
    key_prefix: str = Field("stepguard:", description="prefix of every key Stepguard writes")


def _check_listen(value: str) -> str:
    if value:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9464")
    return value


class MetricsSection(Section):
    """Prometheus metrics. Never served unauthenticated on the public port: they name rules and
    count users' outcomes. Default: not served at all until one of these is set."""

    listen: str = Field("", description="host:port of a separate metrics listener (e.g. "
                                        "127.0.0.1:9464); empty = none")
    token: str = Field("", description="bearer token a scraper must send; when set, /metrics "
                                       "is also served on the public port to its holder")

    _listen = field_validator("listen")(_check_listen)


def _check_origins(values: list[str]) -> list[str]:
    for value in values:
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https") or not rest or any(c in rest for c in "/?#@ *"):
            raise ValueError(f"{value!r} is not an origin (scheme://host[:port], nothing after)")
    return [v.lower() for v in values]


class InlineSection(Section):
    """The inline step-up dialog (`stepguard.js`, served at /static/inline/stepguard.js): the
    application origins that may load the module (CORS) and frame the dialog (CSP
    frame-ancestors). The portal's own origin is always allowed; no other origin is by default."""

    enabled: bool = Field(True, description="serve the module and the dialog frame")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="application origins (scheme://host[:port]) allowed to embed the dialog; "
                    "exact matches only, no wildcards")

    _origins = field_validator("allowed_origins")(_check_origins)
NOTICE_KINDS = ("sign_in_new_device", "sign_in_new_location", "factor_added", "factor_removed",
                "recovery_codes_regenerated", "lockout", "request_denied", "step_up_declined",
                "admin_action")


class EmailChannel(Section):
    """Security notices by email (to the user concerned and to `operators`)."""

    smtp_host: str = Field("", description="SMTP server; empty = no email")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls (587), tls (465) or none (a local relay only)")
    username: str = Field("", description="SMTP user (empty = no AUTH)")
    password: str = Field("", description="SMTP password; use file: or ${ENV}")
    sender: str = Field("stepguard@localhost", description="From address")
    operators: list[str] = Field(default_factory=list,
                                 description="addresses that receive every notice")
    notify_users: bool = Field(True, description="also send each user their own notices")
    timeout: Duration = Field(10.0, description="SMTP connection and command timeout")


class WebhookChannel(Section):
    """A signed webhook (HMAC-SHA256 over timestamp and body; see docs/operations.md)."""

    url: str = Field(description="https URL (http only on localhost) that receives notices")
    secret: str = Field(description="HMAC key shared with the receiver; use file: or ${ENV}")
    events: list[str] = Field(default_factory=list,
                              description="notice kinds to send; empty = all")
    timeout: Duration = Field(5.0, description="per-attempt timeout")
    retries: int = Field(5, ge=0, le=20, description="retries after the first attempt")
    backoff: Duration = Field(1.0, description="first retry delay; doubles each retry")
    max_backoff: Duration = Field(300.0, description="longest delay between retries")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        checked = _check_issuer_url(value.split("?", 1)[0]) if value else value
        if not checked:
            raise ValueError("expected a URL")
        return value

    @field_validator("secret")
    @classmethod
    def _strong(cls, value: str) -> str:
        if len(value) < 16:
            raise ValueError("expected a secret of at least 16 characters")
        return value


class SyslogChannel(Section):
    """Notices for a SIEM: RFC 5424 syslog or JSON lines."""

    address: str = Field("", description="udp://host:514, tcp://host:601 or unix:///dev/log; "
                                         "empty = none")
    file: str = Field("", description="a file the lines are appended to (relative to this "
                                      "file), instead of or beside `address`")
    format: Literal["rfc5424", "json"] = Field("rfc5424", description="line format")
    facility: int = Field(10, ge=0, le=23, description="syslog facility (10 = authpriv)")
    app_name: str = Field("stepguard", description="APP-NAME field")


class NotificationsSection(Section):
    """Security notices to users and operators (see docs/operations.md)."""

    events: list[str] = Field(default_factory=lambda: list(NOTICE_KINDS),
                              description="notice kinds that are sent at all")
    email: EmailChannel = EmailChannel()
    webhooks: list[WebhookChannel] = Field(default_factory=list)
    syslog: SyslogChannel = SyslogChannel()
    queue: int = Field(10_000, ge=10, le=1_000_000,
                       description="notices waiting per channel before new ones are dropped "
                                   "(counted and logged; the audit ledger keeps every event)")

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in NOTICE_KINDS]
        if unknown:
            raise ValueError(f"unknown notice kinds {unknown} (known: {', '.join(NOTICE_KINDS)})")
        return value


ADMIN_ROLES = ("auditor", "operator", "admin")
AdminRole = Literal["auditor", "operator", "admin"]


def _default_roles() -> dict[AdminRole, list[str]]:
    return {"admin": ["admins"], "operator": ["operators"], "auditor": ["auditors"]}


class AdminSection(Section):
    """Who may use the admin console, by group (an IdP's groups work too)."""

    roles: dict[AdminRole, list[str]] = Field(
        default_factory=_default_roles,
        description="role -> groups holding it; a user gets the highest role of their groups. "
                    "auditor: read-only; operator: also unlock, disable, end sessions; admin: "
                    "also create users and reset factors")


class PostgresDatabase(Section):
    """One database clients may ask for, and how Stepguard reaches it upstream."""

    name: str = Field(description="database name clients connect to (as in psql's dbname)")
    upstream: str = Field(description="host:port of the real PostgreSQL")
    database: str = Field("", description="upstream database name (default: `name`)")
    user: str = Field(description="role Stepguard signs in as upstream (never shown to users)")
    password: str = Field("", description="that role's password; use file: or ${ENV}")
    tls: Literal["disable", "require", "verify-full"] = Field(
        "disable", description="TLS to the upstream: require = encrypted; verify-full = "
                               "encrypted with the certificate checked against ca_file and host")
    ca_file: str = Field("", description="CA bundle for tls: verify-full (relative to this file)")
    views: dict[str, list[str]] = Field(
        default_factory=dict,
        description="view -> tables it reads, so `tables:` rules see through views "
                    "(e.g. public.card_summary: [public.cards])")

    _upstream = field_validator("upstream")(lambda v: _check_listen(v) or v)


class PostgresListener(Section):
    """A PostgreSQL wire-protocol listener (see docs/databases.md)."""

    listen: str = Field("127.0.0.1:6432", description="host:port to accept PostgreSQL clients on")
    tls_cert: str = Field("", description="path of the PEM certificate chain for TLS to clients "
                                          "(SSLRequest); empty = clients get no TLS")
    tls_key: str = Field("", description="path of the PEM private key of tls_cert")
    require_tls: bool = Field(False, description="refuse clients that do not start TLS")
    databases: list[PostgresDatabase] = Field(default_factory=list)

    _listen = field_validator("listen")(lambda v: _check_listen(v) or v)


class PostgresSection(Section):
    """The database door: PostgreSQL gateways judged by the same policy (docs/databases.md)."""

    listeners: list[PostgresListener] = Field(default_factory=list)
    public_address: str = Field(
        "", description="host:port users connect to (in issued connection strings); default: "
                        "the first listener")
    hold_timeout: Duration = Field(
        120.0, description="how long a statement waiting for a step-up is held before it is "
                           "refused (SQLSTATE 28000)")
    poll_interval: Duration = Field(0.5, description="how often a held statement checks for "
                                                     "its approval")
    token_ttl: Duration = Field(28800.0, description="lifetime of a database token (db-login)")
    max_message: int = Field(
        67_108_864, ge=65_536, le=1_073_741_823,
        description="largest client message accepted, in bytes (larger: error 08P01, closed)")
    audit_literals: bool = Field(
        False, description="write statements to the audit ledger with their literal values "
                           "(default: normalised, literals replaced by $n)")
    connect_timeout: Duration = Field(5.0, description="give up reaching an upstream after this")
    login_timeout: Duration = Field(
        20.0, gt=0, description="a client that has not finished TLS and sign-in by then is "
                                "disconnected (slow or silent clients hold no connection)")
class McpServer(Section):
    """One upstream MCP server behind the MCP door, reached at `/mcp/<name>`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                      description="the server's name: its path /mcp/<name> and `match.mcp.servers`")
    url: str = Field("", description="Streamable HTTP endpoint of the upstream (e.g. "
                                     "http://127.0.0.1:8000/mcp); or set `command`")
    command: list[str] = Field(default_factory=list,
                               description="stdio upstream: the program and its arguments, "
                                           "started once per MCP session")
    env: dict[str, str] = Field(default_factory=dict, description="environment of a stdio "
                                "upstream (nothing else is inherited but PATH)")
    cwd: str = Field("", description="working directory of a stdio upstream")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if bool(self.command) == bool(self.url):
            raise ValueError("set exactly one of `url` (Streamable HTTP) or `command` (stdio)")
        return self


class McpSection(Section):
    """The MCP door: step-up for AI agents' tool calls (see docs/mcp.md)."""

    max_body: int = Field(262_144, ge=1024, le=8_388_608,
                          description="largest JSON-RPC message a client may send, in bytes")
    redact: list[str] = Field(
        default_factory=lambda: ["password", "secret", "token", "api_key", "authorization",
                                 "card_number", "cvv"],
        description="tool argument names (case-insensitive, at any depth) recorded as "
                    "'[redacted]' in the audit ledger and never shown in logs")
    hold: Duration = Field(300.0, description="how long a call held in a URL elicitation waits "
                                              "for the human before it ends in a tool error")
    agent_token_ttl: Duration = Field(30 * 86400.0, description="lifetime of a new agent token")
    upstream_timeout: Duration = Field(120.0, description="give up on an upstream answer after "
                                                          "this long")
    session_idle: Duration = Field(900.0, description="a stdio upstream's process ends after its "
                                                      "MCP session was idle this long")
    audience: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list, validate_default=True,
        description="accept access tokens of the `bearer` issuer as agent credentials when their "
                    "`aud` is one of these (the door's resource URL, never the web API's "
                    "audience), for the user linked to the token's issuer and `sub` (see "
                    "docs/identity-providers.md). Empty: agent tokens only")


class StepguardConfig(Section):
    policy: str = Field("policy.yaml", description="policy file, relative to this file")
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    secrets: SecretSettings = SecretSettings()
    session: SessionSettings = SessionSettings()
    portal: PortalSettings = PortalSettings()
    webauthn: WebauthnSettings = WebauthnSettings()
    risk: RiskSection = RiskSection()
    throttle: ThrottleSection = ThrottleSection()
    audit: AuditSection = AuditSection()
    challenge: ChallengeSection = ChallengeSection()
    upstreams: list[Upstream] = Field(default_factory=list)
    api: ApiSection = Field(default_factory=lambda: ApiSection())
    bearer: BearerSection = BearerSection()
    redis: RedisSettings = RedisSettings()
    metrics: MetricsSection = MetricsSection()
    notifications: NotificationsSection = NotificationsSection()
    admin: AdminSection = AdminSection()
    postgres: PostgresSection = PostgresSection()
    oidc: OidcSection = OidcSection()
    mcp_servers: list[McpServer] = Field(default_factory=list,
                                         description="upstream MCP servers (the MCP door)")
    mcp: McpSection = McpSection()
    inline: InlineSection = InlineSection()

    def http_server(self) -> Literal["uvicorn", "granian"]:
        """The ASGI server `serve` runs (`server.server`, `auto` resolved by the mode)."""
        if self.server.server != "auto":
            return self.server.server
        return "uvicorn" if self.upstreams else "granian"


class ApiSection(Section):
    """The decision API (`POST /api/v1/decide`) for applications in any language."""

    enabled: bool = Field(True, description="serve /api/v1/decide and /api/v1/openapi.json")
    max_body: int = Field(65_536, ge=1024, le=1_048_576,
                          description="largest decide request body accepted, in bytes")
