"""Policy attributes as people read them (issue 15): labels per language and a currency."""

from __future__ import annotations

import pytest

from stepguard.core.display import AttributeDisplay
from stepguard.core.errors import PolicyError
from stepguard.core.policy import compile_policy
from stepguard.web.text import bound_view, money

RULES = {"rules": [{"name": "r", "match": {"paths": ["/t"]}, "when": "amount > 1",
                    "require": {"level": "aal2", "bind": ["amount", "payee"]}}]}


def test_attributes_carry_labels_and_a_currency() -> None:
    policy = compile_policy({**RULES, "attributes": {
        "amount": {"type": "number", "label": {"en": "Amount", "DE": "Betrag"},
                   "currency": "EUR"},
        "payee": {"type": "string", "label": "Payee"},
    }})
    assert policy.attributes == {"amount": "number", "payee": "string"}
    amount, payee = policy.display["amount"], policy.display["payee"]
    assert (amount.label("amount", "de"), amount.label("amount", "fr")) == ("Betrag", "Amount")
    assert payee.label("payee", "de") == "Payee" and amount.currency == "EUR"
    assert AttributeDisplay().label("payee_iban") == "Payee iban"
    assert bound_view([("amount", "2500"), ("payee", "Carol")], policy.display, "de") == [
        ("Betrag", "2.500,00\xa0€"), ("Payee", "Carol")]
    assert bound_view([("amount", "2500")], policy.display) == [("Amount", "€2,500.00")]


@pytest.mark.parametrize("value", ["(not given)", "nan", "inf", "1e999"])
def test_an_amount_that_is_not_a_number_is_shown_as_it_is(value: str) -> None:
    assert money(value, "EUR") == value


@pytest.mark.parametrize(("spec", "problem"), [
    ({"type": "number", "currency": "euro"}, "ISO 4217"),
    ({"type": "number", "currency": 5}, "ISO 4217"),
    ({"type": "number", "label": ["Amount"]}, "label"),
    ({"type": "number", "label": {"en": 3}}, "label"),
    ({"type": "number", "colour": "red"}, "unknown key"),
    ({"type": "decimal"}, "expected one of"),
])
def test_a_wrong_display_is_reported_with_its_path(spec: dict[str, object], problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({**RULES, "attributes": {"amount": spec, "payee": "string"}})
    assert problem in str(caught.value) and "attributes" in str(caught.value)
