"""Location lookup: a real MaxMind database built in the test, static tables, chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from stepguard.core.errors import ConfigError
from stepguard.core.risk import Location
from stepguard.service.geo import ChainLocator, Locator, MaxMindLocator, StaticLocator

LONDON_RECORD = {
    "city": {"geoname_id": 2643743, "names": {"en": "London", "de": "London"}},
    "continent": {"code": "EU", "names": {"en": "Europe"}},
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "location": {"accuracy_radius": 10, "latitude": 51.5142, "longitude": -0.0931},
}
BERLIN_RECORD = {
    "city": {"names": {"en": "Berlin"}},
    "country": {"iso_code": "DE"},
    "location": {"latitude": 52.5196, "longitude": 13.4069},
}
IPV6_RECORD = {
    "country": {"iso_code": "jp"},
    "location": {"latitude": 35.69, "longitude": 139.69},
}


def _write(path: Path, database_type: str, entries: list[tuple[list[str], Any]]) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type)
    for networks, record in entries:
        writer.insert_network(IPSet(networks), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geo") / "GeoLite2-City.mmdb"
    return _write(
        path,
        "GeoLite2-City",
        [
            (["81.2.69.0/24"], LONDON_RECORD),
            (["81.2.70.0/24"], BERLIN_RECORD),
            (["2001:db8:1::/48"], IPV6_RECORD),
            (["192.0.2.0/28"], {"registered_country": {"iso_code": "US"}}),
            (["192.0.2.16/28"], {"location": {"latitude": 10.0, "longitude": 20.0}}),
            (["192.0.2.32/28"], {"country": {"iso_code": "FR"}, "location": {"latitude": 200.0}}),
            (["192.0.2.48/28"], {"city": {"names": {"fr": "Paris"}}}),
            (["192.0.2.64/28"], "not a record"),
        ],
    )


@pytest.fixture(scope="module")
def city(city_db: Path) -> Any:
    with MaxMindLocator(city_db) as locator:
        yield locator


def test_maxmind_city_record(city: MaxMindLocator) -> None:
    assert city.locate("81.2.69.160") == Location("GB", "London", 51.5142, -0.0931)
    assert city.locate("81.2.70.1") == Location("DE", "Berlin", 52.5196, 13.4069)


def test_maxmind_ipv6_and_mapped_ipv4(city: MaxMindLocator) -> None:
    assert city.locate("2001:db8:1:ffff::1") == Location("JP", "", 35.69, 139.69)
    assert city.locate("::ffff:81.2.69.160") == Location("GB", "London", 51.5142, -0.0931)


def test_maxmind_falls_back_to_registered_country(city: MaxMindLocator) -> None:
    assert city.locate("192.0.2.1") == Location("US")


def test_maxmind_coordinates_without_country(city: MaxMindLocator) -> None:
    assert city.locate("192.0.2.17") == Location("", "", 10.0, 20.0)


def test_maxmind_drops_invalid_coordinates(city: MaxMindLocator) -> None:
    assert city.locate("192.0.2.33") == Location("FR")


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",  # not in the database
        "2001:db8:2::1",
        "192.0.2.49",  # neither country nor coordinates
        "192.0.2.65",  # not a map
        "",
        "not-an-ip",
        "81.2.69.160/24",
        "999.1.1.1",
        "\x00",
    ],
)
def test_maxmind_unknown_or_bad_input_gives_none(city: MaxMindLocator, ip: str) -> None:
    assert city.locate(ip) is None


def test_maxmind_country_database(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "GeoLite2-Country.mmdb",
        "GeoLite2-Country",
        [(["203.0.113.0/24"], {"country": {"iso_code": "NZ", "names": {"en": "New Zealand"}}})],
    )
    with MaxMindLocator(path) as locator:
        assert locator.locate("203.0.113.5") == Location("NZ")


def test_maxmind_ipv4_only_database_and_ipv6_query(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "NZ"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    with MaxMindLocator(tmp_path / "v4.mmdb") as locator:
        assert locator.locate("203.0.113.5") == Location("NZ")
        assert locator.locate("2001:db8::1") is None


@pytest.mark.parametrize("content", [None, b"", b"this is not a MaxMind database" * 10])
def test_maxmind_missing_or_corrupt_file_is_a_config_error(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "broken.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        MaxMindLocator(path)
    assert caught.value.problems[0].path == "geo.database"


# --- StaticLocator --------------------------------------------------------------------------

OFFICE = Location("DE", "Munich office", 48.14, 11.58)
FLOOR = Location("DE", "Munich 3rd floor", 48.14, 11.58)
VPN = Location("NL", "Amsterdam VPN")


@pytest.fixture
def static() -> StaticLocator:
    return StaticLocator(
        [
            ("10.0.0.0/8", VPN),
            ("10.20.0.0/16", OFFICE),
            ("10.20.3.0/24", FLOOR),
            ("2001:db8::/32", VPN),
            ("2001:db8:20::/48", OFFICE),
            ("192.0.2.9", FLOOR),
        ]
    )


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.20.3.4", FLOOR),
        ("10.20.4.4", OFFICE),
        ("10.99.0.1", VPN),
        ("::ffff:10.20.3.4", FLOOR),
        ("2001:db8:20:1::1", OFFICE),
        ("2001:db8:21::1", VPN),
        ("192.0.2.9", FLOOR),
        ("192.0.2.10", None),
        ("11.0.0.1", None),
        ("2001:db9::1", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_static_most_specific_prefix_wins(static: StaticLocator, ip: str, expected: Any) -> None:
    assert static.locate(ip) == expected


def test_static_order_of_entries_does_not_matter() -> None:
    locator = StaticLocator([("10.20.3.0/24", FLOOR), ("10.0.0.0/8", VPN)])
    reverse = StaticLocator([("10.0.0.0/8", VPN), ("10.20.3.0/24", FLOOR)])
    assert locator.locate("10.20.3.1") == reverse.locate("10.20.3.1") == FLOOR


def test_static_reports_every_bad_network() -> None:
    with pytest.raises(ConfigError) as caught:
        StaticLocator([("10.0.0.0/8", VPN), ("10.20.0.1/16", OFFICE), ("office", VPN)])
    assert [problem.path for problem in caught.value.problems] == [
        "geo.networks[1]",
        "geo.networks[2]",
    ]


def test_static_empty_table() -> None:
    assert StaticLocator([]).locate("10.0.0.1") is None


# --- ChainLocator ---------------------------------------------------------------------------


def test_chain_asks_in_order(static: StaticLocator, city: MaxMindLocator) -> None:
    chain: Locator = ChainLocator([static, city])
    assert chain.locate("10.20.3.4") == FLOOR
    assert chain.locate("81.2.69.160") == Location("GB", "London", 51.5142, -0.0931)
    assert chain.locate("8.8.8.8") is None
    override = ChainLocator([StaticLocator([("81.2.69.0/24", VPN)]), city])
    assert override.locate("81.2.69.160") == VPN


def test_empty_chain() -> None:
    assert ChainLocator([]).locate("10.0.0.1") is None


def test_a_configured_database_is_found_beside_the_config_and_static_entries_come_first(
        tmp_path: Path, city_db: Path) -> None:
    from tests.support.gateway import make_runtime

    (tmp_path / "geo").mkdir()
    (tmp_path / "geo" / "city.mmdb").write_bytes(city_db.read_bytes())
    runtime = make_runtime(tmp_path, extra="""risk:
  geoip_database: geo/city.mmdb
  locations: [{network: 81.2.69.0/24, country: NL, city: Office}]
""")
    try:
        office = runtime.locator.locate("81.2.69.160")  # the static entry overrides the file
        berlin = runtime.locator.locate("81.2.70.1")  # the file answers the rest
        unknown = runtime.locator.locate("198.51.100.1")
    finally:
        runtime.close()
    assert office is not None and (office.country, office.city) == ("NL", "Office")
    assert berlin is not None and (berlin.country, berlin.city) == ("DE", "Berlin")
    assert unknown is None
