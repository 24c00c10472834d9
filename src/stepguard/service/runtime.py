"""Everything a running Stepguard needs, built once from a validated configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
from sqlalchemy.engine import make_url

from stepguard.audit.ledger import AuditEvent, session_ref
from stepguard.audit.summary import AllowSummary
from stepguard.audit.writer import AuditWriter
from stepguard.config.load import Loaded
from stepguard.config.schema import RedisSettings, StepguardConfig, StoreSettings
from stepguard.core.errors import ConfigError, Problem, StoreUnavailable
from stepguard.core.policy import Policy
from stepguard.core.risk import Location, RiskSettings
from stepguard.core.throttle import ThrottleSettings
from stepguard.factors.secretbox import Keyring
from stepguard.factors.webauthn import RelyingParty
from stepguard.notifications.notifier import Notifier
from stepguard.notifications.webhook import DeadLetter
from stepguard.service import audit_spill
from stepguard.service.geo import ChainLocator, Locator, MaxMindLocator, StaticLocator
from stepguard.service.health import RedisWatch
from stepguard.service.last_seen import LastSeenWriter
from stepguard.service.observe import Observer, configure_logging
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.dead_letters import DeadLetters
from stepguard.storage.interfaces import Store
from stepguard.storage.migrate import upgrade
from stepguard.storage.policy_versions import PolicyVersion, PolicyVersions
from stepguard.storage.redis_throttle import RedisThrottle, connect
from stepguard.storage.sql import SqlStore

log = logging.getLogger("stepguard")


class Clock(Protocol):
    def __call__(self) -> float: ...


@dataclass
class Runtime:
    """The shell around the core: config, policy, store, keys, audit writer and the clock."""

    config: StepguardConfig
    policy: Policy
    store: Store
    audit_log: SqlAuditLog
    audit: AuditWriter
    last_seen: LastSeenWriter
    keyring: Keyring
    rp: RelyingParty
    risk: RiskSettings
    locator: Locator
    cookie_key: bytes
    ip_key: bytes | None
    clock: Callable[[], float] = time.time
    observer: Observer = field(default_factory=Observer)
    password_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(2))
    redis_watch: RedisWatch | None = None
    spill_dir: Path | None = None
    config_dir: Path = Path()
    replayed: list[Path] = field(default_factory=list)
    notifier: Notifier | None = None
    policy_version: PolicyVersion | None = None
    _refs: dict[str, str] = field(default_factory=dict, repr=False)

    def now(self) -> float:
        return self.clock()

    def session_ref(self, session_id: str) -> str:
        """The session's keyed reference for the ledger (memoised: one HMAC per session)."""
        if not session_id:
            return ""
        ref = self._refs.get(session_id)
        if ref is None:
            if len(self._refs) >= 100_000:
                self._refs.clear()
            ref = self._refs[session_id] = session_ref(session_id, key=self.cookie_key)
        return ref

    def record(self, **fields: object) -> None:
        """Queue one audit entry (never dropped: the writer blocks when its queue is full)."""
        session = fields.pop("session_id", "")
        event = AuditEvent(at=self.now(), session=self.session_ref(str(session)), **fields)  # type: ignore[arg-type]
        self.audit.submit(event)
        self.observer.event(event)
        if self.notifier is not None:
            self.notifier.offer(event)

    def require_stores(self) -> None:
        """Raise `StoreUnavailable` while a store other than the SQL one is known to be down
        (the SQL store needs no check: each decision reads its session's versions first)."""
        if self.redis_watch is not None:
            self.redis_watch.require()

    def close(self) -> None:
        """Write the audit queue (waiting `audit.shutdown_timeout`), spill what is left, close."""
        try:
            if self.notifier is not None:
                self.notifier.close(timeout=self.config.audit.shutdown_timeout)
            self.last_seen.close()
            self._close_audit()
            audit_spill.forget(self.replayed)
        finally:
            if self.redis_watch is not None:
                self.redis_watch.close()
            self.store.close()

    def _close_audit(self) -> None:
        try:
            self.audit.close(timeout=self.config.audit.shutdown_timeout)
        except StoreUnavailable:
            if self.spill_dir is None:
                raise
            audit_spill.spill(self.audit.unwritten(), self.spill_dir)


