"""The server configuration schema: every setting and every default, in one place.

`stepguard config validate` and `stepguard serve` both load through `config.load`, which reports
every problem at once with the file, the path inside it, the line and what was expected.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from stepguard.core.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_networks(values: list[str]) -> list[str]:
    for value in values:
        ipaddress.ip_network(value, strict=False)
    return values


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(9091, ge=1, le=65535)
    public_url: str = "http://localhost:9091"
    trusted_proxies: list[str] = Field(default_factory=list,
                                       description="CIDRs whose X-Forwarded-* headers are honoured; empty = none")
    server: Literal["uvicorn", "granian"] = "uvicorn"
    workers: int = Field(1, ge=1, le=64)
    request_timeout: Duration = 30.0

    _networks = field_validator("trusted_proxies")(_check_networks)


class StoreSettings(Section):
    url: str = Field("sqlite:///data/stepguard.db",
                     description="sqlite:///path.db (embedded) or postgresql://user@host/db")
    connect_timeout: Duration = 5.0
    auto_migrate: bool = True


class RedisSettings(Section):
    url: str | None = None
    timeout: Duration = 1.0


class SecretSettings(Section):
    cookie_key: str = Field("", description="HMAC key for signed cookies (device id); use file: or ${ENV}")
    totp_keys: dict[str, str] = Field(default_factory=dict,
                                      description="id -> base64 32-byte AES-GCM key for TOTP seeds")
    totp_current: str = ""
    audit_signing_key: str = Field("", description="PEM Ed25519 private key for ledger checkpoints")
    ip_pseudonym_key: str = ""


class SessionSettings(Section):
    cookie_name: str = "stepguard_session"
    cookie_domain: str = ""
    secure: Literal["auto", "always", "never"] = "auto"
    token_bytes: int = Field(32, ge=16, le=64)


class PortalSettings(Section):
    title: str = "Stepguard"
    protected_domains: list[str] = Field(default_factory=list,
                                         description="hosts (or *.suffix) allowed as return URLs")


class WebauthnSettings(Section):
    rp_id: str = "localhost"
    rp_name: str = "Stepguard"
    origins: list[str] = Field(default_factory=lambda: ["http://localhost:9091"])


class LocationEntry(Section):
    network: str
    country: str
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None

    _network = field_validator("network")(lambda v: _check_networks([v])[0])


class RiskSection(Section):
    weights: dict[str, int] = Field(default_factory=dict, description="signal name -> points")
    medium: int = Field(30, ge=0, le=100)
    high: int = Field(60, ge=0, le=100)
    critical: int = Field(90, ge=0, le=100)
    max_speed_kmh: float = 900.0
    trusted_networks: list[str] = Field(default_factory=list)
    geoip_database: str | None = None
    locations: list[LocationEntry] = Field(default_factory=list)

    _networks = field_validator("trusted_networks")(_check_networks)


class ThrottleSection(Section):
    base_delay: Duration = 1.0
    max_delay: Duration = 900.0
    hard_lock_after: int = Field(100, ge=1, le=100)
    ip_base_delay: Duration = 1.0
    ip_max_delay: Duration = 3600.0


class AuditSection(Section):
    pseudonymise_ips: bool = False
    retention: Duration | None = None


class ChallengeSection(Section):
    ttl: Duration = 600.0
    held_body_limit: int = Field(1_048_576, ge=0)
    grant_ttl: Duration = 300.0


class UpstreamRoute(Section):
    paths: list[str] = Field(default_factory=lambda: ["/**"])
    action: str = ""
    attributes: dict[str, str] = Field(default_factory=dict,
                                       description="attribute -> query:name | form:name | json:path")


class Upstream(Section):
    host: str
    url: str
    routes: list[UpstreamRoute] = Field(default_factory=list)


class StepguardConfig(Section):
    policy: str = "policy.yaml"
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    redis: RedisSettings = RedisSettings()
    secrets: SecretSettings = SecretSettings()
    session: SessionSettings = SessionSettings()
    portal: PortalSettings = PortalSettings()
    webauthn: WebauthnSettings = WebauthnSettings()
    risk: RiskSection = RiskSection()
    throttle: ThrottleSection = ThrottleSection()
    audit: AuditSection = AuditSection()
    challenge: ChallengeSection = ChallengeSection()
    upstreams: list[Upstream] = Field(default_factory=list)
