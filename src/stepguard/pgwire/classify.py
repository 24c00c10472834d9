"""SQL statements classified by PostgreSQL's own parser (pglast): what each statement would do.

`classify(text)` splits a query string into the statements PostgreSQL will run and describes
each one: its kinds (every write, read, call or setting change anywhere in it, including inside
CTEs, subqueries and `EXPLAIN ANALYZE`), the tables and columns it touches, the functions it
calls and whether an UPDATE/DELETE is unbounded. What cannot be parsed raises `Unparseable`: the
gateway refuses it, never guesses. A statement whose meaning would depend on parser settings the
gateway does not share (`standard_conforming_strings`, `client_encoding`) carries a `refusal`.

Results are cached by text, so a repeated statement costs one dictionary lookup.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast.parser import ParseError, normalize, parse_sql_json

from stepguard.core.context import RequestContext

# Settings that change how PostgreSQL reads the bytes of later statements: the classifier reads
# them one way only (UTF-8, standard conforming strings), so no statement may change them.
PARSER_SETTINGS = frozenset({"standard_conforming_strings", "client_encoding", "names",
                             "backslash_quote"})
ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# Settings that name the human behind the connection in the server's views and logs.
IDENTITY_SETTINGS = frozenset({"application_name"})

# Builtin functions without side effects: a call to any other function (or one named in another
# schema than pg_catalog) counts as kind `function`, which a policy can step up or deny.
SAFE_FUNCTIONS = frozenset("""
abs age array_agg array_length array_position array_to_string avg bit_length bool_and bool_or btrim
cardinality ceil ceiling char_length character_length coalesce concat concat_ws count cume_dist
current_date current_setting date_part date_trunc decode dense_rank encode every exp extract
first_value floor format generate_series greatest initcap jsonb_agg jsonb_array_elements
jsonb_array_length jsonb_build_array jsonb_build_object jsonb_each jsonb_extract_path
jsonb_object_agg
jsonb_typeof json_agg json_array_elements json_build_array json_build_object json_each
json_object_agg json_typeof lag last_value lead least left length ln log lower lpad ltrim make_date
make_interval max md5 min mod now ntile nullif octet_length percent_rank pi position power rank
regexp_match regexp_matches regexp_replace regexp_split_to_array repeat replace reverse right round
row_number rpad rtrim sign split_part sqrt starts_with statement_timestamp stddev string_agg
string_to_array strpos substr substring sum timeofday to_char to_date to_hex to_json to_jsonb
to_number to_timestamp translate trim trunc unnest upper variance version clock_timestamp
transaction_timestamp array_upper array_lower array_ndims random gen_random_uuid pg_sleep
pg_backend_pid current_database current_schema current_user session_user
current_schemas format_type pg_table_is_visible pg_type_is_visible pg_function_is_visible
pg_get_userbyid pg_encoding_to_char pg_get_expr pg_get_indexdef pg_get_constraintdef
pg_get_viewdef pg_get_triggerdef pg_get_function_arguments pg_get_function_result
obj_description col_description shobj_description pg_relation_size pg_total_relation_size
pg_size_pretty quote_ident quote_literal
""".split())  # noqa: SIM905
# (the second group: catalog readers that clients call on their own, e.g. pgbench's start-up
# query and psql's \d; they read, they never write)
SAFE_OPERATORS = frozenset("""
+ - * / % ^ = <> != < > <= >= || ~ ~* !~ !~* ~~ ~~* !~~ !~~* @> <@ && -> ->> #> #>> ? ?| ?& @@ @?
# & | << >> |/ ||/ @ -|-
""".split())  # noqa: SIM905

_DDL = frozenset("""
AlterCollationStmt AlterDatabaseRefreshCollStmt AlterDatabaseSetStmt AlterDatabaseStmt
AlterDefaultPrivilegesStmt AlterDomainStmt AlterEnumStmt AlterEventTrigStmt
AlterExtensionContentsStmt AlterExtensionStmt AlterFdwStmt AlterForeignServerStmt
AlterFunctionStmt AlterObjectDependsStmt AlterObjectSchemaStmt AlterOpFamilyStmt
AlterOperatorStmt AlterOwnerStmt AlterPolicyStmt AlterPublicationStmt AlterSeqStmt
AlterStatsStmt AlterSubscriptionStmt AlterTSConfigurationStmt AlterTSDictionaryStmt
AlterTableMoveAllStmt AlterTableSpaceOptionsStmt AlterTableStmt AlterTypeStmt
AlterUserMappingStmt CommentStmt CompositeTypeStmt CreateAmStmt CreateCastStmt
CreateConversionStmt CreateDomainStmt CreateEnumStmt CreateEventTrigStmt CreateExtensionStmt
CreateFdwStmt CreateForeignServerStmt CreateForeignTableStmt CreateFunctionStmt CreateOpClassStmt
CreateOpFamilyStmt CreatePLangStmt CreatePolicyStmt CreatePublicationStmt CreateRangeStmt
CreateSchemaStmt CreateSeqStmt CreateStatsStmt CreateStmt CreateSubscriptionStmt
CreateTableAsStmt CreateTableSpaceStmt CreateTransformStmt CreateTrigStmt CreateUserMappingStmt
CreatedbStmt DefineStmt DropStmt DropSubscriptionStmt DropTableSpaceStmt DropUserMappingStmt
DropdbStmt ImportForeignSchemaStmt IndexStmt RefreshMatViewStmt RenameStmt ReplicaIdentityStmt
RuleStmt SecLabelStmt ViewStmt
""".split())  # noqa: SIM905
_GRANT = frozenset("""GrantStmt GrantRoleStmt CreateRoleStmt AlterRoleStmt AlterRoleSetStmt
DropRoleStmt DropOwnedStmt ReassignOwnedStmt""".split())  # noqa: SIM905
_ADMIN = frozenset("""AlterSystemStmt CheckPointStmt ClusterStmt LoadStmt ReindexStmt VacuumStmt
AlterDatabaseSetStmt""".split())  # noqa: SIM905
_SIMPLE = {
    "SelectStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update",
    "DeleteStmt": "delete", "MergeStmt": "merge", "TruncateStmt": "truncate",
    "CopyStmt": "copy", "DoStmt": "function", "CallStmt": "function",
    "TransactionStmt": "transaction", "PrepareStmt": "prepare", "ExecuteStmt": "execute",
    "DeallocateStmt": "prepare", "DeclareCursorStmt": "cursor", "FetchStmt": "cursor",
    "ClosePortalStmt": "cursor", "ListenStmt": "listen", "UnlistenStmt": "listen",
    "NotifyStmt": "notify", "LockStmt": "lock", "VariableShowStmt": "show",
    "DiscardStmt": "set", "ConstraintsSetStmt": "set", "ExplainStmt": "show",
}


class Unparseable(ValueError):
    """PostgreSQL's parser does not accept this text: the gateway refuses it."""