def build_runtime(loaded: Loaded, *, clock: Callable[[], float] = time.time,
                  migrate: bool | None = None, store: Store | None = None,
                  audit_log: SqlAuditLog | None = None) -> Runtime:
    """Open the store (migrating SQLite automatically), keys and audit writer. A given `store`
    and `audit_log` (e.g. `MemoryStore` and `MemoryAuditLog` for unit tests) replace the
    configured SQL store."""
    config = loaded.config
    if not structlog.is_configured():
        configure_logging(level=config.server.log_level, json=config.server.log_format == "json")
    watch = None
    if store is None:
        sql_store = _sql_store(loaded, migrate)
        watch = _use_redis(sql_store, config) if config.redis.url else None
        store, audit_log = sql_store, audit_log or SqlAuditLog(sql_store.engine)
    assert audit_log is not None, "a given store needs its audit log"
    runtime = Runtime(
        config=config, policy=loaded.policy, store=store, audit_log=audit_log,
        audit=AuditWriter(audit_log, summary=_summary(config), clock=clock),
        last_seen=LastSeenWriter(store.sessions),
        keyring=_keyring(config), rp=_rp(config),
        risk=_risk(config), locator=_locator(config, loaded.path.parent),
        cookie_key=_key(config.secrets.cookie_key, "secrets.cookie_key"),
        ip_key=_key(config.secrets.ip_pseudonym_key, "secrets.ip_pseudonym_key")
        if config.audit.pseudonymise_ips else None,
        clock=clock, redis_watch=watch,
        spill_dir=loaded.path.parent / config.audit.spill_dir, config_dir=loaded.path.parent,
    )
    runtime.observer.debug = config.server.log_level == "debug"
    if loaded.policy.report:
        log.warning("the policy is in report mode: every request passes; would-be step-ups and "
                    "denies are only audited and counted (docs/operations.md)")
    runtime.replayed = audit_spill.replay(loaded.path.parent / config.audit.spill_dir,
                                          runtime.audit)
    runtime.notifier = _notifier(runtime)
    engine = getattr(store, "engine", None)
    if engine is not None:  # each distinct policy text is numbered (admin page: version, diff)
        runtime.policy_version = PolicyVersions(engine).record(
            loaded.policy_path.read_text(), source=loaded.policy_path.name, now=clock())
    return runtime


def _notifier(runtime: Runtime) -> Notifier | None:
    """The notifier when any channel is configured (see docs/operations.md)."""
    settings = runtime.config.notifications
    if not (settings.email.smtp_host or settings.webhooks or settings.syslog.address
            or settings.syslog.file):
        return None
    if settings.syslog.file:
        path = runtime.config_dir / settings.syslog.file
        settings = settings.model_copy(
            update={"syslog": settings.syslog.model_copy(update={"file": str(path)})})
    engine = getattr(runtime.store, "engine", None)
    letters = DeadLetters(engine) if engine is not None else None

    def email_of(user_id: str) -> str:
        user = runtime.store.users.get(user_id)
        return user.email if user is not None and not user.disabled else ""

    def dead_letter(letter: DeadLetter) -> None:
        if letters is not None:
            letters.add(letter, now=runtime.now())
        runtime.record(kind="admin", outcome="notification_failed",
                       detail={"channel": "webhook", "target": letter.target,
                               "notice": letter.event, "attempts": letter.attempts,
                               "error": letter.last_error})

    return Notifier(settings, email_of=email_of, portal=runtime.config.server.public_url,
                    dead_letter=dead_letter, registry=runtime.observer.registry,
                    clock=runtime.clock)


def _sql_store(loaded: Loaded, migrate: bool | None) -> SqlStore:
    config = loaded.config
    url = store_url(loaded)
    if migrate if migrate is not None else (config.store.auto_migrate and url.startswith("sqlite")):
        upgrade(url)
    bounded = _with_timeouts(url, config.store)
    return SqlStore.from_url(bounded, throttle=_throttle(config),
                             connect_timeout=config.store.connect_timeout)


def _summary(config: StepguardConfig) -> AllowSummary | None:
    if config.audit.allows == "every_request":
        return None
    ip_key = (_key(config.secrets.ip_pseudonym_key, "secrets.ip_pseudonym_key")
              if config.audit.pseudonymise_ips else None)
    return AllowSummary(config.audit.summary_interval, ip_key=ip_key)


