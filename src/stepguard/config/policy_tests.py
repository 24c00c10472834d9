"""Policy tests: YAML cases next to the policy (`request` + `session` + `risk` → expected decision).

```yaml
policy: policy.yaml            # relative to this file
cases:
  - name: a large transfer needs a single-use approval
    request: {method: POST, host: bank.example.com, path: /transfers,
              attributes: {amount: 5000, payee: Bob}}
    session: {user: alice, level: aal1, age: 1m}
    expect: {outcome: step_up, rule: large-transfer, level: aal2}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepguard.config.cases import FIXED_NOW, CaseError, build_case
from stepguard.config.load import load_policy
from stepguard.config.yaml_source import read_source
from stepguard.core.decide import decide
from stepguard.core.decision import Decision
from stepguard.core.durations import parse_duration
from stepguard.core.errors import BadRequest, ConfigError
from stepguard.core.policy import Policy

_EXPECT = frozenset(
    {"outcome", "rule", "level", "login", "reason_contains", "max_age", "single_use", "consume"}
)


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class TestReport:
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


def run_policy_tests(path: str | Path) -> TestReport:
    """Run every case; raise ConfigError if the file or its policy is invalid."""
    file = Path(path)
    source = read_source(file)
    data = source.data
    if not isinstance(data, Mapping) or not isinstance(data.get("cases"), list):
        raise ConfigError([source.problem((), "expected a mapping with 'policy' and 'cases'")])
    policy = load_policy(file.parent / str(data.get("policy", "policy.yaml")))
    report = TestReport()
    for i, case in enumerate(data["cases"]):
        report.results.append(_run_case(policy, case, i, source.problem))
    return report


def _run_case(policy: Policy, spec: Any, i: int, problem: Any) -> CaseResult:
    name = str(spec.get("name", f"case {i + 1}")) if isinstance(spec, Mapping) else f"case {i + 1}"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("expect"), Mapping):
        return CaseResult(name, False, str(problem(("cases", i), "expected request and expect")))
    expect = spec["expect"]
    unknown = set(expect) - _EXPECT
    if unknown:
        return CaseResult(name, False, f"unknown expectation(s): {sorted(unknown)}")
    try:
        case = build_case(spec, now=float(spec.get("now", FIXED_NOW)))
    except BadRequest as exc:
        ok = expect.get("outcome") == "bad_request"
        return CaseResult(name, ok, "" if ok else f"request rejected as bad: {exc}")
    except (CaseError, ValueError, KeyError) as exc:
        return CaseResult(name, False, f"invalid case: {exc}")
    decision = decide(policy, case.request, case.session, case.risk, case.grants, case.now)
    mismatches = _compare(decision, expect)
    return CaseResult(name, not mismatches, "; ".join(mismatches))


def _compare(decision: Decision, expect: Mapping[str, Any]) -> list[str]:
    requirement = decision.requirement
    actual: dict[str, Any] = {
        "outcome": decision.outcome.value,
        "rule": decision.rule,
        "level": requirement.level.label if requirement and not decision.allowed else None,
        "login": decision.login,
        "max_age": requirement.max_age if requirement else None,
        "single_use": requirement.single_use if requirement else None,
        "consume": bool(decision.consume_grant),
    }
    problems = []
    for key, wanted in expect.items():
        if key == "reason_contains":
            if not any(str(wanted) in r for r in decision.reasons):
                problems.append(
                    f"no reason contains {wanted!r} (reasons: {list(decision.reasons)})"
                )
        elif key == "max_age":
            if actual["max_age"] != parse_duration(wanted):
                problems.append(f"max_age: expected {wanted}, got {actual['max_age']}")
        elif actual[key] != wanted:
            problems.append(f"{key}: expected {wanted!r}, got {actual[key]!r}")
    return problems
