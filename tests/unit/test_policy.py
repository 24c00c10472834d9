"""Policy compilation: every problem reported at once, with its path and position."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepguard.config.load import load_policy
from stepguard.core.errors import PolicyError
from stepguard.core.levels import Level
from stepguard.core.policy import compile_policy

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"

BROKEN = """\
networks:
  office: [10.20.0.0/33]
attributes: {amount: number}
rules:
  - name: roles
    match: {paths: ["/admin/**"], colour: red}
    require: {level: aal7}
  - name: transfer
    when: "amout > 1000"
    require: {level: aal2, max_age: soon, methods: [sms]}
  - name: transfer
    match: {networks: [lab]}
    deny: ""
default: {level: aal1}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy("broken.yaml", text=text)
    return [str(p) for p in caught.value.problems]


def test_example_policy_compiles() -> None:
    policy = load_policy(EXAMPLE)
    assert [r.name for r in policy.rules][:3] == ["public", "critical-risk", "admin-roles"]
    assert policy.rule("large-transfer") is not None
    assert policy.rule("nope") is None


def test_every_problem_is_reported_at_once_with_file_path_and_line() -> None:
    problems = problems_of(BROKEN)
    text = "\n".join(problems)
    assert "broken.yaml:2" in text and "networks.office[0]" in text and "CIDR" in text
    assert "rules[0].match.colour" in text and "unknown field 'colour'" in text
    assert "rules[0].require.level" in text and "aal7" in text
    assert "rules[1].when" in text and "amout" in text and "amount" in text
    assert "rules[1].require.max_age" in text and "duration" in text
    assert "rules[1].require.methods" in text and "'sms'" in text
    assert "rules[2].name" in text and "duplicate" in text
    assert "rules[2].match.networks" in text and "lab" in text
    assert "rules[2].deny" in text
    assert len(problems) >= 9


def test_expression_errors_carry_line_and_column_of_the_expression() -> None:
    text = "attributes: {amount: number}\nrules:\n  - name: x\n    when: \"amount > 'a'\"\n" \
           "    require: {level: aal2}\n"
    [problem] = problems_of(text)
    assert problem.startswith("broken.yaml:4:")
    column = int(problem.split(":")[2].split()[0])
    assert column == 21  # the quote is at column 11; 'a' is the expression's 10th character


def test_bad_yaml_names_line_and_column() -> None:
    [problem] = problems_of("rules:\n  - name: x\n    require: {level: aal2\n")
    assert "invalid YAML" in problem and problem.startswith("broken.yaml:")


@pytest.mark.parametrize("document, fragment", [
    ([], "expected a mapping"),
    ({"rules": {}}, "expected a list of rules"),
    ({"rules": ["x"]}, "expected a rule"),
    ({"rules": [{"name": "a"}]}, "exactly one of"),
    ({"rules": [{"name": "a", "allow": "yes"}]}, "allow: true"),
    ({"rules": [{"name": "a", "require": "aal2"}]}, "at least 'level'"),
    ({"rules": [{"name": "a", "require": {"level": "aal0"}}]}, "allow: true"),
    ({"rules": [{"name": "a", "require": {"level": "aal2", "single_use": "y"}}]}, "true or false"),
    ({"rules": [{"name": "a", "require": {"level": "aal2", "scope": 3}}]}, "scope name"),
    ({"rules": [{"name": "a", "require": {"level": "aal2", "reason": 3}}]}, "expected text"),
    ({"rules": [{"name": "a", "require": {"level": "aal2", "bind": ["amount"]}}]}, "declare it"),
    ({"rules": [{"name": "a", "when": 3, "require": {"level": "aal2"}}]}, "as text"),
    ({"rules": [{"name": "a", "match": [], "require": {"level": "aal2"}}]}, "expected a mapping"),
    ({"rules": [{"name": "a", "match": {"paths": "admin"}, "require": {}}]}, "starting with '/'"),
    ({"rules": [{"name": "a", "match": {"hosts": ["a b"]}, "require": {}}]}, "host name"),
    ({"rules": [{"name": "a", "match": {"methods": []}, "require": {}}]}, "non-empty list"),
    ({"rules": [{"name": "", "allow": True}]}, "non-empty rule name"),
    ({"rules": [{"name": "a", "require": {"level": "aal2", "reason": "{nope}"}}]}, "nope"),
    ({"levels": [], "rules": []}, "aal1/aal2/aal3"),
    ({"levels": {"aal9": {}}, "rules": []}, "aal9"),
    ({"levels": {"aal2": 3}, "rules": []}, "acr, max_session"),
    ({"levels": {"aal2": {"idle": "x"}}, "rules": []}, "duration"),
    ({"networks": [], "rules": []}, "CIDR blocks"),
    ({"networks": {"a-b": ["10.0.0.0/8"]}, "rules": []}, "letters"),
    ({"attributes": [], "rules": []}, "attribute names"),
    ({"attributes": {"a-b": "number"}, "rules": []}, "identifier"),
    ({"attributes": {"a": "float"}, "rules": []}, "number, string"),
    ({"colour": 1}, "unknown field"),
])
def test_each_kind_of_mistake_is_explained(document: object, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(document, source="p.yaml")
    assert fragment in str(caught.value)


def test_levels_override_defaults() -> None:
    policy = compile_policy({"levels": {"aal2": {"acr": "urn:x", "idle": "30m",
                                                 "max_session": "8h"}}, "rules": []})
    assert policy.levels[Level.AAL2].acr == "urn:x"
    assert policy.levels[Level.AAL2].idle == 1800
    assert policy.levels[Level.AAL2].max_session == 8 * 3600
    assert policy.levels[Level.AAL3].idle == 900


def test_default_can_allow_or_deny() -> None:
    assert compile_policy({"default": "allow"}).default.requirement is None
    denied = compile_policy({"default": {"deny": "closed"}}).default
    assert denied.deny == "closed"


def test_a_rule_cannot_take_the_default_rules_name() -> None:
    """Decisions, metrics and the audit summary know rules by name: a rule called `default`
    (aal3 here) would share the fallback's entry, so its aal3 allows were summarised as plain
    allows of the aal1 default instead of each getting an entry of its own."""
    problems = problems_of(
        "rules:\n  - name: default\n    match: {paths: ['/vault/**']}\n"
        "    require: {level: aal3}\ndefault: {level: aal1}\n")
    assert any("default" in p and "reserved" in p for p in problems), problems
