"""Location lookup for risk signals: where a client IP is (MaxMind database, static table)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import maxminddb

from stepguard.core.errors import ConfigError, Problem
from stepguard.core.risk import Location, parse_ip

__all__ = ["ChainLocator", "Locator", "MaxMindLocator", "StaticLocator"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Locator(Protocol):
    """Finds where an IP address is; None when it does not know (never raises on bad input)."""

    def locate(self, ip: str) -> Location | None: ...


class MaxMindLocator:
    """A GeoLite2/GeoIP2 City or Country database, opened once (memory-mapped) and shared.

    A missing or corrupt file raises `ConfigError` at start-up; at request time an invalid IP,
    an address family the database lacks, or a record without a country gives None.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            self._reader = maxminddb.open_database(os.fspath(path))
        except OSError as error:
            raise _database_error(path, (error.strerror or "unreadable").lower()) from None
        except (ValueError, maxminddb.InvalidDatabaseError):
            raise _database_error(path, "not a MaxMind DB file") from None

    def locate(self, ip: str) -> Location | None:
        address = parse_ip(ip)
        if address is None:
            return None
        try:
            record = self._reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return None
        return _location(record) if isinstance(record, Mapping) else None

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> MaxMindLocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class StaticLocator:
    """Places for networks named in the config (offices, VPN ranges); most specific prefix wins.

    Lookup is one dictionary probe per distinct prefix length, longest first.
    """

    def __init__(self, entries: Sequence[tuple[str, Location]]) -> None:
        table: dict[int, dict[IPNetwork, Location]] = {}
        problems = []
        for index, (text, location) in enumerate(entries):
            try:
                network = ipaddress.ip_network(text.strip())
            except ValueError as error:
                problems.append(Problem("", f"geo.networks[{index}]", str(error)))
                continue
            table.setdefault(network.prefixlen, {})[network] = location
        if problems:
            raise ConfigError(problems)
        self._lengths = sorted(table, reverse=True)
        self._table = table

    def locate(self, ip: str) -> Location | None:
        address = parse_ip(ip)
        if address is None:
            return None
        for length in self._lengths:
            if length > address.max_prefixlen:
                continue
            network = ipaddress.ip_network((address, length), strict=False)
            found = self._table[length].get(network)
            if found is not None:
                return found
        return None


class ChainLocator:
    """Asks each locator in order and returns the first answer (e.g. static table, then MaxMind)."""

    def __init__(self, locators: Sequence[Locator]) -> None:
        self._locators = tuple(locators)

    def locate(self, ip: str) -> Location | None:
        for locator in self._locators:
            found = locator.locate(ip)
            if found is not None:
                return found
        return None


def _database_error(path: str | os.PathLike[str], what: str) -> ConfigError:
    return ConfigError(
        [Problem(os.fspath(path), "geo.database", f"cannot open the GeoIP database: {what}")]
    )




def _location(record: Mapping[str, Any]) -> Location | None:
    """A Location from a GeoIP2 City or Country record; None without a country or coordinates.

    Falls back to `registered_country` when `country` is absent (as for some anycast ranges).
    """
    country = _text(record, "country", "iso_code")
    country = country or _text(record, "registered_country", "iso_code")
    city = _text(record, "city", "names", "en")
    latitude = _coordinate(record, "latitude", 90.0)
    longitude = _coordinate(record, "longitude", 180.0)
    if latitude is None or longitude is None:
        latitude = longitude = None
    if not country and latitude is None:
        return None
    return Location(country=country.upper(), city=city, latitude=latitude, longitude=longitude)


def _text(record: Mapping[str, Any], *keys: str) -> str:
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, str) else ""


def _coordinate(record: Mapping[str, Any], key: str, bound: float) -> float | None:
    location = record.get("location")
    value = location.get(key) if isinstance(location, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if -bound <= value <= bound else None
