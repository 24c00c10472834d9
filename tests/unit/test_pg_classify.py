"""The statement classifier (pglast, PostgreSQL's parser): kinds, tables, columns, refusals."""

from __future__ import annotations

import pytest

from stepguard.pgwire.classify import Classifier, Unparseable, classify


def one(sql: str):  # type: ignore[no-untyped-def]
    statements = classify(sql).statements
    assert len(statements) == 1, statements
    return statements[0]


@pytest.mark.parametrize(("sql", "kinds"), [
    ("SELECT 1", {"select"}),
    ("INSERT INTO t VALUES (1)", {"insert"}),
    ("INSERT INTO t SELECT * FROM s", {"insert", "select"}),
    ("UPDATE t SET a = 1 WHERE id = 2", {"update"}),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {"merge", "delete"}),
    ("TRUNCATE t", {"truncate"}),
    ("CREATE TABLE x (a int)", {"ddl"}),
    ("DROP TABLE x", {"ddl"}),
    ("ALTER ROLE bob SUPERUSER", {"grant"}),
    ("GRANT ALL ON t TO bob", {"grant"}),
    ("SET ROLE bob", {"set_role"}),
    ("RESET ROLE", {"set_role"}),
    ("SET SESSION AUTHORIZATION bob", {"set_role"}),
    ("SET LOCAL ROLE bob", {"set_role"}),
    ("SET work_mem = '1MB'", {"set"}),
    ("DO $$BEGIN END$$", {"function"}),
    ("CALL p()", {"function"}),
    ("SELECT my_func()", {"select", "function"}),
    ("SELECT lower(name) FROM t", {"select"}),
    ("SELECT pg_catalog.lower(name) FROM t", {"select"}),
    ("SELECT evil.lower(name) FROM t", {"select", "function"}),
    ("SELECT a ==> b FROM t", {"select", "function"}),
    ("COPY t TO STDOUT", {"copy"}),
    ("COPY t FROM '/etc/passwd'", {"copy", "admin"}),
    ("VACUUM t", {"admin"}),
    ("ALTER SYSTEM SET work_mem = '1MB'", {"admin"}),
    ("BEGIN", {"transaction"}),
    ("LISTEN ch", {"listen"}),
    ("NOTIFY ch", {"notify"}),
    ("EXPLAIN ANALYZE DELETE FROM t", {"show", "delete"}),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"select", "delete"}),
    ("SELECT set_config('role', 'bob', false)", {"select", "set_role"}),
    ("SELECT set_config('work_mem', '1MB', false)", {"select", "set"}),
    # what clients send on their own: pgbench's start-up query, psql's \d
    ("select o.n, p.partstrat, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c "
     "join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral "
     "(select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) "
     "left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join "
     "pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts'"
     " and o.n is not null group by 1, 2 order by 1 asc", {"select"}),
    ("SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) FROM "
     "pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
     "WHERE pg_catalog.pg_table_is_visible(c.oid)", {"select"}),
    ("SELECT evil.current_schemas(true)", {"select", "function"}),
])
def test_kinds(sql: str, kinds: set[str]) -> None:
    assert one(sql).kinds == kinds


def test_tables_columns_and_unbounded() -> None:
    s = one("UPDATE billing.cards SET number = 'x'")
    assert s.tables == {"billing.cards"} and "number" in s.columns and s.unbounded
    assert one("DELETE FROM t WHERE 1 = 1").unbounded
    assert one("DELETE FROM t WHERE true").unbounded
    assert not one("DELETE FROM t WHERE id = 1").unbounded
    assert one("TRUNCATE t").unbounded
    assert one("SELECT c FROM cards c").columns == {"*"}
    assert one("SELECT cards.* FROM cards").columns == {"*"}
    assert one("SELECT x.number FROM cards x").columns == {"number"}
    assert one("SELECT * FROM a JOIN b.c ON true").tables == {"a", "b.c"}
    assert one("SELECT (SELECT max(id) FROM inner_t) FROM outer_t").tables == {"inner_t", "outer_t"}


def test_multi_statement_strings_split_as_postgresql_splits_them() -> None:
    statements = classify("SELECT ';' ; /* ; */ DELETE FROM t; SELECT $$;$$").statements
    texts = [s.text for s in statements]
    assert texts == ["SELECT ';'", "DELETE FROM t", "SELECT $$;$$"]


def test_views_resolve_to_their_tables() -> None:
    classifier = Classifier(views={"public.card_view": ["public.cards"]})
    assert "public.cards" in classifier.classify("SELECT * FROM card_view").statements[0].tables
    assert "public.cards" in classifier.classify(
        "SELECT * FROM public.card_view").statements[0].tables
    assert "public.cards" not in classifier.classify(
        "SELECT * FROM other.card_view").statements[0].tables


@pytest.mark.parametrize("sql", [
    "SELEC 1", "SELECT 'unterminated", "SELECT $$ unterminated", "SELECT 1\x00; DROP TABLE t",
])
def test_what_cannot_be_parsed_raises(sql: str) -> None:
    with pytest.raises(Unparseable):
        classify(sql)


@pytest.mark.parametrize("sql", [
    "SET standard_conforming_strings = off",
    "SET client_encoding TO 'SJIS'",
    "SET NAMES 'LATIN1'",
    "SET application_name = 'someone else'",
    "SET search_path = evil, pg_catalog",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT set_config(name, 'x', false) FROM t",
    "SELECT set_config('search_path', 'evil, pg_catalog', false)",
])
def test_refused_whatever_the_policy(sql: str) -> None:
    assert one(sql).refusal


def test_search_path_with_pg_catalog_first_is_fine() -> None:
    assert not one("SET search_path = pg_catalog, public").refusal
    assert not one("SET search_path = public").refusal


def test_prepare_runs_nothing_and_carries_its_statement() -> None:
    prepared = one("PREPARE p AS DELETE FROM t")
    assert prepared.kinds == {"prepare"} and prepared.prepare == "p"
    assert prepared.inner is not None and prepared.inner.kind == "delete"
    assert one("EXECUTE p(1)").execute == "p"
    assert one("DEALLOCATE p").deallocate == "p"
    assert one("DEALLOCATE ALL").deallocate == ""


def test_the_cache_returns_the_same_classification_and_remembers_failures() -> None:
    classifier = Classifier(cache_size=2)
    first = classifier.classify("SELECT 1")
    assert classifier.classify("SELECT 1") is first
    for _ in range(2):
        with pytest.raises(Unparseable):
            classifier.classify("SELEC 1")
    classifier.classify("SELECT 2")
    classifier.classify("SELECT 3")
    assert classifier.classify("SELECT 1") is not first  # evicted
