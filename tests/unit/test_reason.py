"""Reason templates: checking, rendering hostile values, and the flat value mapping."""

from __future__ import annotations

import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepguard.core.context import RequestContext
from stepguard.core.reason import (
    NOT_GIVEN,
    REASON_NAMES,
    VALUE_LIMIT,
    check_template,
    reason_values,
    render,
)
from stepguard.core.risk import RiskAssessment, Signal

KNOWN = REASON_NAMES | {"amount", "payee"}


# --------------------------------------------------------------------------- check_template


@pytest.mark.parametrize(
    "template",
    [
        "Approve a transfer of {amount} to {payee}",
        "{risk.reasons}",
        "Literal {{braces}} and {amount}",
        "}}{{",
        "",
        "No placeholders at all",
        "{request.method} {request.path} from {request.ip}",
    ],
)
def test_valid_templates_have_no_problems(template: str) -> None:
    assert check_template(template, known=KNOWN) == []


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("Pay {amout}", "unknown placeholder {amout} at column 5 (did you mean {amount}?)"),
        ("{zzz}", "unknown placeholder {zzz} at column 1"),
        ("{__class__}", "unknown placeholder {__class__}"),
        ("{0}", "{0}: positional placeholders are not allowed"),
        ("{}", "an empty placeholder {} (write '{{}}' for literal braces) at column 1"),
        ("{amount:>10}", "{amount:>10}: format specs are not allowed"),
        ("{amount!r}", "{amount!r}: conversions such as !r are not allowed"),
        ("{payee[0]}", "{payee[0]}: indexing is not allowed"),
        ("{amount.__class__.__mro__}", "unknown placeholder {amount.__class__.__mro__}"),
        ("{amount }", "{amount } is not a name"),
        ("{a-b}", "{a-b} is not a name"),
        ("Pay {amount", "an unclosed '{' (write '{{' for a literal brace) at column 5"),
        ("Pay {amount {payee}", "an unclosed '{' (write '{{' for a literal brace) at column 5"),
        ("Pay amount}", "a single '}' (write '}}' for a literal brace) at column 11"),
        ("{{amout}} {amout}", "unknown placeholder {amout} at column 11"),
    ],
)
def test_template_problems(template: str, fragment: str) -> None:
    problems = check_template(template, known=KNOWN)
    assert any(fragment in problem for problem in problems), problems


def test_every_problem_is_reported() -> None:
    problems = check_template("{a} {0} {b:x} }", known=[])
    assert len(problems) == 4


# --------------------------------------------------------------------------- render


def test_render_replaces_placeholders() -> None:
    text = render("Approve a transfer of {amount} to {payee}", {"amount": 1200, "payee": "ACME"})
    assert text == "Approve a transfer of 1200 to ACME"
    assert render("{{literal}} {x}}}", {"x": "v"}) == "{literal} v}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1200, "1200"),
        (1200.0, "1200"),
        (1200.5, "1200.5"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (1e22, "10000000000000000000000"),
        (-3.25, "-3.25"),
        (float("nan"), "(not a number)"),
        (float("inf"), "infinity"),
        (float("-inf"), "-infinity"),
        (Decimal("1200.50"), "1200.50"),
        (Decimal("NaN"), "(not a number)"),
        ("1200.50", "1200.50"),
        (True, "yes"),
        (False, "no"),
        (None, NOT_GIVEN),
        ("", "(none)"),
        ([], "(none)"),
        (["a", "b"], "a, b"),
        (("a", 1, 2.5), "a, 1, 2.5"),
        ({"b", "a"}, "a, b"),
        ([["x", "y"], "z"], "x, y, z"),
        (b"caf\xc3\xa9 \xff", "café \ufffd"),
        ({"k": 1}, "{'k': 1}"),
    ],
)
def test_value_rendering(value: object, shown: str) -> None:
    assert render("{v}", {"v": value}) == shown


def test_missing_values_render_as_not_given() -> None:
    assert render("to {payee}", {}) == f"to {NOT_GIVEN}"


def test_risk_reasons_join_with_semicolons() -> None:
    values = {"risk.reasons": ("New device", "New country"), "tags": ("a", "b")}
    assert render("{risk.reasons}", values) == "New device; New country"
    assert render("{tags}", values) == "a, b"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "[31mred[0m"),
        ("line1\nline2\r\nline3\tend", "line1 line2  line3 end"),
        ("pay\u202eevil\u202c", "payevil"),  # bidi override removed
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("nul\x00byte\x7f\x9b", "nulbyte"),
        ("\x1b\x07", "(none)"),
        ("\ud800lone surrogate", "lone surrogate"),
        ("non\u00a0breaking", "non\u00a0breaking"),
    ],
)
def test_control_characters_are_removed(value: str, shown: str) -> None:
    assert render("{v}", {"v": value}) == shown


