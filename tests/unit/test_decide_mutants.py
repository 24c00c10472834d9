"""decide()'s rules that only the slow HTTP tests held before: what an allow by a grant says
(its level, which grant to spend), which authentication event satisfies a rule when events are
not in time order, the reason of the default rule and of a named one, the plain names of every
method, and how a bound value that was not given is shown. Found by `make mutate` on
`core/decide.py`."""

from __future__ import annotations

from typing import Any

from stepguard.core.context import AuthEvent, RequestContext, SessionState, Subject
from stepguard.core.decide import decide
from stepguard.core.decision import Decision, Outcome
from stepguard.core.grant import Grant
from stepguard.core.levels import FACTOR_AMR, Level
from stepguard.core.policy import compile_policy

NOW = 1_800_000_000.0
CONTEXT = RequestContext(method="POST", host="h", path="/x")


def session(*events: tuple[str, Level, float]) -> SessionState:
    """Alice's session with `events` (factor, level, age in seconds) in the order given."""
    built = tuple(AuthEvent(factor=f, amr=FACTOR_AMR[f], level=lvl, at=NOW - age)
                  for f, lvl, age in events)
    return SessionState(id="s1", subject=Subject(id="alice"), created=NOW - 7200,
                        last_seen=NOW, events=built)


def decision_for(require: dict[str, Any], state: SessionState | None,
                 grants: tuple[Grant, ...] = (),
                 context: RequestContext = CONTEXT) -> Decision:
    policy = compile_policy({
        "attributes": {"amount": "number", "payee": "string"},
        "rules": [{"name": "rule", "match": {"paths": ["/x"]}, "require": require}]})
    return decide(policy, context, state, grants=grants, now=NOW)


def grant(*, single_use: bool, level: Level = Level.AAL3) -> Grant:
    return Grant(id="g1", subject_id="alice", session_id="s1", scope="billing", level=level,
                 amr=("hwk", "user"), factor="webauthn", granted_at=NOW - 30,
                 expires_at=NOW + 600, single_use=single_use)


PASSWORD = ("password", Level.AAL1, 900.0)


# ------------------------------------------------------------------ an allow by a grant


def test_an_allow_by_a_grant_reaches_the_grants_level() -> None:
    decision = decision_for({"level": "aal2", "scope": "billing"}, session(PASSWORD),
                            (grant(single_use=False),))
    assert (decision.outcome, decision.grant_id, decision.level) == (
        Outcome.ALLOW, "g1", Level.AAL3)


def test_a_grant_that_is_not_single_use_is_not_spent() -> None:
    decision = decision_for({"level": "aal2", "scope": "billing"}, session(PASSWORD),
                            (grant(single_use=False),))
    assert decision.outcome is Outcome.ALLOW and decision.consume_grant == ""


def test_a_single_use_grant_is_spent_by_the_allow() -> None:
    decision = decision_for({"level": "aal2", "scope": "billing", "single_use": True},
                            session(PASSWORD), (grant(single_use=True),))
    assert decision.outcome is Outcome.ALLOW and decision.consume_grant == "g1"


# ------------------------------------------------------------------ which event satisfies


def test_an_older_proof_recorded_last_does_not_hide_a_fresh_one() -> None:
    """Events are not always in time order (an identity provider's proof carries its own,
    earlier authentication time): a fresh proof anywhere in the session satisfies `max_age`."""
    state = session(PASSWORD, ("totp", Level.AAL2, 60.0), ("totp", Level.AAL2, 2 * 3600.0))
    decision = decision_for({"level": "aal2", "max_age": "1h"}, state)
    assert (decision.outcome, decision.level) == (Outcome.ALLOW, Level.AAL2)


# ------------------------------------------------------------------ the reasons people read


def test_the_default_rule_asks_to_sign_in() -> None:
    policy = compile_policy({"rules": [], "default": {"level": "aal1"}})
    decision = decide(policy, CONTEXT, None, now=NOW)
    assert (decision.outcome, decision.rule, decision.login) == (Outcome.STEP_UP, "default", True)
    assert decision.reasons == ("Sign in to continue.",)


def test_a_default_above_a_sign_in_tells_a_signed_in_user_what_it_needs() -> None:
    """Not "Sign in to continue." to someone signed in: the default asks for a second proof."""
    policy = compile_policy({"rules": [], "default": {"level": "aal2"}})
    decision = decide(policy, CONTEXT, session(PASSWORD), now=NOW)
    assert decision.outcome is Outcome.STEP_UP
    assert decision.reasons[0] == ("This action needs a second proof, such as a passkey or a "
                                   "code from your authenticator app.")
    assert "Sign in to continue." not in decision.reasons
    assert decide(policy, CONTEXT, None, now=NOW).reasons[-1] == "Sign in to continue."


def test_a_named_rule_without_a_reason_says_what_the_action_needs() -> None:
    decision = decision_for({"level": "aal2"}, session(PASSWORD))
    assert decision.outcome is Outcome.STEP_UP
    assert decision.reasons[0] == ("This action needs a second proof, such as a passkey or a "
                                   "code from your authenticator app.")
    assert "Sign in to continue." not in decision.reasons


def test_a_recovery_code_is_named_in_plain_words() -> None:
    decision = decision_for({"level": "aal2", "methods": ["recovery"]}, session(PASSWORD))
    assert ("You signed in with your password only; this needs a second proof with a recovery "
            "code." in decision.reasons)


def test_a_password_is_named_in_plain_words() -> None:
    decision = decision_for({"level": "aal1", "methods": ["password"], "max_age": "1h"},
                            session(("totp", Level.AAL2, 60.0)))
    assert ("This needs a proof with your password; your recent proofs used other methods."
            in decision.reasons)


def test_a_bound_value_that_was_not_given_is_shown_as_not_given() -> None:
    context = RequestContext(method="POST", host="h", path="/x", attributes={"amount": 900})
    decision = decision_for({"level": "aal2", "bind": ["amount", "payee"]}, session(PASSWORD),
                            context=context)
    assert decision.bound_values == (("amount", "900"), ("payee", "(not given)"))