@dataclass(frozen=True, slots=True)
class Statement:
    """What one statement would do, as PostgreSQL reads it."""

    text: str
    kind: str
    kinds: frozenset[str]
    tables: frozenset[str] = frozenset()
    columns: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    unbounded: bool = False
    normalized: str = ""
    refusal: str = ""  # non-empty: refused whatever the policy says
    prepare: str | None = None  # PREPARE name AS <inner>
    inner: Statement | None = None
    execute: str | None = None  # EXECUTE name
    deallocate: str | None = None  # DEALLOCATE name ("" = ALL)
    settles: bool = True  # False: it may change session settings (a function, DO, SET, ...)
    digest: str = field(default="", compare=False)

    def facts(self, database: str, digest: str) -> dict[str, object]:
        """The statement as the policy sees it (`match: {postgres: ...}`, `sql.*` names)."""
        return {"database": database, "kind": self.kind, "kinds": self.kinds,
                "tables": tuple(sorted(self.tables)), "columns": self.columns,
                "functions": self.functions, "unbounded": self.unbounded, "digest": digest}


@dataclass(frozen=True, slots=True)
class Classification:
    """Every statement of one query string, in order."""

    statements: tuple[Statement, ...]


def statement_context(text: str, *, database: str, params: bytes = b"", client_ip: str = "",
                      user_agent: str = "", literals: bool = False,
                      statement: Statement | None = None) -> RequestContext:
    """The request context of one statement through the postgres door (what the policy sees).

    The binding digest covers the statement's text and its parameter values (extended protocol),
    so an approval is for exactly what runs."""
    if statement is None:
        statements = classify(text).statements
        if len(statements) != 1:
            raise Unparseable("expected exactly one statement")
        statement = statements[0]
    digest = hashlib.sha256(b"\x00".join((b"postgres", database.encode(),
                                           statement.digest.encode(), params))).hexdigest()
    facts = statement.facts(database, digest)
    facts["text"] = statement.text if literals else statement.normalized
    return RequestContext(method="", host="", path="", client_ip=client_ip,
                          user_agent=user_agent, door="postgres", call_digest=digest,
                          statement=facts)


