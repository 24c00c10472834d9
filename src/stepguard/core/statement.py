"""SQL statements as the policy sees them: the kinds, and how `postgres:` match blocks match.

The facts come from the postgres door's classifier (PostgreSQL's own parser); this module only
compares them with a rule's patterns, so it stays pure. Table names are matched the way
PostgreSQL may resolve them: a pattern `billing.cards` matches `billing.cards` and an
unqualified `cards` (any schema on the search path could hold it); a pattern `cards` matches
`cards` in any schema; `billing.*` matches every table of `billing` and every unqualified one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

KINDS = ("select", "insert", "update", "delete", "merge", "truncate", "copy", "ddl", "grant",
         "set_role", "set", "function", "transaction", "prepare", "execute", "cursor", "listen",
         "notify", "lock", "admin", "show", "other")
"""Statement kinds: DML, `ddl`, `grant` (GRANT/REVOKE and roles), `set_role` (SET ROLE, SET
SESSION AUTHORIZATION, set_config('role')), `function` (DO, CALL, any function or operator
that is not a side-effect-free builtin), `admin` (VACUUM, ALTER SYSTEM, server-side COPY
files/programs), and the session's housekeeping."""

MATCH_KEYS = frozenset({"databases", "kinds", "tables", "columns"})

Facts = Mapping[str, Any]


def _split(name: str) -> tuple[str, str]:
    """(schema, table) with the catalog dropped; schema '' when unqualified."""
    parts = name.split(".")
    return (parts[-2] if len(parts) > 1 else "", parts[-1])


def table_matcher(patterns: Iterable[str]) -> Callable[[Iterable[str]], bool]:
    """A predicate over a statement's tables: true when any table may be one the patterns name."""
    wanted = [_split(p) for p in patterns]

    def one(table: str) -> bool:
        schema, name = _split(table)
        for p_schema, p_name in wanted:
            if p_name not in ("*", name):
                continue
            if not p_schema or not schema or p_schema == schema:
                return True
        return False

    return lambda tables: any(one(t) for t in tables)


def column_matcher(patterns: Iterable[str]) -> Callable[[Facts], bool]:
    """`table.column` or `column`: the statement reads or writes that column (or `*`, a whole
    row) of a table the pattern's table may be."""
    rules = []
    for pattern in patterns:
        table, _, column = pattern.rpartition(".")
        rules.append((table_matcher([table]) if table else None, column))

    def matches(facts: Facts) -> bool:
        columns = facts.get("columns", ())
        tables = facts.get("tables", ())
        for tables_match, column in rules:
            if (column in columns or "*" in columns) and (
                    tables_match is None or tables_match(tables)):
                return True
        return False

    return matches


def statement_matcher(spec: Mapping[str, list[str]]) -> Callable[[Facts], bool]:
    """One predicate for a `postgres:` match block (every key given must match)."""
    checks: list[Callable[[Facts], bool]] = []
    if "databases" in spec:
        databases = frozenset(spec["databases"])
        checks.append(lambda f: "*" in databases or f.get("database") in databases)
    if "kinds" in spec:
        kinds = frozenset(spec["kinds"])
        checks.append(lambda f: not kinds.isdisjoint(f.get("kinds", ())))
    if "tables" in spec:
        tables = table_matcher(spec["tables"])
        checks.append(lambda f: tables(f.get("tables", ())))
    if "columns" in spec:
        checks.append(column_matcher(spec["columns"]))
    return lambda facts: all(check(facts) for check in checks)
