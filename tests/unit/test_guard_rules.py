"""Guard rules pinned by exact values: a bearer state refused a bound transaction."""

from __future__ import annotations

from pathlib import Path

from stepguard.audit.ledger import request_summary
from stepguard.core.context import RequestContext
from stepguard.core.decision import Outcome
from stepguard.service.guard import Guard
from tests.support.gateway import Clock
from tests.unit.test_guard import POLICY, decisions, signed_in
from tests.unit.test_guard_flow import make_runtime

BOUND_POLICY = POLICY.replace("rules:\n", "attributes:\n  amount: number\nrules:\n").replace(
    "default:", """\
  - name: pay
    match: {methods: [POST], paths: ["/pay"]}
    require: {level: aal2, max_age: 0s, single_use: true, bind: [amount]}
default:""")
PAY = RequestContext(method="POST", host="app.test", path="/pay", client_ip="198.51.100.7",
                     attributes={"amount": 125})


def test_a_bearer_state_is_refused_a_bound_transaction_keeping_what_was_asked(
        tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, Clock(), policy=BOUND_POLICY)
    try:
        guard = Guard(rt)
        loaded = guard.load(signed_in(rt)[2])
        assert loaded is not None
        asked = guard.preview(PAY, loaded).decision
        assert asked.outcome is Outcome.STEP_UP and asked.binding
        refused = guard.judge_token(PAY, loaded.state, grant_for=lambda decision: None).decision
        assert refused.outcome is Outcome.DENY
        assert refused.rule == "pay"
        assert refused.requirement == asked.requirement
        assert refused.scope == asked.scope
        assert refused.binding == asked.binding
        assert refused.bound_values == asked.bound_values
        assert refused.reasons[:-1] == asked.reasons
        assert "access token cannot approve" in refused.reasons[-1]
    finally:
        rt.close()


REPORT_POLICY = POLICY.replace("default:", """\
  - name: new-export
    mode: report
    match: {paths: ["/export"]}
    require: {level: aal2, reason: "Export the ledger"}
default:""")
EXPORT = RequestContext(method="GET", host="app.test", path="/export", client_ip="198.51.100.7")


def test_a_report_rule_allow_is_sealed_with_what_it_would_have_done(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, Clock(), policy=REPORT_POLICY)
    try:
        guard = Guard(rt)
        user, session, token = signed_in(rt)
        check = guard.check(EXPORT, token)
        shadow = check.decision.shadow
        assert check.decision.allowed and shadow is not None
        [entry] = decisions(rt)
        assert entry.outcome == "would_step_up"  # type: ignore[attr-defined]
        assert entry.decision == "allow"  # type: ignore[attr-defined]
        assert entry.rule == "new-export"  # type: ignore[attr-defined]
        assert tuple(entry.reasons) == shadow.reasons  # type: ignore[attr-defined]
        assert entry.subject == user.id  # type: ignore[attr-defined]
        detail = entry.detail  # type: ignore[attr-defined]
        assert detail["enforced"] == {"outcome": "allow", "rule": check.decision.rule}
        assert detail["report"] == {"outcome": "step_up", "rule": "new-export",
                                    "reasons": list(shadow.reasons), "level": "aal2"}
        assert detail["risk_level"] == check.risk.level
        assert detail["risk_score"] == check.risk.score
        assert detail["signals"] == list(check.risk.names)
        assert "level" not in detail
    finally:
        rt.close()


def test_a_sessionless_allow_with_detail_is_sealed_with_no_subject(
        tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, Clock())
    try:
        public = RequestContext(method="GET", host="app.test", path="/static/app.js",
                                client_ip="198.51.100.7")
        check = Guard(rt).judge(public, None, detail={"door": "mcp"})
        assert check.decision.allowed
        [entry] = decisions(rt)
        assert entry.subject == ""  # type: ignore[attr-defined]
        assert entry.session == ""  # type: ignore[attr-defined]
        assert entry.outcome == "allow"  # type: ignore[attr-defined]
        keyed = {k: v for k, v in request_summary(public, ip_key=rt.ip_key).items() if v}
        assert dict(entry.request) == keyed  # type: ignore[attr-defined]
        assert entry.detail["door"] == "mcp"  # type: ignore[attr-defined]
    finally:
        rt.close()