class Classifier:
    """`classify` with a bounded cache by text, and views resolved to their tables."""

    def __init__(self, *, views: Mapping[str, list[str]] | None = None,
                 cache_size: int = 10_000) -> None:
        self.views = {k.lower(): tuple(v) for k, v in (views or {}).items()}
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Classification | Unparseable] = OrderedDict()

    def classify(self, text: str) -> Classification:
        found = self._cache.get(text)
        if found is None:
            try:
                found = classify(text, views=self.views)
            except Unparseable as exc:
                found = exc
            self._cache[text] = found
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if isinstance(found, Unparseable):
            raise found
        return found


def classify(text: str, *, views: Mapping[str, tuple[str, ...]] | None = None) -> Classification:
    """Split and classify a query string; raise `Unparseable` when PostgreSQL would not parse it
    the way this parser does (or at all)."""
    if "\x00" in text:
        raise Unparseable("a query may not contain a NUL character")
    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError as exc:
        raise Unparseable(f"the statement could not be parsed: {exc}") from None
    raw = text.encode("utf-8")
    statements = []
    for entry in tree.get("stmts", []):
        start = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0) or len(raw) - start
        piece = raw[start:start + length].decode("utf-8").strip()
        statements.append(_statement(piece, entry["stmt"], views or {}))
    return Classification(tuple(statements))


def _statement(text: str, node: dict[str, Any], views: Mapping[str, tuple[str, ...]]) -> Statement:
    (name, body), = node.items()
    walk = _Walk()
    if name != "PrepareStmt":  # PREPARE runs nothing: its query is judged at EXECUTE
        walk.visit(node)
    kind = _kind(name, body)
    kinds = {kind, *walk.kinds}
    if len(kinds) > 1:
        kinds.discard("other")
    if name == "CopyStmt" and (body.get("filename") or body.get("is_program")):
        kinds.add("admin")  # a server-side file or program
    tables = set(walk.tables)
    for table in list(tables):  # a view reads its tables (an unqualified name: any schema's)
        for view, read in views.items():
            if view == table or ("." not in table and _bare(view) == table):
                tables.update(read)
    statement = Statement(
        text=text, kind=kind, kinds=frozenset(kinds), tables=frozenset(tables),
        columns=frozenset(_columns(walk, tables)), functions=frozenset(walk.functions),
        unbounded=walk.unbounded or kind == "truncate", normalized=_normalized(text),
        refusal=walk.refusal or _refusal(name, body), settles=not (kinds & _UNSETTLING),
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        **_prepared(name, body, text, views))
    return statement


