"""A rule's reason per language (issue 15): `reason: {en: ..., de: ...}` in the policy; the
decision carries the rule's reason rendered in each language, the default (English, else the
first given) stays the one the ledger, the decision API and RFC 9470 answers use."""

from __future__ import annotations

from typing import Any

import pytest

from stepguard.core.context import RequestContext
from stepguard.core.decide import decide
from stepguard.core.decision import Outcome
from stepguard.core.errors import PolicyError
from stepguard.core.policy import compile_policy
from stepguard.web.text import reasons_in
from tests.unit.test_decide_reasons import NOW, PASSWORD, decision_for

TRANSFER = {"en": "Approve a transfer of {amount} to {payee}",
            "de": "Überweisung von {amount} an {payee} freigeben"}


def test_each_language_is_rendered_with_the_requests_values() -> None:
    decision = decision_for({"level": "aal2", "reason": TRANSFER}, PASSWORD,
                            amount=5000, payee="Bob")
    assert decision.reasons[0] == "Approve a transfer of 5000 to Bob"
    assert dict(decision.reason_texts) == {"en": "Approve a transfer of 5000 to Bob",
                                           "de": "Überweisung von 5000 an Bob freigeben"}


def test_one_text_means_no_per_language_texts() -> None:
    decision = decision_for({"level": "aal2", "reason": "Approve {amount}"}, PASSWORD,
                            amount=1)
    assert decision.reasons[0] == "Approve 1" and decision.reason_texts == ()


def test_the_default_is_english_else_the_first_given() -> None:
    decision = decision_for({"level": "aal2", "reason": {"de": "Zahlung", "fr": "Paiement"}},
                            PASSWORD)
    assert decision.reasons[0] == "Zahlung"


def test_a_login_step_up_carries_them_too() -> None:
    policy = compile_policy({"rules": [{"name": "r", "match": {"paths": ["/x"]},
                                        "require": {"level": "aal2", "reason": TRANSFER}}],
                             "attributes": {"amount": "number", "payee": "string"}})
    decision = decide(policy, RequestContext(method="GET", host="h", path="/x",
                                             attributes={"amount": 1, "payee": "C"}),
                      None, now=NOW)
    assert decision.outcome is Outcome.STEP_UP and decision.login
    assert dict(decision.reason_texts)["de"] == "Überweisung von 1 an C freigeben"


@pytest.mark.parametrize(("reason", "problem"), [
    ({"english": "x"}, "language code"),
    ({"de": ""}, "expected text"),
    ({"de": 5}, "expected text"),
    ({}, "mapping of language"),
    (["a", "b"], "mapping of language"),
    ({"en": "ok", "de": "Betrag {nope}"}, "nope"),
])
def test_a_wrong_reason_mapping_is_reported_with_its_path(reason: Any, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy({"rules": [{"name": "r", "match": {"paths": ["/x"]},
                                   "require": {"level": "aal2", "reason": reason}}]})
    assert problem in str(caught.value) and "reason" in str(caught.value)


def test_the_page_shows_the_rules_reason_in_its_language() -> None:
    reasons = ("Approve a transfer of 5 to Bob", "Sign in to continue.")
    texts = (("en", "Approve a transfer of 5 to Bob"), ("de", "Überweisung von 5 an Bob"))
    assert reasons_in("de", reasons, texts) == ["Überweisung von 5 an Bob",
                                                "Melden Sie sich an, um fortzufahren."]
    assert reasons_in("en", reasons, texts) == list(reasons)
    assert reasons_in("de", reasons, (("de-at", "Überweisung (AT)"),))[0] == "Überweisung (AT)"
    assert reasons_in("de", reasons)[0] == reasons[0]  # one language only: as written
