"""Transaction binding end to end (DESIGN §6 `bind`, SECURITY.md case 13, docs/binding.md).

A grant made for 100 to Bob is refused for 10,000 to Mallory; a single-use grant is spent once,
also when 20 requests race for it — through the decision API and through the ASGI middleware;
and the WebAuthn assertion of a bound step-up is valid only for that transaction's digest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepguard.adapters.decision_api import DECIDE_PATH, DecideResponse
from stepguard.core.errors import VerificationFailed
from stepguard.core.grant import binding_digest
from stepguard.core.levels import Level
from stepguard.factors.webauthn import NONCE_BYTES, binding_challenge
from stepguard.service.accounts import Accounts
from stepguard.service.stepup import StepUp
from stepguard.storage.records import SessionRecord
from tests.integration.test_asgi_middleware import API, fastapi_app
from tests.integration.test_decision_api import (
    Env,
    gateway_app,
    make_env,
    open_session,
    pass_totp,
    transfer,
)
from tests.support.soft_authenticator import SoftAuthenticator, b64url_decode

FIELDS = ("amount", "payee")


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    env = make_env(tmp_path)
    yield env
    env.runtime.close()


def digest(amount: Any, payee: str) -> str:
    return binding_digest(method="POST", path="/transfers", fields=FIELDS,
                          attributes={"amount": amount, "payee": payee})


async def decide_all(env: Env, bodies: list[dict[str, Any]]) -> list[DecideResponse]:
    """Send every body at once to the decision API (real threads behind the endpoint)."""
    transport = httpx.ASGITransport(app=gateway_app(env.runtime))
    headers = {"Authorization": f"Bearer {env.api_key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://sg.test",
                                 headers=headers) as client:
        answers = await asyncio.gather(*(client.post(DECIDE_PATH, json=b) for b in bodies))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [DecideResponse.model_validate_json(a.content) for a in answers]


def decide_one(env: Env, body: dict[str, Any]) -> DecideResponse:
    return asyncio.run(decide_all(env, [body]))[0]


def grant_for(env: Env, amount: Any, payee: str) -> tuple[str, DecideResponse]:
    """Step up for one transfer with TOTP; the session's new token and the step-up answer."""
    token, session = open_session(env)
    answer = decide_one(env, transfer(amount, payee, token))
    assert answer.decision == "step_up" and answer.single_use and answer.max_age == 0
    passed = pass_totp(env, answer.challenge_url or "", session)
    assert passed.grant is not None and passed.grant.binding == digest(amount, payee)
    return passed.token, answer


# ------------------------------------------------------------------------------------ decision API


def test_the_step_up_shows_and_binds_the_values(env: Env) -> None:
    token, _ = open_session(env)
    answer = decide_one(env, transfer(100, "Bob", token))
    assert answer.bound_values == {"amount": "100", "payee": "Bob"}
    assert "Approve a transfer of 100 to Bob" in answer.reasons
    challenge = env.runtime.store.challenges.get((answer.challenge_url or "").rsplit("/", 1)[1])
    assert challenge is not None and challenge.binding == digest(100, "Bob")
    assert digest(100, "Bob") == digest("100.0", "Bob") == digest(100.0, " Bob ")
    assert digest(100, "Bob") != digest(10_000, "Mallory") != digest(100, "Mallory")


def test_a_grant_for_100_to_bob_is_refused_for_10000_to_mallory(env: Env) -> None:
    token, _ = grant_for(env, 100, "Bob")
    for amount, payee in ((10_000, "Mallory"), (100, "Mallory"), (10_000, "Bob"), (101, "Bob")):
        answer = decide_one(env, transfer(amount, payee, token))
        assert answer.decision == "step_up", (amount, payee)
        assert not answer.consumed_grant
    other_path = {**transfer(100, "Bob", token), "path": "/transfers/other"}
    assert decide_one(env, other_path).decision == "step_up"
    allowed = decide_one(env, transfer("100.00", "Bob", token))  # the same value, spelt otherwise
    assert allowed.decision == "allow" and allowed.consumed_grant and allowed.grant_id
    assert decide_one(env, transfer(100, "Bob", token)).decision == "step_up"  # spent


