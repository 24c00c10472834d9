"""The risk engine (pure): signals from the request and the user's history, a score and a level."""

from __future__ import annotations

import functools
import ipaddress
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from stepguard.core.context import RequestContext, SessionState
from stepguard.core.errors import BadRequest, ConfigError, Problem


@dataclass(frozen=True, slots=True)
class Signal:
    """One risk observation: name, weight (points of the 0–100 score) and a plain reason."""

    name: str
    weight: int
    reason: str


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    """Score 0–100 and level (`low`/`medium`/`high`/`critical`) computed from the signals."""

    score: int = 0
    level: str = "low"
    signals: tuple[Signal, ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(signal.reason for signal in self.signals)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(signal.name for signal in self.signals)


NO_RISK = RiskAssessment()


# --- The inputs: where the request comes from, and what the user usually does -----------------


@dataclass(frozen=True, slots=True)
class Location:
    """Where an IP address is, as far as a lookup knows: ISO 3166 country, city, coordinates."""

    country: str
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None

    @property
    def place(self) -> str:
        """Plain-language place for reasons: `Berlin, DE`, or `DE` without a city."""
        return f"{self.city}, {self.country}" if self.city and self.country else self.country


@dataclass(frozen=True, slots=True)
class RiskHistory:
    """The per-user snapshot storage loads before a decision (an empty one is a first-time user).

    `known_networks` holds `network_prefix()` values; `recent_failures`, `last_seen_at` are epoch
    seconds; `hour_histogram` has 24 counts of past sign-ins/requests by UTC hour (or is empty).
    """

    known_devices: frozenset[str] = frozenset()
    known_networks: frozenset[str] = frozenset()
    known_countries: frozenset[str] = frozenset()
    last_location: Location | None = None
    last_seen_at: float | None = None
    recent_failures: tuple[float, ...] = ()
    hour_histogram: tuple[int, ...] = ()
    amounts: tuple[float, ...] = ()
    trusted: frozenset[str] = frozenset()  # "<factor>|device|<id>", "<factor>|net|<prefix>"

    def __post_init__(self) -> None:
        if self.hour_histogram and len(self.hour_histogram) != 24:
            raise ValueError("hour_histogram must hold 24 counts (one per UTC hour) or none")


EMPTY_HISTORY = RiskHistory()


def network_prefix(ip: str) -> str:
    """The network an address belongs to for `new_network`: IPv4 /24, IPv6 /64, as text.

    IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) count as IPv4. Raise `BadRequest` for
    anything that is not an IP address.
    """
    prefix = _prefix_or_empty(ip)
    if not prefix:
        raise BadRequest("not an IP address")
    return prefix


@functools.lru_cache(maxsize=4096)
def _prefix_or_empty(ip: str) -> str:
    """`network_prefix(ip)`, or "" when `ip` is not an address (cached: it runs per request)."""
    address = parse_ip(ip)
    if address is None:
        return ""
    if address.version == 4:
        return f"{ipaddress.IPv4Address(int(address) & ~0xFF)}/24"
    return f"{ipaddress.IPv6Address(int(address) >> 64 << 64)}/64"


# --- Settings: every default in one place ------------------------------------------------------

SIGNALS: tuple[str, ...] = (
    "new_device",
    "new_country",
    "new_network",
    "impossible_travel",
    "failed_attempts",
    "unusual_hour",
    "session_ip_changed",
    "session_ua_changed",
    "unusual_amount",
    "untrusted_network",
)
"""Every signal the engine knows, in the order an assessment reports them."""

FADING: frozenset[str] = frozenset({"impossible_travel", "failed_attempts"})
"""The signals that end by themselves as time passes (the failures leave their window, the
speed needed to have travelled falls). Every other signal holds until its inputs change, or,
for `unusual_hour`, until the UTC hour does."""

DEFAULT_WEIGHTS: Mapping[str, int] = MappingProxyType(
    {
        "new_device": 20,
        "new_country": 25,
        "new_network": 10,
        "impossible_travel": 60,
        "failed_attempts": 30,
        "unusual_hour": 10,
        "session_ip_changed": 25,
        "session_ua_changed": 20,
        "unusual_amount": 25,
        "untrusted_network": 15,
    }
)
DEFAULT_THRESHOLDS: Mapping[str, int] = MappingProxyType({"medium": 30, "high": 60, "critical": 90})
RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high", "critical")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """Weights, thresholds and tuning of the risk engine; the config schema reads its defaults.

    - `weights` may name only some signals (the rest keep their defaults); 0 turns a signal off.
    - `thresholds` gives the lowest score of `medium`, `high` and `critical`.
    - `travel_slack_km` absorbs the inaccuracy of IP location (mobile and ISP ranges are often
      placed several hundred km off), so nearby lookups seconds apart are not impossible travel.
    - An amount is unusual above `amount_factor` × the median of the user's recent amounts: the
      median ignores a few outliers, while a spread rule such as median + k·MAD would fire on
      every change for a user who always pays the same sum.
    - An hour is unusual when the user's sign-ins in that UTC hour and the hour either side make
      up less than `hour_min_share` of all (the neighbours absorb "usually 9:00, today 8:55").
    - `trusted_networks` empty turns `untrusted_network` off.
    """

    weights: Mapping[str, int] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    thresholds: Mapping[str, int] = field(default_factory=lambda: DEFAULT_THRESHOLDS)
    max_speed_kmh: float = 900.0
    travel_slack_km: float = 500.0
    failure_window: float = 900.0
    failure_burst: int = 5
    hour_min_samples: int = 20
    hour_min_share: float = 0.02
    amount_min_samples: int = 5
    amount_factor: float = 3.0
    trusted_networks: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        problems = _weight_problems(self.weights) + _threshold_problems(self.thresholds)
        problems += _tuning_problems(self)
        if problems:
            raise ConfigError(problems)
        merged = MappingProxyType({**DEFAULT_WEIGHTS, **self.weights})
        object.__setattr__(self, "weights", merged)
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))


def _weight_problems(weights: Mapping[str, int]) -> list[Problem]:
    problems = []
    for name, weight in weights.items():
        if name not in DEFAULT_WEIGHTS:
            problems.append(Problem("", f"weights.{name}", f"unknown signal (known: {_known()})"))
        elif isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            problems.append(Problem("", f"weights.{name}", "must be a whole number from 0 to 100"))
    return problems


def _known() -> str:
    return ", ".join(SIGNALS)


def _threshold_problems(thresholds: Mapping[str, int]) -> list[Problem]:
    if set(thresholds) != {"medium", "high", "critical"}:
        return [Problem("", "thresholds", "must name exactly medium, high and critical")]
    values = [thresholds[name] for name in RISK_LEVELS[1:]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100 for v in values):
        return [Problem("", "thresholds", "each threshold must be a whole number from 1 to 100")]
    if not values[0] < values[1] < values[2]:
        return [Problem("", "thresholds", "must rise: medium < high < critical")]
    return []


def _tuning_problems(settings: RiskSettings) -> list[Problem]:
    checks = {
        "max_speed_kmh": settings.max_speed_kmh > 0,
        "travel_slack_km": settings.travel_slack_km >= 0,
        "failure_window": settings.failure_window > 0,
        "failure_burst": settings.failure_burst >= 1,
        "hour_min_samples": settings.hour_min_samples >= 1,
        "hour_min_share": 0 <= settings.hour_min_share < 1,
        "amount_min_samples": settings.amount_min_samples >= 1,
        "amount_factor": settings.amount_factor >= 1,
    }
    return [Problem("", name, "out of range") for name, ok in checks.items() if not ok]


# --- The assessment ----------------------------------------------------------------------------


class _Facts:
    """Everything one assessment looks at, bundled so each signal is a one-argument function
    (a plain slotted class: built once per request, a frozen dataclass costs several times more)."""

    __slots__ = ("context", "history", "location", "now", "session", "settings")

    def __init__(self, context: RequestContext, session: SessionState | None,
                 history: RiskHistory, location: Location | None, settings: RiskSettings,
                 now: float) -> None:
        self.context, self.session, self.history = context, session, history
        self.location, self.settings, self.now = location, settings, now


def assess(
    *,
    context: RequestContext,
    session: SessionState | None,
    history: RiskHistory,
    location: Location | None,
    settings: RiskSettings,
    now: float,
) -> RiskAssessment:
    """Compute every signal for this request; score = min(100, sum of fired weights).

    `location` is where `context.client_ip` is (None when unknown). Signals come out in the order
    of `SIGNALS`; a signal whose weight is 0 is off and never reported.
    """
    facts = _Facts(context, session, history, location, settings, now)
    signals = []
    weights = settings.weights
    for name, check in _CHECKS:
        weight = weights[name]
        reason = check(facts) if weight > 0 else None
        if reason is not None:
            signals.append(Signal(name, weight, reason))
    if not signals:  # the ordinary request: score 0, which is `low` (thresholds are ≥ 1)
        return NO_RISK
    score = min(100, sum(signal.weight for signal in signals))
    return RiskAssessment(score, risk_level(score, settings.thresholds), tuple(signals))


def risk_level(score: int, thresholds: Mapping[str, int]) -> str:
    """`low` below `medium`, then the highest threshold the score reaches."""
    level = "low"
    for name in RISK_LEVELS[1:]:
        if score >= thresholds[name]:
            level = name
    return level


def haversine_km(a: Location, b: Location) -> float | None:
    """Great-circle distance in km between two places; None when either lacks coordinates."""
    if a.latitude is None or a.longitude is None or b.latitude is None or b.longitude is None:
        return None
    lat1, lon1, lat2, lon2 = map(math.radians, (a.latitude, a.longitude, b.latitude, b.longitude))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


_EARTH_RADIUS_KM = 6371.0088


def _new_device(facts: _Facts) -> str | None:
    """Fires only for a user with known devices (a first-time user has nothing to compare).

    A request without a device id counts as an unknown device: otherwise dropping the device
    cookie would hide the signal.
    """
    known = facts.history.known_devices
    if not known or facts.context.device_id in known:
        return None
    return "This device has not been used with your account before."


def _new_country(facts: _Facts) -> str | None:
    """Fires only with a known country for this request and a user with known countries."""
    known = {country.upper() for country in facts.history.known_countries}
    country = facts.location.country.upper() if facts.location else ""
    if not known or not country or country in known:
        return None
    return f"Your account has not been used from {country} before."


def _new_network(facts: _Facts) -> str | None:
    """Fires only for a user with known networks; a missing or invalid client IP is unknown."""
    known = facts.history.known_networks
    if not known or _prefix_or_empty(facts.context.client_ip) in known:
        return None
    return "This network has not been used with your account before."


def _impossible_travel(facts: _Facts) -> str | None:
    """Distance from the last location beyond what `max_speed_kmh` covers in the time since.

    Needs coordinates for both places and the time of the last one; a time in the future counts
    as no time elapsed. `travel_slack_km` absorbs the inaccuracy of IP location.
    """
    last, here, seen = facts.history.last_location, facts.location, facts.history.last_seen_at
    if last is None or here is None or seen is None:
        return None
    distance = haversine_km(last, here)
    elapsed = max(0.0, facts.now - seen)
    reach = facts.settings.max_speed_kmh * elapsed / 3600 + facts.settings.travel_slack_km
    if distance is None or distance <= reach:
        return None
    return (
        f"You were in {last.place or 'another place'} {_duration(elapsed)} ago; "
        f"reaching {here.place or 'this place'} ({distance:,.0f} km) that fast is not possible."
    )


def _failed_attempts(facts: _Facts) -> str | None:
    """`failure_burst` or more failed attempts within the last `failure_window` seconds."""
    since = facts.now - facts.settings.failure_window
    count = sum(1 for at in facts.history.recent_failures if at > since)
    if count < facts.settings.failure_burst:
        return None
    window = _duration(facts.settings.failure_window)
    return f"There were {count} failed attempts to sign in to your account in the last {window}."


def _unusual_hour(facts: _Facts) -> str | None:
    """Rare UTC hour (with its neighbours) once the user has `hour_min_samples` sign-ins."""
    histogram = facts.history.hour_histogram
    total = sum(histogram)
    if not histogram or total < facts.settings.hour_min_samples:
        return None
    hour = int(facts.now // 3600) % 24
    near = sum(histogram[(hour + offset) % 24] for offset in (-1, 0, 1))
    if near / total >= facts.settings.hour_min_share:
        return None
    return f"Your account is rarely used at this time of day ({hour:02d}:00–{hour:02d}:59 UTC)."


def _session_ip_changed(facts: _Facts) -> str | None:
    """The session's network (IPv4 /24, IPv6 /64) differs from this request's.

    Comparing networks, not addresses, spares carrier NAT pools and IPv6 privacy addresses.
    A session without a recorded IP has nothing to compare; a request without one has changed.
    """
    session = facts.session
    if session is None or not session.ip:
        return None
    if _prefix_or_empty(session.ip) == _prefix_or_empty(facts.context.client_ip):
        return None
    return "Your session is now being used from a different network than where it started."


def _session_ua_changed(facts: _Facts) -> str | None:
    """The browser identification differs from the one the session started with."""
    session = facts.session
    if session is None or not session.user_agent:
        return None
    if session.user_agent == facts.context.user_agent:
        return None
    return "Your session is now being used from a different browser than where it started."


def _unusual_amount(facts: _Facts) -> str | None:
    """Amount above `amount_factor` × the median of at least `amount_min_samples` past amounts."""
    amount = amount_of(facts.context)
    amounts = facts.history.amounts
    if amount is None or len(amounts) < facts.settings.amount_min_samples:
        return None
    usual = statistics.median(abs(value) for value in amounts)
    if abs(amount) <= facts.settings.amount_factor * usual:
        return None
    return (
        f"This amount ({_amount_text(amount)}) is much larger than your usual amounts "
        f"(around {_amount_text(usual)})."
    )


def _untrusted_network(facts: _Facts) -> str | None:
    """Fires when trusted networks are configured and the client IP is in none of them.

    A missing or invalid client IP cannot be shown to be trusted, so it fires (fail closed).
    """
    trusted = facts.settings.trusted_networks
    if not trusted:
        return None
    address = parse_ip(facts.context.client_ip)
    if address is not None and any(address in network for network in trusted):
        return None
    return "This request does not come from a trusted network."


_CHECKS: tuple[tuple[str, Callable[[_Facts], str | None]], ...] = (
    ("new_device", _new_device),
    ("new_country", _new_country),
    ("new_network", _new_network),
    ("impossible_travel", _impossible_travel),
    ("failed_attempts", _failed_attempts),
    ("unusual_hour", _unusual_hour),
    ("session_ip_changed", _session_ip_changed),
    ("session_ua_changed", _session_ua_changed),
    ("unusual_amount", _unusual_amount),
    ("untrusted_network", _untrusted_network),
)


# --- Small helpers -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address (IPv4-mapped IPv6 unwrapped to IPv4), or None when `text` is not one.
    Cached: the same few client addresses come with every request (addresses are immutable)."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def amount_of(context: RequestContext) -> float | None:
    """The request's `amount` attribute as a finite number (None when absent or not one): what
    `unusual_amount` judges and what an allowed action adds to the user's baseline."""
    return _number(context.attributes.get("amount"))


def _number(value: object) -> float | None:
    """A finite number from an int, float or numeric text; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _amount_text(amount: float) -> str:
    return f"{amount:,.2f}".removesuffix(".00")


def _duration(seconds: float) -> str:
    """`40 minutes`, `3 hours`, `2 days` (rounded down); under a minute: `less than a minute`."""
    if seconds < 60:
        return "less than a minute"
    if seconds < 3600:
        return _count(int(seconds // 60), "minute")
    if seconds < 2 * 86400:
        return _count(int(seconds // 3600), "hour")
    return _count(int(seconds // 86400), "day")


def _count(count: int, unit: str) -> str:
    return f"{count} {unit}{'' if count == 1 else 's'}"