_UNSETTLING = frozenset({"function", "set", "set_role", "admin", "execute", "grant", "ddl"})


def _kind(name: str, body: dict[str, Any]) -> str:
    if name == "VariableSetStmt":
        return "set_role" if body.get("name") in ROLE_SETTINGS else "set"
    if name in _SIMPLE:
        return _SIMPLE[name]
    if name in _GRANT:
        return "grant"
    if name in _ADMIN:
        return "admin"
    if name in _DDL:
        return "ddl"
    return "other"


def _refusal(name: str, body: dict[str, Any]) -> str:
    if name == "VariableSetStmt" and body.get("name") in PARSER_SETTINGS:
        return (f"Changing {body.get('name')} is not allowed through Stepguard: it would change "
                "how later statements are read.")
    if name == "VariableSetStmt" and body.get("name") in IDENTITY_SETTINGS:
        return "application_name names the person using this connection; it cannot be changed."
    if name == "VariableSetStmt" and body.get("name") == "search_path":
        return _search_path_refusal(_constants(body.get("args", [])))
    return ""


def _search_path_refusal(values: list[str | None]) -> str:
    if None in values:
        return "search_path must be a list of schema names"
    names = [v.strip().strip('"').lower() for v in values if v is not None for v in v.split(",")]
    if "pg_catalog" in names and names[0] != "pg_catalog":
        return ("search_path may not put a schema before pg_catalog (it would let a schema "
                "shadow built-in functions)")
    return ""


def _prepared(name: str, body: dict[str, Any], text: str,
              views: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    if name == "PrepareStmt":
        query = body.get("query", {})
        inner = _statement(text, query, views) if query else None
        return {"prepare": body.get("name", ""), "inner": inner}
    if name == "ExecuteStmt":
        return {"execute": body.get("name", "")}
    if name == "DeallocateStmt":
        return {"deallocate": body.get("name", "") if not body.get("isall") else ""}
    return {}


def _normalized(text: str) -> str:
    try:
        return str(normalize(text))
    except ParseError:  # pragma: no cover - parsed a moment ago
        return ""


def _bare(table: str) -> str:
    return table.rsplit(".", 1)[-1]


def _columns(walk: _Walk, tables: set[str]) -> set[str]:
    """Column references; a table or alias named alone (a whole row) counts as `*`."""
    names = walk.aliases | {_bare(t) for t in tables}
    columns: set[str] = set()
    for parts in walk.columns:
        if len(parts) == 1 and parts[0] in names or parts[-1] == "*":
            columns.add("*")
        else:
            columns.add(parts[-1])
    return columns


class _Walk:
    """One pass over the parse tree collecting every fact the policy can match."""

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.tables: set[str] = set()
        self.aliases: set[str] = set()
        self.columns: list[tuple[str, ...]] = []
        self.functions: set[str] = set()
        self.unbounded = False
        self.refusal = ""

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, dict):
            return
        if "relname" in node:  # a RangeVar, wrapped or not (`relation` fields hold it bare)
            self.range_var(node)
        for key, value in node.items():
            handler = _HANDLERS.get(key)
            if handler is not None and isinstance(value, dict):
                handler(self, value)
            self.visit(value)

    def range_var(self, body: dict[str, Any]) -> None:
        parts = [body.get(k) for k in ("catalogname", "schemaname", "relname")]
        self.tables.add(".".join(p for p in parts if p))
        alias = body.get("alias", {}).get("aliasname")
        if alias:
            self.aliases.add(alias)

    def column_ref(self, body: dict[str, Any]) -> None:
        fields = tuple(_field(f) for f in body.get("fields", []))
        self.columns.append(fields)

    def res_target(self, body: dict[str, Any]) -> None:
        if body.get("name"):  # an UPDATE SET or INSERT column (or a SELECT alias: harmless)
            self.columns.append((str(body["name"]),))

    def func_call(self, body: dict[str, Any]) -> None:
        names = [_sval(n) for n in body.get("funcname", [])]
        name = ".".join(n for n in names if n)
        bare = names[-1] if names else ""
        schema = names[0] if len(names) > 1 else "pg_catalog"
        if bare == "set_config":
            self._set_config(body.get("args", []))
        elif schema != "pg_catalog" or bare not in SAFE_FUNCTIONS:
            self.kinds.add("function")
        self.functions.add(name)

    def _set_config(self, args: list[Any]) -> None:
        setting = _constants(args[:1])[0] if args else None
        if setting is None or setting.lower() in PARSER_SETTINGS | IDENTITY_SETTINGS:
            self.refusal = ("set_config may only name a constant setting, and not one that "
                            "changes how statements are read")
        elif setting.lower() in ROLE_SETTINGS:
            self.kinds.add("set_role")
        elif setting.lower() == "search_path":
            value = _constants(args[1:2])[0] if len(args) > 1 else None
            self.refusal = self.refusal or _search_path_refusal([value])
            self.kinds.add("set")
        else:
            self.kinds.add("set")

    def operator(self, body: dict[str, Any]) -> None:
        names = [_sval(n) for n in body.get("name", [])]
        schema = names[0] if len(names) > 1 else "pg_catalog"
        if schema != "pg_catalog" or (names and names[-1] not in SAFE_OPERATORS):
            self.kinds.add("function")



