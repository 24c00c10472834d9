"""`match: {postgres: …}` and `sql.*` in the policy: door separation, table and column patterns,
statement-bound grants."""

from __future__ import annotations

import pytest

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Outcome
from stepguard.core.errors import PolicyError
from stepguard.core.grant import Grant
from stepguard.core.levels import Level
from stepguard.core.policy import compile_policy
from stepguard.core.statement import table_matcher
from stepguard.pgwire.classify import statement_context

NOW = 1_900_000_000.0
ALICE = Subject(id="u1", name="alice")
SESSION = SessionState(id="s1", subject=ALICE, created=NOW - 60, last_seen=NOW,
                       events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1,
                                         at=NOW - 60),))

POLICY = compile_policy({
    "rules": [
        {"name": "http-open", "match": {"paths": ["/**"]}, "allow": True},
        {"name": "wipe", "match": {"postgres": {"kinds": ["delete"]}}, "when": "sql.unbounded",
         "deny": "Never delete every row of {sql.tables}."},
        {"name": "cards", "match": {"postgres": {"databases": ["app"],
                                                 "columns": ["billing.cards.number"]}},
         "require": {"level": "aal2", "max_age": "0s"}},
        {"name": "writes", "match": {"postgres": {"kinds": ["delete", "update"],
                                                  "tables": ["public.*"]}},
         "require": {"level": "aal2", "max_age": "0s", "single_use": True}},
    ],
    "default": {"level": "aal1"},
})


def sql(text: str, database: str = "app", params: bytes = b"") -> RequestContext:
    return statement_context(text, database=database, params=params)


def test_an_http_rule_never_matches_a_statement() -> None:
    assert decide(POLICY, sql("DELETE FROM t"), SESSION, now=NOW).outcome is Outcome.DENY
    http = RequestContext(method="GET", host="x", path="/a")
    assert decide(POLICY, http, SESSION, now=NOW).rule == "http-open"


def test_a_postgres_rule_never_matches_an_http_request() -> None:
    http = RequestContext(method="DELETE", host="x", path="/t",
                          attributes={"kinds": ["delete"], "unbounded": True})
    policy = compile_policy({"rules": [{"name": "wipe", "match": {"postgres": {}},
                                        "deny": "x"}]})
    assert decide(policy, http, SESSION, now=NOW).rule == "default"


def test_reasons_name_the_tables() -> None:
    decision = decide(POLICY, sql("DELETE FROM public.customers"), SESSION, now=NOW)
    assert decision.reasons == ("Never delete every row of public.customers.",)


def test_columns_match_through_aliases_stars_and_unqualified_names() -> None:
    for text in ("SELECT number FROM billing.cards", "SELECT * FROM cards",
                 "SELECT c FROM cards c", "SELECT x.number FROM cards x"):
        assert decide(POLICY, sql(text), SESSION, now=NOW).rule == "cards", text
    assert decide(POLICY, sql("SELECT holder FROM cards"), SESSION, now=NOW).rule == "default"
    assert decide(POLICY, sql("SELECT * FROM other.cards"), SESSION, now=NOW).rule == "default"
    assert decide(POLICY, sql("SELECT * FROM cards", "reports"), SESSION,
                  now=NOW).rule == "default"


@pytest.mark.parametrize(("pattern", "table", "matches"), [
    ("public.customers", "public.customers", True),
    ("public.customers", "customers", True),  # unqualified: any schema on the search path
    ("public.customers", "other.customers", False),
    ("customers", "other.customers", True),
    ("public.*", "public.x", True),
    ("public.*", "x", True),
    ("public.*", "other.x", False),
    ("db.public.customers", "public.customers", True),
    ("public.customers", "db.public.customers", True),
])
def test_table_patterns(pattern: str, table: str, matches: bool) -> None:
    assert table_matcher([pattern])([table]) is matches


def test_a_grant_is_bound_to_the_statement_and_its_parameters() -> None:
    held = sql("UPDATE public.t SET a = 1 WHERE id = $1", params=b"\x00\x01" + b"7")
    first = decide(POLICY, held, SESSION, now=NOW)
    assert first.outcome is Outcome.STEP_UP and first.binding
    grant = Grant(id="g1", subject_id="u1", session_id="s1", scope=first.scope,
                  level=Level.AAL2, amr=("otp",), granted_at=NOW, expires_at=NOW + 60,
                  single_use=True, binding=first.binding, factor="totp")
    allowed = decide(POLICY, held, SESSION, grants=[grant], now=NOW)
    assert allowed.allowed and allowed.consume_grant == "g1"
    for other in (sql("UPDATE public.t SET a = 1 WHERE id = $1", params=b"\x00\x01" + b"8"),
                  sql("UPDATE public.t SET a = 2 WHERE id = $1", params=b"\x00\x01" + b"7"),
                  sql("UPDATE public.t SET a = 1 WHERE id = $1", "other",
                      params=b"\x00\x01" + b"7")):
        assert decide(POLICY, other, SESSION, grants=[grant], now=NOW).outcome is Outcome.STEP_UP


def test_unknown_kinds_and_keys_are_reported() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({"rules": [{"name": "x", "match": {"postgres": {
            "kinds": ["delet"], "tabels": ["t"]}}, "deny": "no"}]})
    text = str(caught.value)
    assert "unknown kind" in text and "tabels" in text


def test_the_example_sql_policy_tests_pass() -> None:
    from pathlib import Path

    from stepguard.config.policy_tests import run_policy_tests

    report = run_policy_tests(Path(__file__).parents[2] / "examples" /
                              "postgres-policy.tests.yaml")
    assert report.failed == 0, [r.detail for r in report.results if not r.passed]
    assert report.passed == 7
