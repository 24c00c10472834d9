"""Static rule matching: host patterns, path globs, and the index that keeps lookup cheap.

Paths match case-insensitively (an upstream on a case-insensitive file system must not let
`/ADMIN` escape the `/admin` rule), and a trailing slash is ignored (`/roles/` matches `/roles`).
Globs: `*` matches within one segment, `**` any number of
segments; a pattern ending in `/**` also matches the bare prefix (`/admin/**` matches `/admin`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

WILDCARD = ""  # index key for "any host" / "any first segment"


def compile_path_glob(pattern: str) -> re.Pattern[str]:
    """Regex for one path glob; raise ValueError for a pattern that is not an absolute path."""
    if not pattern.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {pattern!r}")
    prefix_ok = pattern.endswith("/**")
    body = pattern[:-3] if prefix_ok else pattern.rstrip("/") or "/"
    regex = "".join(_glob_piece(piece) for piece in re.split(r"(\*\*|\*|\?)", body))
    if prefix_ok:
        regex += "(?:/.*)?"
    elif body != "/":
        regex += "/?"  # `/roles/` is `/roles` to most frameworks: it must not escape the rule
    return re.compile(regex, re.IGNORECASE | re.DOTALL)


def _glob_piece(piece: str) -> str:
    if piece == "**":
        return ".*"
    if piece == "*":
        return "[^/]*"
    if piece == "?":
        return "[^/]"
    return re.escape(piece)


def path_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """One predicate for several globs (combined into a single regex)."""
    regexes = [compile_path_glob(p).pattern for p in patterns]
    combined = re.compile("|".join(f"(?:{r})" for r in regexes), re.IGNORECASE | re.DOTALL)
    fullmatch = combined.fullmatch
    return lambda path: fullmatch(path) is not None


def host_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Exact hosts and `*.example.com` suffix patterns (the suffix needs at least one label)."""
    exact = frozenset(p.lower().rstrip(".") for p in patterns if not p.startswith("*."))
    suffixes = tuple(p[1:].lower().rstrip(".") for p in patterns if p.startswith("*."))
    return lambda host: host in exact or (bool(suffixes) and host.endswith(suffixes))


def check_host_pattern(pattern: str) -> None:
    """Raise ValueError unless `pattern` is a host name or a `*.suffix` pattern."""
    name = pattern[2:] if pattern.startswith("*.") else pattern
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+\.?|\[[0-9a-fA-F:.]+\]", name) or "*" in name:
        raise ValueError(f"expected a host name or '*.example.com', got {pattern!r}")


def first_segment(path: str) -> str:
    """Lowercased first path segment of a canonical path ('' for '/')."""
    end = path.find("/", 1)
    return (path[1:] if end < 0 else path[1:end]).lower()


def literal_first_segments(pattern: str) -> str | None:
    """The glob's literal first segment, or None when it starts with a wildcard."""
    segment = first_segment(pattern)
    if any(ch in segment for ch in "*?"):
        return None
    if pattern.endswith("/**") and pattern.count("/") == 1:
        return None  # "/**" matches everything
    return segment


T = TypeVar("T")


class Index(Generic[T]):
    """Candidates by (host, first path segment), in rule order.

    Each rule says which hosts and first segments it can match (None = any). At compile time
    every concrete key gets the ordered union of its own rules and the wildcard rules, so a
    lookup is two dict reads and the scan touches only rules that could match.
    """

    def __init__(self, entries: Iterable[tuple[T, frozenset[str] | None, frozenset[str] | None]]):
        items = list(entries)
        hosts = {h for _, hs, _ in items if hs for h in hs}
        self._table: dict[str, dict[str, tuple[T, ...]]] = {}
        for host in [*hosts, WILDCARD]:
            host_items = [(i, r, segs) for i, (r, hs, segs) in enumerate(items) if _has(hs, host)]
            self._table[host] = _segment_table(host_items)

    def candidates(self, host: str, path: str) -> tuple[T, ...]:
        table = self._table.get(host) or self._table[WILDCARD]
        return table.get(first_segment(path)) or table[WILDCARD]


def _has(keys: frozenset[str] | None, key: str) -> bool:
    return keys is None or key in keys


def _segment_table(items: list[tuple[int, T, frozenset[str] | None]]) -> dict[str, tuple[T, ...]]:
    segments = {s for _, _, segs in items if segs for s in segs}
    table = {seg: tuple(r for _, r, segs in items if _has(segs, seg)) for seg in segments}
    table[WILDCARD] = tuple(r for _, r, segs in items if segs is None)
    return table
