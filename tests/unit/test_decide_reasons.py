"""Every step-up reason is the true one, per requirement kind (issue 9 item 10).

The reason shown on the step-up page and stored in the ledger names what is really missing:
the level, the age of the proof, the method, a grant of the rule's own scope, a single-use or
"just now" approval, or an approval of exactly these bound values.
"""

from __future__ import annotations

from typing import Any

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Decision, Outcome
from stepguard.core.grant import Grant
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.policy import compile_policy

NOW = 1_800_000_000.0
FALSE_AGE = "older than"


def decision_for(require: dict[str, Any], *events: tuple[str, Level, float],
                 grants: tuple[Grant, ...] = (), **attributes: object) -> Decision:
    policy = compile_policy({
        "attributes": {"amount": "number", "payee": "string"},
        "rules": [{"name": "rule", "match": {"paths": ["/x"]}, "require": require}]})
    built = tuple(AuthEvent(factor=f, amr=FACTOR_AMR[f], level=lvl, at=NOW - age)
                  for f, lvl, age in events)
    state = SessionState(id="s1", subject=Subject(id="alice"), created=NOW - 600, last_seen=NOW,
                         events=built)
    context = RequestContext(method="POST", host="h", path="/x", attributes=attributes)
    decision = decide(policy, context, state, grants=grants, now=NOW)
    assert decision.outcome is Outcome.STEP_UP
    return decision


PASSWORD = ("password", Level.AAL1, 900.0)
FRESH_TOTP = ("totp", Level.AAL2, 20.0)


def test_level() -> None:
    decision = decision_for({"level": "aal2", "max_age": "1h"}, PASSWORD)
    assert ("You signed in with your password only; this needs a second proof, such as a "
            "passkey or a code from your authenticator app." in decision.reasons)
    assert not any("aal" in r for r in decision.reasons)  # plain words only
    assert not any(FALSE_AGE in r for r in decision.reasons)


def test_age() -> None:
    decision = decision_for({"level": "aal2", "max_age": "1h"}, PASSWORD,
                            ("totp", Level.AAL2, 2 * 3600.0))
    assert "Your last sign-in at this level is older than 1 hour." in decision.reasons


def test_method() -> None:
    decision = decision_for({"level": "aal2", "max_age": "15m", "methods": ["webauthn"]},
                            PASSWORD, FRESH_TOTP)
    assert ("This needs a proof with a passkey; your recent proofs used other methods."
            in decision.reasons)
    assert not any(FALSE_AGE in r for r in decision.reasons)


def test_method_used_too_long_ago_is_an_age_reason() -> None:
    decision = decision_for({"level": "aal2", "max_age": "15m", "methods": ["webauthn"]},
                            PASSWORD, FRESH_TOTP, ("webauthn", Level.AAL3, 3600.0))
    assert "Your last sign-in at this level is older than 15 minutes." in decision.reasons


def test_scope() -> None:
    decision = decision_for({"level": "aal2", "max_age": "1h", "scope": "billing"},
                            PASSWORD, FRESH_TOTP)
    assert ("This action needs a confirmation of its own (billing); an earlier confirmation "
            "does not cover it." in decision.reasons)
    assert not any(FALSE_AGE in r for r in decision.reasons)


def test_single_use() -> None:
    decision = decision_for({"level": "aal2", "single_use": True}, PASSWORD, FRESH_TOTP)
    assert "Confirm this specific request; the approval is used once." in decision.reasons


def test_proof_made_now() -> None:
    decision = decision_for({"level": "aal2", "max_age": "0s"}, PASSWORD, FRESH_TOTP)
    assert "This needs a proof made just now, for this request." in decision.reasons
    assert not any("used once" in r for r in decision.reasons)


def test_binding() -> None:
    other = Grant(id="g1", subject_id="alice", session_id="s1", scope="rule", level=Level.AAL2,
                  amr=("otp",), granted_at=NOW - 30, expires_at=NOW + 600,
                  binding="ab" * 32, factor="totp")
    decision = decision_for({"level": "aal2", "max_age": "10m", "bind": ["amount", "payee"]},
                            PASSWORD, FRESH_TOTP, grants=(other,), amount=900, payee="Bob")
    assert ("Approve exactly these values (amount, payee); an approval covers only the values "
            "it was given for." in decision.reasons)
    assert not any(FALSE_AGE in r for r in decision.reasons)