def test_twenty_concurrent_requests_spend_a_single_use_grant_once(env: Env) -> None:
    token, _ = grant_for(env, 5000, "Bob")
    answers = asyncio.run(decide_all(env, [transfer(5000, "Bob", token)] * 20))
    allowed = [a for a in answers if a.decision == "allow"]
    assert len(allowed) == 1 and allowed[0].consumed_grant
    assert all(a.decision == "step_up" for a in answers if a is not allowed[0])


# ------------------------------------------------------------------------------------ middleware


def test_binding_and_single_use_through_the_middleware(env: Env) -> None:
    token, session = open_session(env)
    app = fastapi_app(env)

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test",
                                     headers=API) as client:
            client.cookies.set("stepguard_session", token)
            first = await client.post("/transfers", json={"amount": 100, "payee": "Bob"})
            assert first.status_code == 401
            passed = pass_totp(env, first.json()["challenge_url"], session)
            client.cookies.set("stepguard_session", passed.token)
            mallory = await client.post("/transfers", json={"amount": 10_000, "payee": "Mallory"})
            assert mallory.status_code == 401
            race = await asyncio.gather(*(client.post("/transfers", json={
                "amount": 100, "payee": "Bob"}) for _ in range(20)))
            return [r.status_code for r in race]

    statuses = asyncio.run(run())
    assert statuses.count(200) == 1 and statuses.count(401) == 19


# ------------------------------------------------------------------------------------ WebAuthn


def enrol_passkey(env: Env, session: SessionRecord, token: str) -> SoftAuthenticator:
    accounts = Accounts(env.runtime)
    authenticator = SoftAuthenticator(origin="http://localhost:9091")
    options, enrolment = accounts.begin_passkey(session, env.alice.user)
    accounts.finish_passkey(session, enrolment, authenticator.create(options), "soft key")
    env.clock.advance(1)
    return authenticator


def test_the_webauthn_assertion_covers_only_that_transaction(env: Env) -> None:
    token, session = open_session(env, level=Level.AAL2)  # adding a passkey needs a fresh aal2
    authenticator = enrol_passkey(env, session, token)
    stepup = StepUp(env.runtime)
    bob = decide_one(env, transfer(100, "Bob", token))
    mallory = decide_one(env, transfer(10_000, "Mallory", token))
    bob_id = (bob.challenge_url or "").rsplit("/", 1)[1]
    mallory_id = (mallory.challenge_url or "").rsplit("/", 1)[1]

    # The challenge the authenticator signs is nonce ‖ SHA-256(domain ‖ nonce ‖ digest).
    options = stepup.begin_webauthn(bob_id, session)
    challenge = b64url_decode(json.loads(options)["challenge"])
    nonce = challenge[:NONCE_BYTES]
    assert challenge == binding_challenge(nonce, digest(100, "Bob"))

    # Signing Mallory's digest under Bob's ceremony is refused ...
    mallory_challenge = binding_challenge(nonce, digest(10_000, "Mallory"))
    forged = authenticator.get(options, challenge=mallory_challenge)
    with pytest.raises(VerificationFailed):
        stepup.finish_webauthn(bob_id, session, forged, client_ip="")
    env.clock.advance(10)  # past the back-off a failed attempt earns
    # ... and so is Bob's signed assertion presented for Mallory's challenge.
    options = stepup.begin_webauthn(bob_id, session)
    signed_for_bob = authenticator.get(options)
    stepup.begin_webauthn(mallory_id, session)
    with pytest.raises(VerificationFailed):
        stepup.finish_webauthn(mallory_id, session, signed_for_bob, client_ip="")
    env.clock.advance(10)

    passed = stepup.finish_webauthn(bob_id, session, signed_for_bob, client_ip="")
    assert passed.grant is not None and passed.grant.binding == digest(100, "Bob")
    assert decide_one(env, transfer(10_000, "Mallory", passed.token)).decision == "step_up"
    allowed = decide_one(env, transfer(100, "Bob", passed.token))
    assert allowed.decision == "allow" and allowed.level == "aal3"
    assert allowed.subject and allowed.subject.amr == ["hwk", "user"]