def _statement_handler(kind: str) -> Any:
    def handle(walk: _Walk, body: dict[str, Any]) -> None:
        if kind == "select" and "valuesLists" in body:
            return  # VALUES (…) reads nothing
        walk.kinds.add(kind)
        if kind in ("update", "delete") and _unbounded(body.get("whereClause")):
            walk.unbounded = True
        if kind == "copy" and body.get("relation") and not body.get("attlist"):
            walk.columns.append(("*",))
    return handle


def _unbounded(where: Any) -> bool:
    """No WHERE, or a WHERE that names no column (`WHERE true`, `WHERE 1 = 1`)."""
    return where is None or not _mentions_column(where)


def _mentions_column(node: Any) -> bool:
    if isinstance(node, dict):
        return "ColumnRef" in node or "CurrentOfExpr" in node or any(
            _mentions_column(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_column(v) for v in node)
    return False


def _field(node: dict[str, Any]) -> str:
    return "*" if "A_Star" in node else _sval(node)


def _sval(node: Any) -> str:
    return str(node.get("String", {}).get("sval", "")) if isinstance(node, dict) else ""


def _constants(args: list[Any]) -> list[str | None]:
    """Text constants among `args` (None for anything that is not one)."""
    values: list[str | None] = []
    for arg in args:
        const = arg.get("A_Const", {}) if isinstance(arg, dict) else {}
        if "sval" in const:
            values.append(str(const["sval"].get("sval", "")))
        elif "ival" in const or "fval" in const:
            values.append(str(next(iter(const.get("ival", const.get("fval", {})).values()), "")))
        else:
            values.append(None)
    return values


_MERGE_ACTIONS = {"CMD_DELETE": "delete", "CMD_UPDATE": "update", "CMD_INSERT": "insert"}
_HANDLERS: dict[str, Any] = {
    "ColumnRef": _Walk.column_ref,
    "ResTarget": _Walk.res_target,
    "MergeWhenClause": lambda walk, body: walk.kinds.add(
        _MERGE_ACTIONS.get(body.get("commandType", ""), "merge")),
    "FuncCall": _Walk.func_call,
    "A_Expr": _Walk.operator,
}
for _name, _kind_name in (("SelectStmt", "select"), ("InsertStmt", "insert"),
                          ("UpdateStmt", "update"), ("DeleteStmt", "delete"),
                          ("MergeStmt", "merge"), ("DoStmt", "function"),
                          ("CallStmt", "function"), ("CopyStmt", "copy")):
    _HANDLERS[_name] = _statement_handler(_kind_name)