def test_long_values_are_cut() -> None:
    assert render("{v}", {"v": "x" * VALUE_LIMIT}) == "x" * VALUE_LIMIT
    assert render("{v}", {"v": "x" * (VALUE_LIMIT + 1)}) == "x" * VALUE_LIMIT + "…"
    assert render("{v}", {"v": "y" * 1_000_000}) == "y" * VALUE_LIMIT + "…"
    many = render("{v}", {"v": ["item"] * 100_000})
    assert many.endswith("…") and len(many) == VALUE_LIMIT + 1
    # Control characters are removed before counting.
    assert render("{v}", {"v": "\x1b" * 300 + "ok"}) == "ok"


def test_hostile_templates_and_values_render_literally() -> None:
    values = {"amount": "{payee}", "payee": "secret", "__class__": "x"}
    # A value is never re-rendered as a template.
    assert render("{amount}", values) == "{payee}"
    # Bad placeholders are kept literally (check_template reports them at load time).
    assert render("{0} {amount!r} {amount:>9} {payee[0]} {", values) == (
        "{0} {amount!r} {amount:>9} {payee[0]} {"
    )
    assert render("{__class__.__init__}", values) == NOT_GIVEN
    assert render("}", values) == "}"


class _Exploding:
    def __str__(self) -> str:
        raise RuntimeError("boom")


class _BadMapping(dict[str, object]):
    def get(self, key: str, default: object = None) -> object:
        raise KeyError(key)


def test_render_never_raises_on_user_data() -> None:
    assert render("{v}", {"v": _Exploding()}) == "(unprintable)"
    assert render("{v}", {"v": 10**5000}) == "(unprintable)"
    assert render("a {v} b", _BadMapping()) == "a (unprintable) b"


@settings(max_examples=100, deadline=None)
@given(
    template=st.text(alphabet="{}ab.:!0[] ", max_size=20),
    values=st.dictionaries(
        st.text(max_size=3),
        st.one_of(
            st.none(),
            st.text(),
            st.integers(),
            st.floats(),
            st.booleans(),
            st.lists(st.text(max_size=5), max_size=5),
            st.decimals(),
            st.binary(max_size=8),
        ),
    ),
)
def test_render_and_check_never_raise(template: str, values: dict[str, object]) -> None:
    text = render(template, values)
    assert isinstance(text, str)
    for problem in check_template(template, known=values):
        assert isinstance(problem, str)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_rendered_values_have_no_control_characters(value: str) -> None:
    text = render("{v}", {"v": value})
    assert not [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert len(text) <= VALUE_LIMIT + 1


# --------------------------------------------------------------------------- reason_values


def test_reason_values() -> None:
    context = RequestContext(
        method="POST",
        host="bank.example.com",
        path="/payments",
        scheme="https",
        query="token=s3cret",
        client_ip="203.0.113.7",
        user_agent="UA/1",
        device_id="d1",
        action="payments.transfer",
        attributes={"amount": "1200.50", "payee": "ACME", "risk.level": "spoofed", 7: "x"},  # type: ignore[dict-item]
    )
    risk = RiskAssessment(
        score=65,
        level="high",
        signals=(
            Signal("new_device", 20, "This is a new device"),
            Signal("new_country", 45, "Signed in from a new country"),
        ),
    )
    values = reason_values(context=context, risk=risk)
    assert values["amount"] == "1200.50"
    assert values["payee"] == "ACME"
    assert values["request.method"] == "POST"
    assert values["request.host"] == "bank.example.com"
    assert values["request.path"] == "/payments"
    assert values["request.scheme"] == "https"
    assert values["request.ip"] == "203.0.113.7"
    assert values["request.user_agent"] == "UA/1"
    assert values["request.device"] == "d1"
    assert values["request.action"] == "payments.transfer"
    assert values["risk.level"] == "high"  # built-ins win over attributes
    assert values["risk.score"] == 65
    assert values["risk.reasons"] == ("This is a new device", "Signed in from a new country")
    assert all(isinstance(key, str) for key in values)
    assert "request.query" not in values  # query strings may carry tokens
    assert set(values) - {"amount", "payee"} == REASON_NAMES
    assert render("Approve {amount} to {payee}: {risk.reasons}", values) == (
        "Approve 1200.50 to ACME: This is a new device; Signed in from a new country"
    )
