"""Issue 9 items 6 and 7: one reading of fields and method overrides, or a 400.

A bound or conditioned field that appears twice (query, form, JSON keys at any level, in any
spelling a framework folds together) is refused; an override of the method is decided on when
configured as honoured, refused otherwise.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepguard.adapters.http_context import effective_method, has_override
from stepguard.core.canonical import field_key, form_pairs, loads_json, single_values
from stepguard.core.errors import BadRequest

# --- field names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [("amount", "amount"), ("Amount", "amount"), ("AMOUNT", "amount"), ("amount[]", "amount"),
     ("amount[x][y]", "amount"), ("pay.ee", "pay_ee"), ("pay ee", "pay_ee"),
     ("\u212aey", "key"),  # Kelvin sign: Go's encoding/json folds it to "k"
     (" amount", "amount"), ("  _method", "_method"),  # PHP drops leading spaces
     ("amount\x00x", "amount")],  # PHP reads a name up to a NUL
)
def test_field_key_folds_the_spellings_frameworks_read_as_one(name: str, key: str) -> None:
    assert field_key(name) == key


def test_form_pairs_decode_once_and_keep_blank_values() -> None:
    assert form_pairs("a=1&b=&c&d=%41+b&%61mount=5") == [
        ("a", "1"), ("b", ""), ("c", ""), ("d", "A b"), ("amount", "5")]


@pytest.mark.parametrize(
    "query",
    ["amount=5000&payee=x&amount=100", "amount=1&Amount=2", "amount=1&amount[]=2",
     "amount[]=1&amount[]=2", "amount=1;amount=2", "%61mount=1&amount=2", "amount=1&AMOUNT=2",
     # PHP ($_GET/$_POST, so Laravel and Symfony) drops leading spaces from a name and stops
     # at a NUL: it reads the second value of each of these as `amount` (the last one wins).
     "amount=100&%20amount=5000", "amount=100&+amount=5000", "amount=100&amount%00x=5000"],
)
def test_a_wanted_field_given_twice_is_refused(query: str) -> None:
    with pytest.raises(BadRequest, match="amount"):
        single_values(form_pairs(query), ["amount", "payee"])


def test_single_values_give_the_one_value_of_each_wanted_field() -> None:
    pairs = form_pairs("amount=5000&payee=Bob&note=a&note=b")
    assert single_values(pairs, ["amount", "payee", "missing"]) == {
        "amount": "5000", "payee": "Bob"}  # `note` is not wanted: repeating it is fine


@pytest.mark.parametrize(
    "body",
    ['{"amount": 5000, "amount": 100}', '{"a": {"amount": 1, "amount": 2}}',
     '[{"x": 1, "x": 2}]', '{"amount": 1, "AMOUNT": 2}', '{"t": {"a": 1}, "t": {"a": 2}}'],
)
def test_json_duplicate_keys_at_any_level_are_refused(body: str) -> None:
    with pytest.raises(BadRequest, match="more than once"):
        loads_json(body.encode())


@pytest.mark.parametrize("body", [b"{", b"\xff", b'{"a": NaN}', b"[" * 10000])
def test_malformed_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        loads_json(body)


def test_json_without_duplicates_loads() -> None:
    assert loads_json(b'{"a": {"b": [1, {"c": 2}]}, "d": null}') == {
        "a": {"b": [1, {"c": 2}]}, "d": None}


@given(st.lists(st.sampled_from(["amount", "Amount", "amount[]", "payee", "x"]), max_size=6),
       st.lists(st.text(alphabet="0123456789", max_size=3), min_size=6, max_size=6))
def test_single_values_never_guess(names: list[str], values: list[str]) -> None:
    pairs = list(zip(names, values, strict=False))
    counts = [field_key(n) for n in names].count("amount")
    if counts > 1:
        with pytest.raises(BadRequest):
            single_values(pairs, ["amount"])
    else:
        assert len(single_values(pairs, ["amount"])) == counts


# --- method overrides -----------------------------------------------------------------------

OVERRIDES = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
             "x-http-method-override", "X_HTTP_Method_Override", "X_METHOD_OVERRIDE"]


@pytest.mark.parametrize("name", OVERRIDES)
def test_an_override_header_is_refused_unless_honoured(name: str) -> None:
    headers = [(name, "DELETE")]
    assert has_override(headers, "")
    with pytest.raises(BadRequest, match="override"):
        effective_method("POST", headers=headers, query="", body=None, honour=False)
    assert effective_method("POST", headers=headers, query="", body=None, honour=True) == "DELETE"


@pytest.mark.parametrize("honour", [False, True])
@pytest.mark.parametrize("query", ["_method=DELETE", "_METHOD=delete", "a=1&_method[]=PUT",
                                   "%20_method=DELETE", "_method%00=DELETE"])
def test_method_in_the_query_is_always_refused(query: str, honour: bool) -> None:
    """Rails reads `_method` from the body only, Symfony also from the query: never one reading."""
    with pytest.raises(BadRequest, match="_method"):
        effective_method("POST", headers=[], query=query, body=None, honour=honour)


def test_method_in_a_form_body_is_the_effective_method_when_honoured() -> None:
    body = form_pairs("_method=patch&a=1")
    assert effective_method("POST", headers=[], query="", body=body, honour=True) == "PATCH"
    with pytest.raises(BadRequest):
        effective_method("POST", headers=[], query="", body=body, honour=False)


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [("GET", [("X-HTTP-Method-Override", "DELETE")], None),  # frameworks ignore it on GET
     ("POST", [("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "GET")], None),
     ("POST", [("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method-Override", "DELETE")], None),
     ("POST", [("X-HTTP-Method-Override", "GET")], [("_method", "DELETE")]),  # Rails: body wins
     ("POST", [("X-HTTP-Method-Override", "DE LETE")], None),
     ("POST", [], [("_method", "PUT"), ("_method", "PUT")])],
)
def test_ambiguous_overrides_are_refused_even_when_honoured(
    method: str, headers: list[tuple[str, str]], body: list[tuple[str, str]] | None
) -> None:
    with pytest.raises(BadRequest):
        effective_method(method, headers=headers, query="", body=body, honour=True)


def test_no_override_is_the_request_method() -> None:
    headers = [("Content-Type", "text/plain"), ("X-Http-Methods", "x")]
    assert not has_override(headers, "method=DELETE")
    assert effective_method("delete", headers=headers, query="method=x", body=[("a", "1")],
                            honour=False) == "DELETE"
