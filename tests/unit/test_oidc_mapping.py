"""The provider's proof as Stepguard levels and factors, groups, allow-lists, configuration."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stepguard.config.schema import OidcProvider, OidcSection
from stepguard.core.decision import Requirement
from stepguard.core.errors import PolicyError
from stepguard.core.levels import Level
from stepguard.core.policy import compile_policy
from stepguard.service.idp import _allow_list_refusal, groups_of, proof_of
from stepguard.service.oidc import IdToken
from stepguard.storage.sql_challenges import requirement_from_json, requirement_to_json

NOW = 1_900_000_000.0
LEVELS = {"urn:idp:pwd": Level.AAL1, "urn:idp:mfa": Level.AAL2, "urn:idp:phr": Level.AAL3}


def settings(**fields: Any) -> OidcProvider:
    return OidcProvider(name="corp", issuer="https://idp.example", client_id="sg", **fields)


def token(acr: str = "", amr: tuple[str, ...] = (), auth_time: float | None = NOW - 60,
          **claims: Any) -> IdToken:
    return IdToken(issuer="https://idp.example", subject="s", claims=claims, acr=acr, amr=amr,
                   auth_time=auth_time, sid="", raw="")


@pytest.mark.parametrize(("acr", "amr", "level", "factor"), [
    ("urn:idp:mfa", ("pwd", "otp"), Level.AAL2, "totp"),
    ("urn:idp:phr", ("hwk", "user"), Level.AAL3, "webauthn"),
    ("urn:idp:pwd", ("pwd",), Level.AAL1, "password"),
    ("urn:unknown", ("pwd", "otp"), Level.AAL1, "totp"),  # unknown acr: aal1
    ("", ("face",), Level.AAL1, "oidc"),  # nothing known: aal1, the factor `oidc`
    ("urn:idp:mfa", ("mca", "otp"), Level.AAL2, "push"),  # the strongest mapped factor
])
def test_acr_and_amr_map_to_level_and_factor(acr: str, amr: tuple[str, ...], level: Level,
                                             factor: str) -> None:
    event = proof_of(token(acr, amr), settings(), LEVELS, now=NOW)
    assert (event.level, event.factor, event.amr, event.at) == (level, factor, amr, NOW - 60)


def test_amr_levels_can_raise_the_level() -> None:
    event = proof_of(token("urn:idp:pwd", ("hwk",)), settings(amr_levels={"hwk": "aal3"}),
                     LEVELS, now=NOW)
    assert event.level is Level.AAL3


def test_without_auth_time_the_proof_counts_as_aal1_now() -> None:
    event = proof_of(token("urn:idp:phr", ("hwk",), auth_time=None), settings(), LEVELS, now=NOW)
    assert event.level is Level.AAL1 and event.at == NOW


def test_an_auth_time_ahead_of_our_clock_is_taken_as_now() -> None:
    assert proof_of(token("urn:idp:mfa", auth_time=NOW + 30), settings(), LEVELS,
                    now=NOW).at == NOW


def test_groups_are_mapped_and_garbage_is_ignored() -> None:
    claims = {"groups": ["eng", "admins", 7, {"x": 1}, "", "g" * 300]}
    assert groups_of(settings(groups_claim="groups"), claims) == ["admins", "eng"]
    mapped = settings(groups_claim="groups", group_map={"eng": "staff"}, static_groups=["corp"])
    assert groups_of(mapped, claims) == ["corp", "staff"]  # unmapped groups are dropped
    assert groups_of(settings(groups_claim="groups"), {"groups": "one"}) == ["one"]
    assert groups_of(settings(), claims) == []  # no groups claim configured


@pytest.mark.parametrize(("claims", "refused"), [
    ({"email": "a@example.com", "email_verified": True, "groups": ["staff"]}, False),
    ({"email": "a@EXAMPLE.com", "email_verified": True, "groups": ["staff"]}, False),
    ({"email": "a@example.com", "email_verified": "true", "groups": ["staff"]}, True),
    ({"email": "a@example.com.evil", "email_verified": True, "groups": ["staff"]}, True),
    ({"email": ["a@example.com"], "email_verified": True, "groups": ["staff"]}, True),
    ({"email": "a@example.com", "email_verified": True, "groups": {"staff": 1}}, True),
    ({"email": "a@example.com", "email_verified": True}, True),
])
def test_allow_lists(claims: dict[str, Any], refused: bool) -> None:
    strict = settings(groups_claim="groups", allowed_domains=["example.com"],
                      allowed_groups=["staff"])
    assert bool(_allow_list_refusal(strict, claims)) is refused


@pytest.mark.parametrize(("fields", "message"), [
    ({"algorithms": ["HS256"]}, "only asymmetric"),
    ({"issuer": "http://idp.example"}, "https"),
    ({"name": "Bad Name"}, "pattern"),
    ({"acr_levels": {"x": "aal9"}}, "aal1, aal2 or aal3"),
    ({"level_acr": {"high": "x"}}, "as keys"),
    ({"amr_factors": {"hwk": "sms"}}, "unknown factor"),
    ({"client_id": ""}, "at least 1"),
    ({"auth_contexts": {"c100": {"level": "aal2"}}}, "c1..c99"),
    ({"auth_contexts": {"c1": {"level": "aal9"}}}, "aal1"),
    ({"auth_contexts": {"c1": {"level": "aal2", "factor": "sms"}}}, "unknown factor"),
])
def test_provider_config_problems_are_named(fields: dict[str, Any], message: str) -> None:
    values = {"name": "corp", "issuer": "https://idp.example", "client_id": "sg", **fields}
    with pytest.raises(ValidationError) as error:
        OidcProvider(**values)
    assert message in str(error.value)


def test_provider_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="repeated: corp"):
        OidcSection(providers=[settings(), settings()])


def test_policy_via_is_parsed_and_stored_with_the_challenge() -> None:
    policy = compile_policy({"rules": [
        {"name": "r", "match": {"paths": ["/x"]}, "require": {"level": "aal2", "via": "idp"}}]})
    requirement = policy.rules[0].requirement
    assert requirement is not None and requirement.via == "idp"
    assert requirement_from_json(requirement_to_json(requirement)) == requirement
    plain = Requirement(level=Level.AAL2)
    assert "via" not in requirement_to_json(plain)
    assert requirement_from_json(requirement_to_json(plain)) == plain
    with pytest.raises(PolicyError, match="expected local or idp"):
        compile_policy({"rules": [{"name": "r", "match": {"paths": ["/x"]},
                                   "require": {"level": "aal2", "via": "sms"}}]})


CONTEXTS = {"c1": {"level": "aal2"}, "c2": {"level": "aal3", "factor": "webauthn"},
            "c10": {"level": "aal2", "factor": "totp"}}


@pytest.mark.parametrize(("acrs", "level", "factor"), [
    (("c1",), Level.AAL2, "password"),
    (("c2", "c1"), Level.AAL3, "webauthn"),
    (("c77", "C1", "c1 "), Level.AAL1, "password"),  # unknown ids are ignored
])
def test_auth_contexts_in_acrs_raise_the_level(acrs: tuple[str, ...], level: Level,
                                               factor: str) -> None:
    tok = IdToken(issuer="https://idp.example", subject="s", claims={}, acr="urn:idp:pwd",
                  amr=("pwd",), auth_time=NOW - 60, sid="", raw="", acrs=acrs)
    event = proof_of(tok, settings(auth_contexts=CONTEXTS), LEVELS, now=NOW)
    assert (event.level, event.factor) == (level, factor)


@pytest.mark.parametrize(("level", "methods", "wanted"), [
    (Level.AAL2, frozenset(), "c1"),          # the weakest context reaching the level
    (Level.AAL3, frozenset(), "c2"),
    (Level.AAL2, frozenset({"totp"}), "c10"),  # one that counts as an allowed method
    (Level.AAL1, frozenset({"push"}), ""),     # none: the step-up asks with acr_values
])
def test_the_auth_context_a_step_up_asks_for(level: Level, methods: frozenset[str],
                                             wanted: str) -> None:
    from stepguard.service.idp import auth_context_for

    requirement = Requirement(level=level, methods=methods)
    assert auth_context_for(settings(auth_contexts=CONTEXTS), requirement) == wanted
    assert auth_context_for(settings(), requirement) == ""
