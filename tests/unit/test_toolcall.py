"""core.toolcall and the policy's MCP door: one reading of a tool call, or a refusal."""

from __future__ import annotations

import pytest

from stepguard.core.context import RequestContext
from stepguard.core.decide import decide, explain
from stepguard.core.errors import BadRequest, PolicyError
from stepguard.core.policy import compile_policy
from stepguard.core.toolcall import (
    call_context,
    call_digest,
    definition_digest,
    flatten_arguments,
    tool_call,
)

POLICY = {
    "attributes": {"args.amount": "number", "args.to.iban": "string"},
    "rules": [
        {"name": "web", "match": {"paths": ["/**"]}, "require": {"level": "aal3"}},
        {"name": "big", "match": {"mcp": {"servers": ["bank"], "tools": ["transfer*"]}},
         "when": "args.amount > 1000", "require": {"level": "aal2", "bind": ["args.amount"]}},
        {"name": "iban", "match": {"mcp": {"tools": ["pay"]}}, "when": "args.to.iban == 'X'",
         "deny": "no"},
    ],
}


def test_tool_calls_see_only_mcp_and_doorless_rules_and_web_requests_never_see_mcp_rules() -> None:
    policy = compile_policy(POLICY)
    call = tool_call("bank", {"name": "transfer_now", "arguments": {"amount": 5000}})
    context = call_context(call, digest=call_digest(call, definition="d"))
    decision = decide(policy, context)
    assert decision.rule == "big"
    assert [s.rule for s in explain(policy, context).trace if s.looked_at] == ["big"]
    web = decide(policy, RequestContext(method="CALL", host="bank", path="/bank/transfer_now"))
    assert web.rule == "web"
    other = call_context(tool_call("shop", {"name": "transfer", "arguments": {"amount": 5000}}))
    assert decide(policy, other).rule == "default"
    nested = call_context(tool_call("bank", {"name": "pay", "arguments": {"to": {"iban": "X"}}}))
    assert decide(policy, nested).rule == "iban"


def test_a_missing_or_mistyped_argument_applies_the_rule() -> None:
    policy = compile_policy(POLICY)
    for arguments in ({}, {"amount": "lots"}, {"amount": {"value": 5}}):
        context = call_context(tool_call("bank", {"name": "transfer", "arguments": arguments}))
        assert decide(policy, context).rule == "big"


def test_mixing_doors_in_one_match_is_refused() -> None:
    with pytest.raises(PolicyError, match="one door"):
        compile_policy({"rules": [{"name": "x", "match": {"paths": ["/a"], "mcp": {"tools": ["t"]}},
                                   "require": {"level": "aal2"}}]})
    with pytest.raises(PolicyError):
        compile_policy({"rules": [{"name": "x", "match": {"mcp": {"tool": ["t"]}},
                                   "require": {"level": "aal2"}}]})


def test_the_digest_covers_server_tool_definition_and_every_argument() -> None:
    base = tool_call("bank", {"name": "transfer", "arguments": {"amount": 5, "to": "A"}})
    digest = call_digest(base, definition="d1")
    assert digest == call_digest(
        tool_call("bank", {"name": "transfer", "arguments": {"to": "A", "amount": 5}}),
        definition="d1")
    for other in (tool_call("bank2", {"name": "transfer", "arguments": {"amount": 5, "to": "A"}}),
                  tool_call("bank", {"name": "transfer2", "arguments": {"amount": 5, "to": "A"}}),
                  tool_call("bank", {"name": "transfer", "arguments": {"amount": 5.0, "to": "A"}}),
                  tool_call("bank", {"name": "transfer",
                                     "arguments": {"amount": 5, "to": "A", "x": None}})):
        assert call_digest(other, definition="d1") != digest
    assert call_digest(base, definition="d2") != digest
    assert definition_digest(None) == "unlisted"
    assert definition_digest({"name": "t", "description": "a"}) != definition_digest(
        {"name": "t", "description": "b"})


@pytest.mark.parametrize("params", [
    None, {"name": ""}, {"name": "a b"}, {"name": "tr\u0430nsfer"}, {"name": "x" * 129},
    {"name": 5}, {"name": "t", "arguments": [1]}, {"name": "t", "arguments": "{}"},
    {"name": "t", "arguments": {"\uff41mount": 1}}, {"name": "t", "arguments": {"a\u200bb": 1}},
    {"name": "t", "arguments": {"to": "A\u202eB"}}, {"name": "t", "arguments": {"to": "e\u0301"}},
    {"name": "t", "arguments": {"to": "a\x00b"}}, {"name": "t", "arguments": {"to": "a\x85b"}},
    {"name": "t", "arguments": {"x": float("inf")}},
    {"name": "t", "arguments": {"to.iban": 1, "to": {"iban": 2}}},
    {"name": "t", "arguments": {"to": {"iban": 2}, "to.iban": 1}},
    {"name": "t", "arguments": {"a": {"b": 1}, "a.b": {"c": 2}}},
])
def test_ambiguous_calls_are_refused(params: object) -> None:
    with pytest.raises(BadRequest):
        tool_call("bank", params)


def test_deep_nesting_is_refused_and_text_keeps_its_own_newlines() -> None:
    deep: dict[str, object] = {"v": 1}
    for _ in range(20):
        deep = {"n": deep}
    with pytest.raises(BadRequest, match="deeper"):
        tool_call("bank", {"name": "t", "arguments": deep})
    ok = tool_call("bank", {"name": "t", "arguments": {"memo": "a\nb\tc", "who": "Zoë",
                                                       "tags": ["x", "y"], "none": None}})
    assert flatten_arguments(ok.arguments) == {"args.memo": "a\nb\tc", "args.who": "Zoë",
                                               "args.tags": ("x", "y"), "args.none": None}
    assert tool_call("bank", {"name": "t", "arguments": None}).arguments == {}
