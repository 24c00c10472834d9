"""The `when` expression language: syntax, types, names, networks, coercions, runtime values."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import operator
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.errors import EvaluationError, ExpressionError
from stepguard.core.expression import (
    NAME_TYPES,
    CompiledExpression,
    EvalEnv,
    compile_expression,
)
from stepguard.core.levels import Level
from stepguard.core.risk import NO_RISK, RiskAssessment, Signal

NOW = 1_700_000_000.0
ATTRIBUTES = {"amount": "number", "payee": "string", "urgent": "bool", "tags": "list"}
NETWORKS: Mapping[str, Sequence[IPv4Network | IPv6Network]] = {
    "office": [IPv4Network("10.0.0.0/8"), IPv6Network("2001:db8::/32")],
    "vpn": [IPv4Network("192.0.2.0/24")],
}


def make_session(
    *events: AuthEvent,
    created: float = NOW - 7200,
    last_seen: float = NOW - 60,
    groups: frozenset[str] = frozenset({"staff", "admins"}),
) -> SessionState:
    subject = Subject(id="u1", name="Ada", email="ada@example.com", groups=groups)
    return SessionState(
        id="s1", subject=subject, created=created, last_seen=last_seen, events=events
    )


def make_env(
    *,
    attributes: Mapping[str, Any] | None = None,
    session: SessionState | None = None,
    risk: RiskAssessment = NO_RISK,
    now: float = NOW,
    client_ip: str = "203.0.113.7",
    **fields: str,
) -> EvalEnv:
    request = RequestContext(
        method=fields.pop("method", "POST"),
        host=fields.pop("host", "bank.example.com"),
        path=fields.pop("path", "/payments/transfer"),
        client_ip=client_ip,
        attributes=attributes or {},
        **fields,
    )
    return EvalEnv(request=request, session=session, risk=risk, now=now)


def run(text: str, env: EvalEnv | None = None, **env_args: Any) -> bool:
    compiled = compile_expression(text, attributes=ATTRIBUTES, networks=NETWORKS)
    result = compiled(env or make_env(**env_args))
    assert type(result) is bool
    return result


def fails(text: str, **kwargs: Any) -> ExpressionError:
    kwargs.setdefault("attributes", ATTRIBUTES)
    kwargs.setdefault("networks", NETWORKS)
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, **kwargs)
    return info.value


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    "text",
    [
        "1 == 1",
        "1.50 == 1.5",
        "0 < 0.001",
        "-3 < -2",
        "- 3 == -3",
        "'abc' == \"abc\"",
        "'it\\'s' == \"it's\"",
        "len('a\\\\b') == 3",
        "len('a\\nb\\tc\\r') == 6",
        '\'say "hi"\' == "say \\"hi\\""',
        "true",
        "not false",
        "null == null",
        "30s == 30",
        "5m == 300",
        "2h == 7200",
        "1d == 86400",
        "1w == 7d",
        "500ms == 0.5",
        "1h30m == 5400",
        "1.5h == 90m",
        "1 in [] or true",
    ],
)
def test_literals(text: str) -> None:
    assert run(text) is True


def test_whitespace_and_newlines_are_ignored() -> None:
    assert run("\n  1 <\t2\r\n  and\n 'a' == 'a'  \n") is True


# --------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true or false and false", True),  # and binds tighter than or
        ("(true or false) and false", False),
        ("not false and false", False),  # not binds tighter than and
        ("not (false and false)", True),
        ("not 1 == 2", True),  # comparison binds tighter than not
        ("not not true", True),
        ("false or false or true", True),
        ("true and true and false", False),
        ("false or not false and true", True),
        ("- -2 == 2", True),
        ("-amount < -(1)", True),
        ("-(amount) == -5", True),
    ],
)
def test_precedence(text: str, expected: bool) -> None:
    assert run(text, attributes={"amount": 5}) is expected


def test_comparisons_do_not_chain() -> None:
    error = fails("1 < 2 < 3")
    assert "do not chain" in error.message
    assert (error.line, error.column) == (1, 7)
    assert "do not chain" in fails("1 == 1 != false").message


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
@pytest.mark.parametrize(("left", "right"), [(1, 2), (2, 2), (3, 2), (1.5, 1), (-1, 0)])
def test_number_comparisons_follow_python(op: str, left: float, right: float) -> None:
    ops = {
        "==": operator.eq,
        "!=": operator.ne,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }
    expected = ops[op](left, right)
    assert run(f"{left} {op} {right}") is expected
    assert run(f"amount {op} {right}", attributes={"amount": left}) is expected
    assert run(f"{left} {op} amount", attributes={"amount": right}) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'abc' < 'abd'", True),
        ("'b' > 'abc'", True),
        ("'a' <= 'a'", True),
        ("'a' >= 'b'", False),
        ("'a' != 'b'", True),
        ("session.level >= 'aal2'", False),
    ],
)
def test_string_comparisons(text: str, expected: bool) -> None:
    assert run(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'a' in ['a', 'b']", True),
        ("'c' in ['a', 'b']", False),
        ("'c' not in ['a', 'b']", True),
        ("2 in [1, 2.0]", True),
        ("true in [false]", False),
        ("'x' in []", False),
        ("null in ['a']", False),
        ("'ell' in 'hello'", True),
        ("'ELL' not in 'hello'", True),
        ("'admins' in user.groups", True),
        ("'root' in user.groups", False),
        ("'POST' in ['GET', 'POST',]", True),
        ("request.method in [lower('GET'), 'POST']", True),
        ("request.method in [lower('POST')]", False),
        ("amount in [1, 2, amount]", True),
    ],
)
def test_membership(text: str, expected: bool) -> None:
    env = make_env(session=make_session(), attributes={"amount": 5})
    assert run(text, env) is expected


def test_short_circuit_guards_missing_attributes() -> None:
    env = make_env()
    assert run("has(amount) and amount > 1000", env) is False
    assert run("not has(amount) or amount > 1000", env) is True
    assert run("false and amount > 1 and amount < 2", env) is False
    assert run("true or amount > 1 or amount < 2", env) is True
    with pytest.raises(EvaluationError):
        run("amount > 1 or true", env)
    with pytest.raises(EvaluationError):
        run("true and true and amount > 1", env)


def test_constant_conditions_are_folded() -> None:
    # Fully literal conditions no longer look at the environment at all.
    for text, expected in [("1 in [1, 2]", True), ("not 'a' in ['b']", True), ("2 < 1", False)]:
        assert compile_expression(text).evaluate(None) is expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lower(request.method) == 'post'", True),
        ("upper('abc') == 'ABC'", True),
        ("len(request.method) == 4", True),
        ("len(user.groups) == 2", True),
        ("len([]) == 0", True),
        ("startswith(request.path, '/payments/')", True),
        ("startswith(request.path, '/admin')", False),
        ("endswith(request.host, '.example.com')", True),
        ("contains(user.email, '@example.com')", True),
        ("contains(user.groups, 'staff')", True),
        ("contains(user.groups, 'root')", False),
        ("contains([1, 2], 2)", True),
        ("contains([], 'x')", False),
        ("glob(request.path, '/payments/*')", True),
        ("glob(request.path, '/pay?ents/tr[a-c]nsfer')", True),
        ("glob(request.path, '/p[!a]*')", False),
        ("glob(request.host, '*.example.com')", True),
        ("glob(request.host, '*.example.org')", False),
        ("glob(request.path, payee)", True),
        ("has(amount)", False),
        ("has(payee)", True),
        ("hour() == 22", True),
    ],
)
def test_functions(text: str, expected: bool) -> None:
    env = make_env(session=make_session(), attributes={"payee": "/pay*"})
    assert NOW // 3600 % 24 == 22
    assert run(text, env) is expected


@pytest.mark.parametrize(
    ("now", "hour"),
    [(0.0, 0), (3599.9, 0), (3600.0, 1), (86399.0, 23), (86400.0 * 365 + 5 * 3600, 5), (-1.0, 23)],
)
def test_hour_is_utc_hour_of_now(now: float, hour: int) -> None:
    assert run(f"hour() == {hour}", now=now) is True


def test_hour_of_a_non_finite_time_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError):
        run("hour() < 6", now=math.nan)


def test_has_treats_none_as_absent() -> None:
    assert run("has(amount)", attributes={"amount": None}) is False
    assert run("has(amount)", attributes={"amount": 0}) is True


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("*", "", True),
        ("*", "anything/at/all", True),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXcYYb", False),
        ("a*a*a*a*a*b", "a" * 3000, False),  # no catastrophic backtracking
        ("[", "[", True),
        ("[!]", "[!]", True),
        ("[]]", "]", True),
        ("[!a-c]", "d", True),
        ("[!a-c]", "b", False),
        ("[z-a]", "z", False),
        ("a?c", "a\nc", True),
        ("*.txt", "notes.txt", True),
        ("**", "x/y", True),
        ("ab*", "a", False),
        ("*ab", "b", False),
        ("a*ab", "ab", False),
    ],
)
def test_glob(pattern: str, text: str, expected: bool) -> None:
    env = make_env(attributes={"payee": text})
    assert run(f"glob(payee, '{pattern}')", env) is expected
    assert fnmatch.fnmatchcase(text, pattern) is expected


@settings(max_examples=300, deadline=None)
@given(pattern=st.text(alphabet="ab-!]*?[", max_size=8), text=st.text(alphabet="ab-!]", max_size=8))
def test_glob_agrees_with_fnmatch(pattern: str, text: str) -> None:
    env = make_env(attributes={"payee": text, "tags": [pattern]})
    literal = pattern.replace("\\", "\\\\").replace("'", "\\'")
    expected = fnmatch.fnmatchcase(text, pattern)
    assert run(f"glob(payee, '{literal}')", env) is expected


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("amount > 'x'", "expected a number on the right of '>', got string 'x'", 1, 10),
        ("'a' < 1", "expected a string on the right of '<', got number 1", 1, 7),
        ("true < false", "expected a number or a string on the left of '<', got bool true", 1, 1),
        ("null < 1", "got null", 1, 1),
        ("1 == 'a'", "expected a number on the right of '==', got string 'a'", 1, 6),
        ("1 and true", "expected true or false on the left of 'and', got number 1", 1, 1),
        ("true or 'x'", "expected true or false on the right of 'or', got string 'x'", 1, 9),
        ("not 'x'", "expected true or false after 'not', got string 'x'", 1, 5),
        ("amount", "expected a condition that is true or false, got number amount", 1, 1),
        (
            "1 in ['a']",
            "expected a string on the left of 'in' (the list holds strings), got number 1",
            1,
            1,
        ),
        ("'a' in 5", "expected a list, a string or a network name on the right of 'in'", 1, 8),
        ("1 in 'abc'", "expected a string on the left of 'in' (the right is a string)", 1, 1),
        ("user.groups in user.groups", "expected a single value on the left of 'in'", 1, 1),
        ("[1, 'a'] == 1", "list items must all have one type", 1, 5),
        ("1 in [[1]]", "list items must be strings, numbers or true/false", 1, 7),
        ("1 in [null]", "list items must be strings, numbers or true/false", 1, 7),
        ("user.groups == ['a']", "cannot compare lists with '=='", 1, 1),
        ("-'a' < 1", "expected a number after '-'", 1, 2),
        ("lower(1) == 'a'", "expected a string as argument 1 of lower(), got number 1", 1, 7),
        ("len(1) == 1", "expected a string or a list as argument 1 of len()", 1, 5),
        ("startswith('a', 1)", "expected a string as argument 2 of startswith()", 1, 17),
        ("contains(user.groups, 1)", "as argument 2 of contains()", 1, 23),
        ("contains(1, 1)", "as argument 1 of contains()", 1, 10),
        ("glob(request.path, 1)", "as argument 2 of glob()", 1, 20),
        ("lower('a', 'b') == 'a'", "lower() takes 1 argument, got 2", 1, 1),
        ("hour(1) == 1", "hour() takes 0 arguments, got 1", 1, 1),
        ("lowr('A') == 'a'", "unknown function 'lowr' (did you mean 'lower'?)", 1, 1),
        ("__import__('os')", "unknown function '__import__'", 1, 1),
        ("request.lower('A')", "unknown function 'request.lower'", 1, 1),
        ("amount(1) > 1", "'amount' is a name, not a function", 1, 1),
        ("has('amount')", "expected a declared attribute name as argument 1 of has()", 1, 5),
        ("has(amout)", "got amout (did you mean 'amount'?)", 1, 5),
        ("has(request.method)", "expected a declared attribute name", 1, 5),
        ("amout > 1000", "unknown name 'amout' (did you mean 'amount'?)", 1, 1),
        ("risk.levle == 'high'", "unknown name 'risk.levle' (did you mean 'risk.level'?)", 1, 1),
        ("True", "unknown name 'True' (did you mean 'true'?)", 1, 1),
        ("network in ofice", "unknown name 'ofice' (did you mean 'office'?)", 1, 12),
        ("zzzzzz", "unknown name 'zzzzzz'", 1, 1),
        (
            "network == 5",
            "expected an IP address or a quoted IP address literal, got number 5",
            1,
            12,
        ),
        ("network == 'not-an-ip'", "expected an IP address, got 'not-an-ip'", 1, 12),
        ("network < 'a'", "expected a number or a string on the left of '<', got ip network", 1, 1),
        ("network in user.groups", "expected a network name or a list of quoted CIDRs", 1, 12),
        ("network in ['10.0.0.0/33']", "expected a network such as '10.0.0.0/8'", 1, 13),
        ("network in ['10.0.0.1/8']", "has host bits set", 1, 13),
        ("office == 1", "network 'office' can only be used on the right of 'in'", 1, 1),
        ("request.method in office", "expected an IP address (network, ip or request.ip)", 1, 1),
        ("1 in [office]", "network 'office' can only be used on the right of 'in'", 1, 7),
        ("network in [1]", "expected a network name or a list of quoted CIDRs", 1, 12),
    ],
)
def test_type_and_name_errors(text: str, message: str, line: int, column: int) -> None:
    error = fails(text)
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    assert str(error) == f"{line}:{column}: {error.message}"


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "expected a value, got the end of the condition", 1),
        ("   ", "expected a value, got the end of the condition", 4),
        ("amount > ", "expected a value, got the end of the condition", 10),
        ("amount > 1000 payee", "unexpected 'payee' after a complete condition", 15),
        ("amount > 1000 5", "unexpected number 5 after a complete condition", 15),
        ("amount > 1000 'x'", "unexpected string 'x' after a complete condition", 15),
        ("amount = 1", "'=' is not an operator (did you mean '=='?)", 8),
        ("true && true", "'&&' is not an operator (use 'and')", 6),
        ("true || true", "'||' is not an operator (use 'or')", 6),
        ("true & true", "use 'and'", 6),
        ("true | true", "use 'or'", 6),
        ("!true", "'!' is not an operator (use 'not', or '!=')", 1),
        ("amount > $5", "unexpected character '$'", 10),
        ("payee == 'abc", "unterminated string (expected a closing ')", 10),
        ("payee == 'a\nb'", "unterminated string", 10),
        ("payee == 'a\\", "unterminated string", 10),
        ("payee == 'a\\qb'", "unknown escape '\\q' in a string", 12),
        ("amount > 5x", "invalid number '5x'", 10),
        ("session.age > 5min", "invalid number '5min' (durations look like 30s, 5m, 2h or 1d)", 15),
        ("amount > 1.", "invalid number '1.' (expected digits after the '.')", 10),
        ("amount > 1.2.3", "invalid number '1.2.'", 10),
        ("request.", "expected a name after '.', got the end of the condition", 9),
        ("amount > .5", "expected a value, got '.'", 10),
        ("(amount > 1", "expected ')' to close the '(' at 1:1, got the end of the condition", 12),
        ("lower('a'", "expected ')' or ',' to close the arguments", 10),
        ("lower('a',) == 'a'", "expected a value, got ')'", 11),
        ("1 in [1, 2", "expected ']' or ',' to close the list", 11),
        ("1 in [", "expected a value, got the end", 7),
        ("request. method == 'a'", "", 1),
        ("request.and == 'a'", "expected a name after '.', got 'and'", 9),
        ("and", "expected a value, got 'and'", 1),
        ("1 == not true", "expected a value, got 'not'", 6),
        ("not in ['a']", "expected a value, got 'in'", 5),
        ("amount > 1 not true", "unexpected 'not' after a complete condition", 12),
        ("amount > " + "9" * 41, "number literal is too long", 10),
    ],
)
def test_syntax_errors(text: str, message: str, column: int) -> None:
    if text.startswith("request. method"):
        assert run("request. method == 'POST'") is True  # spaces around '.' are allowed
        return
    error = fails(text)
    assert message in error.message
    assert (error.line, error.column) == (1, column)


def test_errors_report_line_and_column_on_multi_line_input() -> None:
    text = "risk.score > 10 and\n    amount > 'x'"
    error = fails(text)
    assert error.message == "expected a number on the right of '>', got string 'x'"
    assert (error.line, error.column) == (2, 14)

    text = "(request.method == 'POST'\n and (amout > 5\n      or true))"
    error = fails(text)
    assert "did you mean 'amount'" in error.message
    assert (error.line, error.column) == (2, 7)

    error = fails("true and\n\n  'unterminated")
    assert (error.line, error.column) == (3, 3)

    error = fails("(true\n and false")
    assert error.message.startswith("expected ')' to close the '(' at 1:1")
    assert (error.line, error.column) == (2, 11)


def test_deep_nesting_is_an_expression_error() -> None:
    assert run("(" * 40 + "true" + ")" * 40) is True
    for text in [
        "(" * 200 + "true" + ")" * 200,
        "not " * 500 + "true",
        "-" * 500 + "1 == 1",
        "[" * 100 + "]" * 100,
        "lower(" * 100 + "'a'" + ")" * 100,
    ]:
        assert "nested too deeply" in fails(text).message


def test_long_flat_conditions_compile_without_recursion() -> None:
    text = " and ".join(["amount > 1"] * 600)
    assert run(text, attributes={"amount": 2}) is True
    assert run(" or ".join(["amount > 5"] * 600), attributes={"amount": 2}) is False


def test_overlong_text_is_refused() -> None:
    assert "longer than" in fails("true or " * 2000 + "true").message


def test_huge_duration_literal_is_refused() -> None:
    assert "too large" in fails("session.age > " + "9" * 400 + "d").message


def test_attribute_with_unknown_declared_type_is_an_error() -> None:
    error = fails("weight > 1", attributes={"weight": "float"})
    assert "declared with unknown type 'float'" in error.message


def test_name_that_is_both_network_and_attribute_is_an_error() -> None:
    error = fails("network in office", attributes={"office": "string"})
    assert "both a network and an attribute" in error.message


def test_module_never_evaluates_text() -> None:
    import stepguard.core.expression as module

    source = Path(module.__file__).read_text()
    for forbidden in ("eval(", "exec(", "compile(", "__import__", "import ast"):
        assert forbidden not in source.replace("re.compile(", "").replace("_compile(", "")


# --------------------------------------------------------------------------- names and values


def test_request_values() -> None:
    env = make_env(
        method="PATCH",
        host="h.example",
        path="/x",
        scheme="http",
        query="a=1",
        user_agent="UA/1",
        device_id="dev-1",
        action="payments.transfer",
    )
    for text in [
        "request.method == 'PATCH'",
        "request.host == 'h.example'",
        "request.path == '/x'",
        "request.scheme == 'http'",
        "request.query == 'a=1'",
        "request.user_agent == 'UA/1'",
        "request.device == 'dev-1'",
        "request.action == 'payments.transfer'",
        "request.ip == '203.0.113.7'",
        "ip == request.ip",
        "network != '203.0.113.8'",
    ]:
        assert run(text, env) is True, text


def test_no_session_values() -> None:
    env = make_env(session=None)
    for text in [
        "session.level == 'aal0'",
        "not session.authenticated",
        "session.age > 1000d",
        "session.idle > 1000d",
        "session.auth_age > 1000d",
        "len(session.amr) == 0",
        "user.id == ''",
        "user.name == ''",
        "user.email == ''",
        "len(user.groups) == 0",
        "'admins' not in user.groups",
    ]:
        assert run(text, env) is True, text


def test_session_values() -> None:
    events = (
        AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=NOW - 3600),
        AuthEvent(factor="webauthn", amr=("hwk", "user"), level=Level.AAL3, at=NOW - 300),
        AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=NOW - 100),
    )
    env = make_env(session=make_session(*events, created=NOW - 7200, last_seen=NOW - 60))
    for text in [
        "session.level == 'aal3'",
        "session.authenticated",
        "session.age == 2h",
        "session.idle == 1m",
        "session.auth_age == 100",
        "session.auth_age < 5m",
        "'hwk' in session.amr",
        "len(session.amr) == 4",
        "user.id == 'u1'",
        "user.name == 'Ada'",
        "user.email == 'ada@example.com'",
        "'staff' in user.groups",
    ]:
        assert run(text, env) is True, text


def test_session_without_events_is_not_authenticated() -> None:
    env = make_env(session=make_session())
    assert run("session.level == 'aal0' and not session.authenticated", env) is True
    assert run("session.auth_age > 100000d", env) is True
    assert run("session.age == 2h", env) is True


def test_risk_values() -> None:
    risk = RiskAssessment(
        score=65,
        level="high",
        signals=(
            Signal("new_device", 20, "This is a new device"),
            Signal("new_country", 45, "Signed in from a new country"),
        ),
    )
    env = make_env(risk=risk)
    for text in [
        "risk.score == 65",
        "risk.score >= 60",
        "risk.level == 'high'",
        "'new_device' in risk.signals",
        "'impossible_travel' not in risk.signals",
        "'This is a new device' in risk.reasons",
        "len(risk.reasons) == 2",
    ]:
        assert run(text, env) is True, text
    assert run("risk.level == 'low' and risk.score == 0") is True


def test_compiled_expression_metadata() -> None:
    compiled = compile_expression(
        "amount > 1000 and has(payee) and not network in office and risk.level == 'high' "
        "and lower(request.method) == 'post'",
        attributes=ATTRIBUTES,
        networks=NETWORKS,
    )
    assert isinstance(compiled, CompiledExpression)
    assert compiled.source.startswith("amount > 1000")
    assert compiled.names == {
        "amount",
        "payee",
        "network",
        "office",
        "risk.level",
        "request.method",
    }
    assert compiled.attributes == {"amount", "payee"}
    assert compiled.networks == {"office"}
    assert "amount" in repr(compiled)


def test_name_types_cover_the_schema() -> None:
    assert NAME_TYPES["request.ip"] == "ip"
    assert NAME_TYPES["user.groups"] == "list"
    assert NAME_TYPES["session.auth_age"] == "number"
    for name in NAME_TYPES:  # every documented name compiles
        kind = NAME_TYPES[name]
        text = {
            "string": f"{name} == ''",
            "number": f"{name} >= 0",
            "bool": f"{name} == true",
            "list": f"len({name}) >= 0",
            "ip": f"{name} in office",
        }[kind]
        compile_expression(text, networks=NETWORKS)


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize(
    ("client_ip", "in_office", "in_vpn"),
    [
        ("10.1.2.3", True, False),
        ("192.0.2.55", False, True),
        ("2001:db8::1", True, False),
        ("2001:db9::1", False, False),
        ("::ffff:10.1.2.3", True, False),  # IPv4-mapped IPv6 is the IPv4 address
        ("203.0.113.7", False, False),
        ("", False, False),
        ("not-an-ip", False, False),
        ("10.1.2.3.4", False, False),
    ],
)
def test_named_networks(client_ip: str, in_office: bool, in_vpn: bool) -> None:
    env = make_env(client_ip=client_ip)
    assert run("network in office", env) is in_office
    assert run("ip in vpn", env) is in_vpn
    assert run("not network in office", env) is (not in_office)
    assert run("request.ip not in office", env) is (not in_office)
    assert run("network in office or network in vpn", env) is (in_office or in_vpn)


def test_cidr_list_literals() -> None:
    text = "network in ['10.0.0.0/8', '2001:db8::/32', '198.51.100.7']"
    assert run(text, client_ip="10.9.9.9") is True
    assert run(text, client_ip="2001:db8:1::5") is True
    assert run(text, client_ip="198.51.100.7") is True
    assert run(text, client_ip="198.51.100.8") is False
    assert run(text, client_ip="") is False
    assert run("network in []", client_ip="10.0.0.1") is False


def test_empty_named_network_matches_nothing() -> None:
    compiled = compile_expression("network in nowhere", networks={"nowhere": []})
    assert compiled(make_env(client_ip="10.0.0.1")) is False


def test_ip_equality_on_a_bad_client_ip_is_an_evaluation_error() -> None:
    for text in [
        "request.ip == '10.0.0.1'",
        "network != '10.0.0.1'",
        "'10.0.0.1' == ip",
        "ip == request.ip",
    ]:
        with pytest.raises(EvaluationError):
            run(text, client_ip="garbage")
    assert run("request.ip == '::ffff:10.0.0.1'", client_ip="10.0.0.1") is True
    assert run("ip == null", client_ip="10.0.0.1") is False


def test_client_ip_is_parsed_once() -> None:
    env = make_env(client_ip="10.0.0.1")
    first = env.client_address
    assert first is env.client_address
    assert str(first) == "10.0.0.1"


# --------------------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1500, True),
        (1000, False),
        (1000.5, True),
        (Decimal("1000.01"), True),
        ("1200.50", True),
        (" 1001 ", True),
        ("-5", False),
        ("+1001", True),
        ("1000", False),
        ("1000.000001", True),
        (Decimal("1000"), False),
        (Decimal("1000.5"), True),
        (10**30, True),
    ],
)
def test_number_attribute_coercion(value: object, expected: bool) -> None:
    assert run("amount > 1000", attributes={"amount": value}) is expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        "nan",
        "NaN",
        "inf",
        float("nan"),
        float("inf"),
        Decimal("NaN"),
        "1e5",
        "1_000",
        "",
        "12abc",
        "0x10",
        [1],
        {"a": 1},
        "٣",
    ],
)
def test_uncoercible_numbers_are_evaluation_errors(value: object) -> None:
    with pytest.raises(EvaluationError, match="'amount' is not a number"):
        run("amount > 1000", attributes={"amount": value})


def test_missing_attribute_is_an_evaluation_error() -> None:
    for attributes in [{}, {"amount": None}]:
        with pytest.raises(EvaluationError, match="'amount' is not given"):
            run("amount > 1000", attributes=attributes)
    with pytest.raises(EvaluationError):
        run("payee == 'x'")
    with pytest.raises(EvaluationError):
        run("urgent")
    with pytest.raises(EvaluationError):
        run("'a' in tags")


def test_evaluation_errors_never_echo_the_value() -> None:
    with pytest.raises(EvaluationError) as info:
        run("amount > 1000", attributes={"amount": "s3cr3t-token"})
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("FALSE", False),
        (" True ", True),
    ],
)
def test_bool_attribute_coercion(value: object, expected: bool) -> None:
    assert run("urgent", attributes={"urgent": value}) is expected
    assert run("urgent == true", attributes={"urgent": value}) is expected


@pytest.mark.parametrize("value", ["yes", "1", 1, 0, "", [True]])
def test_uncoercible_bools_are_evaluation_errors(value: object) -> None:
    with pytest.raises(EvaluationError, match="not true or false"):
        run("urgent", attributes={"urgent": value})


def test_string_and_list_attributes() -> None:
    assert run("payee == 'ACME'", attributes={"payee": "ACME"}) is True
    assert run("len(payee) == 0", attributes={"payee": ""}) is True
    for value in [5, b"ACME", ["ACME"]]:
        with pytest.raises(EvaluationError, match="not a string"):
            run("payee == 'ACME'", attributes={"payee": value})
    for value in [["a", "b"], ("a", "b"), {"a", "b"}, frozenset({"a", "b"})]:
        assert run("'a' in tags and len(tags) == 2", attributes={"tags": value}) is True
    for value in ["a", ["a", 1], {"a": 1}, 5]:
        with pytest.raises(EvaluationError, match="not a list of strings"):
            run("'a' in tags", attributes={"tags": value})


def test_attribute_of_other_type_compared_with_null() -> None:
    assert run("amount == null", attributes={"amount": 5}) is False
    assert run("null != payee", attributes={"payee": "x"}) is True


# --------------------------------------------------------------------------- properties


_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_numbers = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.decimals(
        min_value=-(10**6), max_value=10**6, places=3, allow_nan=False, allow_infinity=False
    ),
)


def _number_text(value: int | Decimal) -> str:
    text = format(value, "f")
    return text if text.lstrip("-").replace(".", "", 1).isdigit() else str(value)


@st.composite
def _comparison(draw: st.DrawFn) -> tuple[str, bool, dict[str, str]]:
    left, right = draw(_numbers), draw(_numbers)
    op = draw(st.sampled_from(sorted(_OPS)))
    attributes: dict[str, str] = {}
    left_text = _number_text(left)
    if draw(st.booleans()):  # read one side from a request attribute sent as a string
        attributes["amount"] = left_text
        left_text = "amount"
    return f"{left_text} {op} {_number_text(right)}", bool(_OPS[op](left, right)), attributes


@st.composite
def _condition(draw: st.DrawFn, depth: int = 0) -> tuple[str, bool, dict[str, str]]:
    kind = draw(
        st.sampled_from(["cmp", "cmp", "not", "and", "or", "paren"] if depth < 4 else ["cmp"])
    )
    if kind == "cmp":
        return draw(_comparison())
    left_text, left, left_attrs = draw(_condition(depth + 1))
    if kind == "not":
        return f"not ({left_text})", not left, left_attrs
    if kind == "paren":
        return f"({left_text})", left, left_attrs
    right_text, right, right_attrs = draw(_condition(depth + 1))
    if "amount" in left_attrs and "amount" in right_attrs:
        right_attrs = {}
        right_text, right = ("true", True) if draw(st.booleans()) else ("false", False)
    value = (left and right) if kind == "and" else (left or right)
    return f"({left_text}) {kind} ({right_text})", value, {**left_attrs, **right_attrs}


@settings(max_examples=200, deadline=None)
@given(_condition())
def test_random_comparisons_agree_with_python(case: tuple[str, bool, dict[str, str]]) -> None:
    text, expected, attributes = case
    compiled = compile_expression(text, attributes={"amount": "number"})
    assert compiled(make_env(attributes=attributes)) is expected


_JUNK_ALPHABET = st.sampled_from(
    list("()[],.'\"\\-=!<>&|$ \n\t01259smhdx_")
    + [
        " and ",
        " or ",
        " not ",
        " in ",
        "true",
        "false",
        "null",
        "amount",
        "payee",
        "tags",
        "urgent",
        "network",
        "office",
        "request.method",
        "user.groups",
        "risk.score",
        "session.age",
        "lower",
        "len",
        "glob",
        "has",
        "hour",
        "contains",
        "'10.0.0.0/8'",
        "'a'",
        "1000",
        "5m",
        "==",
        "<=",
        ">=",
        "!=",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_JUNK_ALPHABET, max_size=25).map("".join), st.text(max_size=40)))
def test_junk_compiles_or_raises_expression_error(text: str) -> None:
    try:
        compiled = compile_expression(text, attributes=ATTRIBUTES, networks=NETWORKS)
    except ExpressionError as error:
        assert error.line >= 1 and error.column >= 1
        assert error.line <= text.count("\n") + 1
        return
    env = make_env(
        attributes={"amount": "12", "payee": "x", "tags": ["a"], "urgent": "true"},
        session=make_session(),
        client_ip="10.0.0.1",
    )
    with contextlib.suppress(EvaluationError):
        assert type(compiled(env)) is bool


def test_error_messages_quote_short_excerpts() -> None:
    # Error messages quote the offending source, shortened, never more than a short excerpt.
    error = fails("payee == " + "x" * 500)
    assert len(error.message) < 200
    assert re.search(r"unknown name 'x+…'", error.message)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "'" + escaped.replace("\r", "\\r") + "'"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_string_literals_round_trip(value: str) -> None:
    assert run(f"payee == {_quote(value)}", attributes={"payee": value}) is True
    assert run(f"len({_quote(value)}) == {len(value)}") is True


_LEAVES = {
    "number": [
        "amount",
        "risk.score",
        "session.age",
        "session.idle",
        "session.auth_age",
        "hour()",
        "1000",
        "0.5",
        "-3",
        "5m",
        "1h30m",
    ],
    "string": [
        "payee",
        "request.method",
        "request.path",
        "user.email",
        "session.level",
        "risk.level",
        "'aal2'",
        "'/pay*'",
        "''",
    ],
    "list": ["tags", "user.groups", "session.amr", "risk.signals", "['a', 'staff']", "[]"],
    "bool": [
        "true",
        "false",
        "urgent",
        "session.authenticated",
        "has(amount)",
        "network in office",
        "ip not in ['10.0.0.0/8', '2001:db8::/32']",
        "request.ip == '10.0.0.1'",
    ],
}


_SHAPES = {
    "number": [("len({})", "string"), ("len({})", "list"), ("-{}", "number")],
    "string": [("lower({})", "string"), ("upper({})", "string")],
    "list": [],
    "bool": [
        ("{} OP {}", "number number"),
        ("{} OP {}", "string string"),
        ("{} in {}", "string list"),
        ("{} not in {}", "string string"),
        ("{} == {}", "bool bool"),
        ("not {}", "bool"),
        ("{} and {}", "bool bool"),
        ("{} or {}", "bool bool"),
        ("startswith({}, {})", "string string"),
        ("endswith({}, {})", "string string"),
        ("contains({}, {})", "list string"),
        ("contains({}, {})", "string string"),
        ("glob({}, {})", "string string"),
    ],
}


@st.composite
def _well_typed(draw: st.DrawFn, kind: str = "bool", depth: int = 0) -> str:
    if depth >= 3 or not _SHAPES[kind] or draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(_LEAVES[kind]))
    shape, kinds = draw(st.sampled_from(_SHAPES[kind]))
    parts = ["(" + draw(_well_typed(sub_kind, depth + 1)) + ")" for sub_kind in kinds.split()]
    return shape.replace("OP", draw(st.sampled_from(sorted(_OPS)))).format(*parts)


_attribute_values = st.one_of(
    st.none(),
    st.integers(-5, 5000),
    st.text(max_size=6),
    st.booleans(),
    st.floats(),
    st.lists(st.text(max_size=3), max_size=3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=_well_typed(),
    values=st.dictionaries(st.sampled_from(sorted(ATTRIBUTES)), _attribute_values),
    with_session=st.booleans(),
    client_ip=st.sampled_from(["10.0.0.1", "2001:db8::5", "", "junk", "::ffff:10.0.0.1"]),
)
def test_well_typed_conditions_evaluate_to_bool_or_evaluation_error(
    text: str, values: dict[str, object], with_session: bool, client_ip: str
) -> None:
    compiled = compile_expression(text, attributes=ATTRIBUTES, networks=NETWORKS)
    session = (
        make_session(AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=NOW - 10))
        if with_session else None
    )
    env = make_env(attributes=values, session=session, client_ip=client_ip)
    with contextlib.suppress(EvaluationError):
        assert type(compiled(env)) is bool
