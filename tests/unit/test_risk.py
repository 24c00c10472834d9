"""The risk engine: each signal firing and not firing, score, level, settings."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from stepguard.core.context import RequestContext, SessionState, Subject
from stepguard.core.errors import BadRequest, ConfigError
from stepguard.core.risk import (
    DEFAULT_WEIGHTS,
    EMPTY_HISTORY,
    NO_RISK,
    SIGNALS,
    Location,
    RiskAssessment,
    RiskHistory,
    RiskSettings,
    Signal,
    assess,
    haversine_km,
    network_prefix,
    risk_level,
)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOUR = int(NOW // 3600) % 24  # 22
BERLIN = Location("DE", "Berlin", 52.52, 13.405)
HAMBURG = Location("DE", "Hamburg", 53.55, 9.99)
SAO_PAULO = Location("BR", "São Paulo", -23.55, -46.63)
SETTINGS = RiskSettings()
SUBJECT = Subject(id="u1")


def _context(**changes: Any) -> RequestContext:
    base = RequestContext(
        method="GET",
        host="app.example.com",
        path="/",
        client_ip="198.51.100.7",
        user_agent="Firefox/128",
        device_id="dev-1",
    )
    return replace(base, **changes)


def _session(**changes: Any) -> SessionState:
    base = SessionState(
        id="s1",
        subject=SUBJECT,
        created=NOW - 600,
        last_seen=NOW - 60,
        ip="198.51.100.7",
        user_agent="Firefox/128",
    )
    return replace(base, **changes)


# A returning user whose every habit matches the default request above.
HABITUAL = RiskHistory(
    known_devices=frozenset({"dev-1"}),
    known_networks=frozenset({"198.51.100.0/24"}),
    known_countries=frozenset({"DE"}),
    last_location=BERLIN,
    last_seen_at=NOW - 3600,
    recent_failures=(),
    hour_histogram=tuple(10 if hour == HOUR else 1 for hour in range(24)),
    amounts=(100.0, 120.0, 80.0, 110.0, 95.0),
)


def _assess(
    *,
    context: RequestContext | None = None,
    session: SessionState | None = None,
    history: RiskHistory = HABITUAL,
    location: Location | None = BERLIN,
    settings: RiskSettings = SETTINGS,
    now: float = NOW,
) -> RiskAssessment:
    return assess(
        context=context or _context(),
        session=session,
        history=history,
        location=location,
        settings=settings,
        now=now,
    )


def _fired(**kwargs: Any) -> tuple[str, ...]:
    return _assess(**kwargs).names


# --- baseline -------------------------------------------------------------------------------


def test_habitual_request_has_no_risk() -> None:
    assert _assess(session=_session()) == NO_RISK


def test_first_time_user_has_no_history_signals() -> None:
    result = _assess(history=EMPTY_HISTORY, location=SAO_PAULO, session=_session())
    assert result == NO_RISK


def test_no_session_and_no_location() -> None:
    assert _assess(session=None, location=None) == NO_RISK


# --- new_device -----------------------------------------------------------------------------


def test_new_device_fires_for_an_unknown_device() -> None:
    result = _assess(context=_context(device_id="dev-2"))
    assert result.signals == (
        Signal("new_device", 20, "This device has not been used with your account before."),
    )


def test_new_device_fires_when_the_device_id_is_missing() -> None:
    assert _fired(context=_context(device_id="")) == ("new_device",)


def test_new_device_needs_a_known_device() -> None:
    history = replace(HABITUAL, known_devices=frozenset())
    assert _fired(context=_context(device_id="dev-2"), history=history) == ()


# --- new_country ----------------------------------------------------------------------------


def test_new_country_fires_for_an_unknown_country() -> None:
    here = Location("FR", "Paris")  # no coordinates: no travel check
    result = _assess(location=here)
    assert result.names == ("new_country",)
    assert "FR" in result.reasons[0]


def test_new_country_is_case_insensitive() -> None:
    assert _fired(location=Location("de")) == ()


@pytest.mark.parametrize("location", [None, Location("")])
def test_new_country_needs_a_known_country_for_the_request(location: Location | None) -> None:
    assert "new_country" not in _fired(location=location)


def test_new_country_needs_known_countries() -> None:
    history = replace(HABITUAL, known_countries=frozenset(), last_location=None)
    assert _fired(location=Location("FR"), history=history) == ()


# --- new_network ----------------------------------------------------------------------------


def test_new_network_fires_for_an_unknown_network() -> None:
    result = _assess(context=_context(client_ip="203.0.113.9"))
    assert result.names == ("new_network",)
    assert result.signals[0].weight == 10


def test_new_network_same_slash_24_is_known() -> None:
    assert _fired(context=_context(client_ip="198.51.100.250")) == ()


def test_new_network_ipv6_same_slash_64_is_known() -> None:
    history = replace(HABITUAL, known_networks=frozenset({"2001:db8:1:2::/64"}))
    same = _context(client_ip="2001:db8:1:2:aaaa::1")
    other = _context(client_ip="2001:db8:1:3::1")
    assert _fired(context=same, history=history) == ()
    assert _fired(context=other, history=history) == ("new_network",)


@pytest.mark.parametrize("ip", ["", "not-an-ip"])
def test_new_network_fires_for_a_missing_or_invalid_ip(ip: str) -> None:
    assert _fired(context=_context(client_ip=ip)) == ("new_network",)


def test_new_network_needs_known_networks() -> None:
    history = replace(HABITUAL, known_networks=frozenset())
    assert _fired(context=_context(client_ip="203.0.113.9"), history=history) == ()


# --- impossible_travel ----------------------------------------------------------------------


def test_impossible_travel_fires_when_too_fast() -> None:
    history = replace(HABITUAL, known_countries=frozenset({"DE", "BR"}), last_seen_at=NOW - 2400)
    result = _assess(history=history, location=SAO_PAULO)
    assert result.names == ("impossible_travel",)
    assert result.signals[0].weight == 60
    assert result.reasons[0].startswith("You were in Berlin, DE 40 minutes ago; reaching São Paulo")
    assert result.level == "high"


def test_impossible_travel_allows_a_plausible_flight() -> None:
    history = replace(
        HABITUAL, known_countries=frozenset({"DE", "BR"}), last_seen_at=NOW - 14 * 3600
    )
    assert _fired(history=history, location=SAO_PAULO) == ()


def test_impossible_travel_ignores_nearby_places_even_at_zero_elapsed() -> None:
    history = replace(HABITUAL, last_seen_at=NOW)
    assert 200 < haversine_km(BERLIN, HAMBURG) < 300  # type: ignore[operator]
    assert _fired(history=history, location=HAMBURG) == ()
    tight = RiskSettings(travel_slack_km=100)
    assert _fired(history=history, location=HAMBURG, settings=tight) == ("impossible_travel",)


def test_impossible_travel_at_zero_or_negative_elapsed_time() -> None:
    paris = Location("DE", "Paris-ish", 48.85, 2.35)  # same known country, 880 km away
    for seen in (NOW, NOW + 600):
        history = replace(HABITUAL, last_seen_at=seen)
        result = _assess(history=history, location=paris)
        assert result.names == ("impossible_travel",)
        assert "less than a minute ago" in result.reasons[0]


@pytest.mark.parametrize(
    "change",
    [
        {"last_location": None},
        {"last_seen_at": None},
        {"last_location": Location("DE", "Berlin")},
    ],
)
def test_impossible_travel_needs_both_places_and_a_time(change: dict[str, Any]) -> None:
    history = replace(HABITUAL, known_countries=frozenset({"DE", "BR"}), last_seen_at=NOW - 60)
    assert _fired(history=replace(history, **change), location=SAO_PAULO) == ()


def test_impossible_travel_needs_current_coordinates() -> None:
    history = replace(HABITUAL, known_countries=frozenset({"DE", "BR"}), last_seen_at=NOW - 60)
    assert _fired(history=history, location=Location("BR", "São Paulo")) == ()
    assert _fired(history=history, location=None) == ()


def test_impossible_travel_speed_comes_from_settings() -> None:
    history = replace(
        HABITUAL, known_countries=frozenset({"DE", "BR"}), last_seen_at=NOW - 14 * 3600
    )
    slow = RiskSettings(max_speed_kmh=500)
    assert _fired(history=history, location=SAO_PAULO, settings=slow) == ("impossible_travel",)


def test_haversine_distance() -> None:
    assert haversine_km(BERLIN, BERLIN) == 0
    assert haversine_km(BERLIN, SAO_PAULO) == pytest.approx(10_250, rel=0.01)
    antipodes = haversine_km(Location("X", "", 0.0, 0.0), Location("Y", "", 0.0, 180.0))
    assert antipodes == pytest.approx(20_015, rel=0.001)
    assert haversine_km(BERLIN, Location("DE")) is None


# --- failed_attempts ------------------------------------------------------------------------


def test_failed_attempts_fires_at_the_burst() -> None:
    history = replace(HABITUAL, recent_failures=tuple(NOW - i * 60 for i in range(5)))
    result = _assess(history=history)
    assert result.names == ("failed_attempts",)
    assert result.reasons[0] == (
        "There were 5 failed attempts to sign in to your account in the last 15 minutes."
    )


def test_failed_attempts_below_the_burst_or_outside_the_window() -> None:
    four = replace(HABITUAL, recent_failures=tuple(NOW - i * 60 for i in range(4)))
    old = replace(HABITUAL, recent_failures=(NOW - 900, NOW - 1000, NOW - 1, NOW - 2, NOW - 3))
    assert _fired(history=four) == ()
    assert _fired(history=old) == ()


def test_failed_attempts_settings() -> None:
    history = replace(HABITUAL, recent_failures=(NOW - 1, NOW - 2000))
    settings = RiskSettings(failure_burst=2, failure_window=3600)
    assert _fired(history=history, settings=settings) == ("failed_attempts",)


# --- unusual_hour ---------------------------------------------------------------------------


def test_unusual_hour_fires_for_a_rare_hour() -> None:
    histogram = tuple(0 if hour in (21, 22, 23) else 10 for hour in range(24))
    result = _assess(history=replace(HABITUAL, hour_histogram=histogram))
    assert result.names == ("unusual_hour",)
    assert "22:00" in result.reasons[0]


def test_unusual_hour_neighbouring_hours_count() -> None:
    histogram = tuple(10 if hour == 23 else 0 for hour in range(24))
    assert _fired(history=replace(HABITUAL, hour_histogram=histogram)) == ()


def test_unusual_hour_wraps_around_midnight() -> None:
    histogram = tuple(30 if hour == 0 else 0 for hour in range(24))
    at_23 = NOW + 3600  # 23:13 UTC
    at_2 = NOW + 4 * 3600  # 02:13 UTC
    history = replace(HABITUAL, hour_histogram=histogram, last_seen_at=NOW)
    assert _fired(history=history, now=at_23) == ()
    assert _fired(history=history, now=at_2) == ("unusual_hour",)


def test_unusual_hour_needs_enough_samples() -> None:
    sparse = tuple(1 if hour < 19 else 0 for hour in range(24))  # 19 sign-ins, none near 22:00
    assert _fired(history=replace(HABITUAL, hour_histogram=sparse)) == ()
    assert _fired(history=replace(HABITUAL, hour_histogram=())) == ()
    fewer = RiskSettings(hour_min_samples=10)
    assert _fired(history=replace(HABITUAL, hour_histogram=sparse), settings=fewer) == (
        "unusual_hour",
    )


def test_unusual_hour_share_from_settings() -> None:
    histogram = tuple(1 if hour == HOUR else 40 for hour in range(24))  # share ≈ 0.0011
    history = replace(HABITUAL, hour_histogram=histogram)
    histogram_with_neighbours = tuple(
        1 if hour in (HOUR - 1, HOUR, HOUR + 1) else 40 for hour in range(24)
    )
    assert _fired(history=replace(HABITUAL, hour_histogram=histogram_with_neighbours)) == (
        "unusual_hour",
    )
    lenient = RiskSettings(hour_min_share=0.0)
    assert _fired(history=history, settings=lenient) == ()


def test_history_rejects_a_bad_histogram() -> None:
    with pytest.raises(ValueError):
        RiskHistory(hour_histogram=(1, 2, 3))


# --- session_ip_changed / session_ua_changed ------------------------------------------------


def test_session_ip_changed_fires_for_another_network() -> None:
    result = _assess(session=_session(ip="203.0.113.1"))
    assert result.names == ("session_ip_changed",)
    assert result.signals[0].weight == 25


def test_session_ip_changed_ignores_the_same_network() -> None:
    assert _fired(session=_session(ip="198.51.100.200")) == ()
    assert _fired(session=_session(ip="::ffff:198.51.100.7")) == ()


def test_session_ip_changed_ipv6_privacy_address() -> None:
    history = replace(HABITUAL, known_networks=frozenset({"2001:db8:0:1::/64"}))
    context = _context(client_ip="2001:db8:0:1:1111::1")
    assert _fired(context=context, history=history, session=_session(ip="2001:db8:0:1::abcd")) == ()
    moved = _session(ip="2001:db8:0:2::abcd")
    assert _fired(context=context, history=history, session=moved) == ("session_ip_changed",)


def test_session_ip_changed_when_the_request_has_no_ip() -> None:
    history = replace(HABITUAL, known_networks=frozenset())
    context = _context(client_ip="")
    assert _fired(context=context, history=history, session=_session()) == ("session_ip_changed",)


def test_session_ip_changed_needs_a_session_with_an_ip() -> None:
    other = _context(client_ip="203.0.113.1")
    history = replace(HABITUAL, known_networks=frozenset())
    assert _fired(context=other, history=history, session=None) == ()
    assert _fired(context=other, history=history, session=_session(ip="")) == ()


def test_session_ua_changed() -> None:
    assert _fired(session=_session(user_agent="curl/8")) == ("session_ua_changed",)
    assert _fired(session=_session(), context=_context(user_agent="")) == ("session_ua_changed",)
    assert _fired(session=_session(user_agent="")) == ()
    assert _fired(session=None, context=_context(user_agent="curl/8")) == ()


# --- unusual_amount -------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [5000, 5000.5, "5000", " 301 "])
def test_unusual_amount_fires_above_factor_times_median(amount: object) -> None:
    result = _assess(context=_context(attributes={"amount": amount}))
    assert result.names == ("unusual_amount",)
    assert "around 100" in result.reasons[0]


def test_unusual_amount_reason_formats_the_amount() -> None:
    result = _assess(context=_context(attributes={"amount": 12345.5}))
    assert result.reasons == (
        "This amount (12,345.50) is much larger than your usual amounts (around 100).",
    )


@pytest.mark.parametrize(
    "amount", [300, 50, 0, True, None, "lots", float("nan"), float("inf"), [1]]
)
def test_unusual_amount_quiet_for_usual_or_non_numeric(amount: object) -> None:
    assert _fired(context=_context(attributes={"amount": amount})) == ()


def test_unusual_amount_without_the_attribute() -> None:
    assert _fired(context=_context(attributes={"payee": "x"})) == ()


def test_unusual_amount_needs_enough_samples() -> None:
    history = replace(HABITUAL, amounts=(100.0, 100.0, 100.0, 100.0))
    context = _context(attributes={"amount": 10_000})
    assert _fired(context=context, history=history) == ()
    assert _fired(
        context=context, history=history, settings=RiskSettings(amount_min_samples=4)
    ) == ("unusual_amount",)


def test_unusual_amount_is_robust_to_one_outlier_and_constant_amounts() -> None:
    outlier = replace(HABITUAL, amounts=(100.0, 100.0, 100.0, 100.0, 1_000_000.0))
    assert _fired(context=_context(attributes={"amount": 1000}), history=outlier) == (
        "unusual_amount",
    )
    constant = replace(HABITUAL, amounts=(50.0,) * 10)
    assert _fired(context=_context(attributes={"amount": 60}), history=constant) == ()


def test_unusual_amount_factor_from_settings() -> None:
    context = _context(attributes={"amount": 250})
    assert _fired(context=context) == ()
    assert _fired(context=context, settings=RiskSettings(amount_factor=2.0)) == ("unusual_amount",)


# --- untrusted_network ----------------------------------------------------------------------

OFFICE = RiskSettings(
    trusted_networks=(
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("2001:db8::/32"),
    )
)


def test_untrusted_network_is_off_without_trusted_networks() -> None:
    assert _fired(context=_context(client_ip="203.0.113.1"), history=EMPTY_HISTORY) == ()


@pytest.mark.parametrize("ip", ["10.20.3.4", "2001:db8:ffff::1", "::ffff:10.20.0.1"])
def test_untrusted_network_quiet_inside(ip: str) -> None:
    context = _context(client_ip=ip)
    assert _fired(context=context, history=EMPTY_HISTORY, settings=OFFICE) == ()


@pytest.mark.parametrize("ip", ["10.21.0.1", "2001:db9::1", "", "garbage"])
def test_untrusted_network_fires_outside_or_unknown(ip: str) -> None:
    context = _context(client_ip=ip)
    result = _assess(context=context, history=EMPTY_HISTORY, settings=OFFICE)
    assert result.signals == (
        Signal("untrusted_network", 15, "This request does not come from a trusted network."),
    )


# --- score, level, order, settings ----------------------------------------------------------


def test_signals_in_stable_order_and_score_capped() -> None:
    history = replace(
        HABITUAL,
        recent_failures=(NOW,) * 5,
        hour_histogram=tuple(0 if hour in (21, 22, 23) else 10 for hour in range(24)),
        last_seen_at=NOW - 60,
    )
    context = _context(
        client_ip="203.0.113.1", device_id="dev-9", user_agent="curl/8", attributes={"amount": 1e6}
    )
    result = _assess(
        context=context, history=history, location=SAO_PAULO, session=_session(), settings=OFFICE
    )
    assert result.names == SIGNALS
    assert result.score == 100
    assert result.level == "critical"
    assert all(reason.endswith(".") for reason in result.reasons)


def test_score_is_the_sum_of_weights() -> None:
    context = _context(device_id="dev-2", client_ip="203.0.113.9")
    result = _assess(context=context)
    assert result.names == ("new_device", "new_network")
    assert result.score == 30
    assert result.level == "medium"


def test_weights_from_settings_and_zero_turns_a_signal_off() -> None:
    context = _context(device_id="dev-2", client_ip="203.0.113.9")
    settings = RiskSettings(weights={"new_device": 70, "new_network": 0})
    result = _assess(context=context, settings=settings)
    assert result.signals == (
        Signal("new_device", 70, "This device has not been used with your account before."),
    )
    assert result.level == "high"
    assert settings.weights["impossible_travel"] == DEFAULT_WEIGHTS["impossible_travel"]


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (0, "low"),
        (29, "low"),
        (30, "medium"),
        (59, "medium"),
        (60, "high"),
        (89, "high"),
        (90, "critical"),
        (100, "critical"),
    ],
)
def test_risk_level_boundaries(score: int, level: str) -> None:
    assert risk_level(score, SETTINGS.thresholds) == level


def test_thresholds_from_settings() -> None:
    settings = RiskSettings(thresholds={"medium": 10, "high": 20, "critical": 30})
    assert _assess(context=_context(device_id="dev-2"), settings=settings).level == "high"
    assert risk_level(9, settings.thresholds) == "low"


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"weights": {"new_devices": 10}}, "weights.new_devices"),
        ({"weights": {"new_device": -1}}, "weights.new_device"),
        ({"weights": {"new_device": 101}}, "weights.new_device"),
        ({"weights": {"new_device": 1.5}}, "weights.new_device"),
        ({"weights": {"new_device": True}}, "weights.new_device"),
        ({"thresholds": {"medium": 30, "high": 60}}, "thresholds"),
        ({"thresholds": {"medium": 60, "high": 30, "critical": 90}}, "thresholds"),
        ({"thresholds": {"medium": 0, "high": 30, "critical": 90}}, "thresholds"),
        ({"thresholds": {"medium": 10, "high": 30, "critical": 101}}, "thresholds"),
        ({"max_speed_kmh": 0}, "max_speed_kmh"),
        ({"failure_burst": 0}, "failure_burst"),
        ({"hour_min_share": 1.0}, "hour_min_share"),
        ({"amount_factor": 0.5}, "amount_factor"),
    ],
)
def test_settings_validation(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RiskSettings(**kwargs)
    assert [problem.path for problem in caught.value.problems] == [path]


def test_settings_collect_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        RiskSettings(weights={"x": 1, "y": 2}, failure_window=0, travel_slack_km=-1)
    assert len(caught.value.problems) == 4


def test_settings_defaults() -> None:
    assert dict(SETTINGS.weights) == dict(DEFAULT_WEIGHTS)
    assert set(DEFAULT_WEIGHTS) == set(SIGNALS)
    assert dict(SETTINGS.thresholds) == {"medium": 30, "high": 60, "critical": 90}
    assert SETTINGS.max_speed_kmh == 900.0
    assert (SETTINGS.failure_window, SETTINGS.failure_burst) == (900.0, 5)
    assert (SETTINGS.hour_min_samples, SETTINGS.hour_min_share) == (20, 0.02)
    assert (SETTINGS.amount_min_samples, SETTINGS.amount_factor) == (5, 3.0)
    assert SETTINGS.trusted_networks == ()


# --- network_prefix, Location ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "prefix"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        (" 192.0.2.77 ", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::", "2001:db8:1:2::/64"),
    ],
)
def test_network_prefix(ip: str, prefix: str) -> None:
    assert network_prefix(ip) == prefix


@pytest.mark.parametrize("ip", ["", "host.example", "192.0.2.256", "192.0.2.0/24"])
def test_network_prefix_refuses(ip: str) -> None:
    with pytest.raises(BadRequest):
        network_prefix(ip)


def test_location_place() -> None:
    assert BERLIN.place == "Berlin, DE"
    assert Location("DE").place == "DE"


@pytest.mark.parametrize(
    ("elapsed", "text"),
    [
        (59, "less than a minute"),
        (60, "1 minute"),
        (2400, "40 minutes"),
        (3600, "1 hour"),
        (3 * 3600 + 59, "3 hours"),
        (47 * 3600, "47 hours"),
        (2 * 86400, "2 days"),
    ],
)
def test_travel_reason_durations(elapsed: float, text: str) -> None:
    far = Location("US", "", 40.7, -74.0)  # ~6,400 km from Berlin
    history = replace(HABITUAL, known_countries=frozenset({"DE", "US"}), last_seen_at=NOW - elapsed)
    settings = RiskSettings(max_speed_kmh=1.0)
    result = _assess(history=history, location=far, settings=settings)
    assert result.names == ("impossible_travel",)
    assert f"Berlin, DE {text} ago; reaching US (" in result.reasons[0]