def _with_timeouts(url: str, store: StoreSettings) -> str:
    """PostgreSQL: bound every statement and every silent network loss (libpq parameters);
    values already in the URL win."""
    if not url.startswith("postgresql"):
        return url
    parsed = make_url(url)
    statement_ms = max(1, int(store.statement_timeout * 1000))
    wanted = {
        "options": f"-c statement_timeout={statement_ms} "
                   f"-c idle_in_transaction_session_timeout={max(60_000, 4 * statement_ms)}",
        "tcp_user_timeout": str(max(1, int(store.tcp_user_timeout * 1000))),
        "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    query = {**wanted, **dict(parsed.query)}
    return parsed.set(query=query).render_as_string(hide_password=False)


def _use_redis(store: SqlStore, config: StepguardConfig) -> RedisWatch:
    """Throttle counters in Redis, and a watch that fails requests closed while it is down."""
    r: RedisSettings = config.redis
    client = connect(r.url, connect_timeout=r.connect_timeout, socket_timeout=r.socket_timeout,
                     retries=r.retries, health_check_interval=r.health_check_interval)
    store.throttle = RedisThrottle(client, _throttle(config), prefix=r.key_prefix)  # type: ignore[assignment]
    watch_client = connect(r.url, connect_timeout=r.connect_timeout,
                           socket_timeout=r.health_check_interval + r.socket_timeout, retries=0,
                           health_check_interval=0)
    return RedisWatch(watch_client, interval=r.health_check_interval,
                      key_prefix=r.key_prefix).start()


def store_url(loaded: Loaded) -> str:
    """The configured store URL, a relative SQLite path resolved against the config file."""
    return _store_url(loaded.config.store.url, loaded.path.parent)


def _store_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        path = base / url[len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return url


def _throttle(config: StepguardConfig) -> ThrottleSettings:
    t = config.throttle
    return ThrottleSettings(base_delay=t.base_delay, max_delay=t.max_delay,
                            hard_limit=t.hard_lock_after, ip_forget_after=t.ip_forget_after,
                            free_failures=t.free_failures)


def _key(value: str, path: str) -> bytes:
    if not value:
        raise ConfigError([Problem("", path, "expected a secret key (use file: or ${ENV}); "
                                             "generate one with `stepguard keys generate`")])
    return hashlib.sha256(value.encode()).digest()


def _keyring(config: StepguardConfig) -> Keyring:
    keys, current = config.secrets.totp_keys, config.secrets.totp_current
    if not keys or current not in keys:
        raise ConfigError([Problem("", "secrets.totp_keys", "expected at least one base64 32-byte "
                                   "key and secrets.totp_current naming one of them")])
    return Keyring.from_config(keys, current)


def _rp(config: StepguardConfig) -> RelyingParty:
    w = config.webauthn
    return RelyingParty(w.rp_id, w.rp_name, tuple(w.origins))


def _risk(config: StepguardConfig) -> RiskSettings:
    r = config.risk
    return RiskSettings(
        weights=r.weights, thresholds={"medium": r.medium, "high": r.high, "critical": r.critical},
        max_speed_kmh=r.max_speed_kmh,
        trusted_networks=tuple(ipaddress.ip_network(n, strict=False) for n in r.trusted_networks),
    )


def _locator(config: StepguardConfig, base: Path) -> Locator:
    static = StaticLocator([(e.network, Location(e.country, e.city, e.latitude, e.longitude))
                            for e in config.risk.locations])
    if config.risk.geoip_database:
        return ChainLocator([static, MaxMindLocator(base / config.risk.geoip_database)])
    return static


def new_token() -> str:
    """An opaque session token: 256 bits from `secrets`."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_urlsafe(16)


def sign(key: bytes, value: str) -> str:
    """`value.mac` — a value that the client holds but cannot forge (the device cookie)."""
    mac = hmac.new(key, value.encode(), hashlib.sha256).digest()[:16]
    return f"{value}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def unsign(key: bytes, signed: str | None) -> str:
    """The value of a signed string, or "" when missing or forged (constant-time check)."""
    if not signed or "." not in signed:
        return ""
    value = signed.rsplit(".", 1)[0]
    return value if hmac.compare_digest(sign(key, value), signed) else ""
