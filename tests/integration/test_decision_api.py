"""The decision API (`POST /api/v1/decide`) in process: API keys, decisions, errors, OpenAPI.

Also holds the helpers the other issue-5 tests share (`Env`, `make_env`, `open_session`,
`pass_totp`): a real runtime on a temp SQLite store with a test policy and a settable clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from stepguard.adapters.decision_api import (
    DECIDE_PATH,
    DecideRequest,
    DecideResponse,
    decision_api_routes,
    openapi_document,
)
from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from stepguard.service.api_keys import ApiKeys
from stepguard.service.runtime import Runtime, hash_token, new_id, new_token
from stepguard.service.stepup import Passed, StepUp
from stepguard.storage.api_key_tables import api_keys
from stepguard.storage.records import SessionRecord
from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user

TEST_POLICY = """\
attributes:
  amount: number
  payee: string
rules:
  - name: public
    match: {paths: ["/healthz", "/public/**"]}
    allow: true
  - name: blocked
    match: {paths: ["/blocked/**"]}
    deny: "Blocked by policy"
  - name: large-transfer
    match: {actions: [payments.transfer]}
    when: "amount > 50"
    require: {level: aal2, max_age: 0s, single_use: true, bind: [amount, payee],
              reason: "Approve a transfer of {amount} to {payee}"}
  - name: export
    match: {paths: ["/export"]}
    require: {level: aal2, max_age: 15m, reason: "Exporting data"}
default: {level: aal1}
"""
BASE = "http://localhost:9091"


@dataclass
class Env:
    runtime: Runtime
    clock: Clock
    alice: Seeded
    api_key: str


def make_env(folder: Path, *, policy: str = TEST_POLICY, public_url: str = BASE) -> Env:
    clock = Clock()
    runtime = make_runtime(folder, clock=clock, policy=policy, public_url=public_url)
    alice = seed_user(runtime)
    key = ApiKeys(runtime).create("test-client").key
    return Env(runtime, clock, alice, key)


def open_session(env: Env, *, level: Level = Level.AAL1) -> tuple[str, SessionRecord]:
    """A signed-in session for alice (password sign-in, plus an aal2 event if asked)."""
    token, now = new_token(), env.clock.now
    events = [AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now)]
    if level >= Level.AAL2:
        events.append(AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=now))
    record = SessionRecord(id=new_id(), token_hash=hash_token(token), user_id=env.alice.user.id,
                           created=now, last_seen=now, events=tuple(events))
    env.runtime.store.sessions.add(record)
    return token, record


def pass_totp(env: Env, challenge_url: str, session: SessionRecord) -> Passed:
    """Complete a step-up challenge with alice's TOTP code (the clock moves to a fresh step)."""
    env.clock.advance(30)
    challenge_id = challenge_url.rsplit("/", 1)[1]
    return StepUp(env.runtime).verify_totp(challenge_id, session, env.alice.code(env.clock.now),
                                           client_ip="")


def gateway_app(runtime: Runtime) -> Starlette:
    """The gateway with the decision API routes (the line `create_app` gets in web/app.py)."""
    app = create_app(runtime)
    if not any(getattr(r, "path", "") == DECIDE_PATH for r in app.router.routes):
        app.router.routes[0:0] = decision_api_routes(runtime, app.state.guard, app.state.stepup)
    return app


def transfer(amount: Any, payee: str, token: str | None, **extra: Any) -> dict[str, Any]:
    return {"method": "POST", "host": "app.test", "path": "/transfers",
            "action": "payments.transfer", "attributes": {"amount": amount, "payee": payee},
            "session_token": token, **extra}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    env = make_env(tmp_path)
    yield env
    env.runtime.close()


@pytest.fixture()
def client(env: Env) -> Iterator[TestClient]:
    with TestClient(gateway_app(env.runtime), base_url=BASE) as client:
        client.headers["Authorization"] = f"Bearer {env.api_key}"
        yield client


def decide(client: TestClient, body: dict[str, Any]) -> DecideResponse:
    response = client.post(DECIDE_PATH, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return DecideResponse.model_validate_json(response.content)


# ------------------------------------------------------------------------------------ API keys


def test_a_missing_or_wrong_key_gets_401_json(env: Env, client: TestClient) -> None:
    body = {"method": "GET", "host": "app.test", "path": "/"}
    key_id = env.api_key.split("_")[1]
    wrong = f"sgk_{key_id}_{'A' * 43}"
    for headers in ({"Authorization": ""}, {"Authorization": f"Bearer {wrong}"},
                    {"Authorization": "Bearer sgk_nope"},
                    {"Authorization": f"Basic {env.api_key}"}):
        response = client.post(DECIDE_PATH, json=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"] == "invalid_api_key"
        assert response.headers["www-authenticate"].startswith("Bearer realm=")
        assert env.api_key not in response.text


def test_the_key_works_in_either_header_and_records_last_use(env: Env, client: TestClient) -> None:
    body = {"method": "GET", "host": "app.test", "path": "/healthz"}
    assert client.post(DECIDE_PATH, json=body).status_code == 200
    response = client.post(DECIDE_PATH, json=body,
                           headers={"Authorization": "", "X-Api-Key": env.api_key})
    assert response.status_code == 200
    (record,) = ApiKeys(env.runtime).list()
    assert record.last_used == env.clock.now


def test_keys_are_hashed_at_rest_rotatable_and_revocable(env: Env, client: TestClient) -> None:
    keys = ApiKeys(env.runtime)
    body = {"method": "GET", "host": "app.test", "path": "/healthz"}
    with env.runtime.store.engine.connect() as connection:
        rows = connection.execute(select(api_keys)).mappings().all()
    secret = env.api_key.split("_", 2)[2]
    assert rows[0]["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for value in rows[0].values())

    rotated = keys.rotate("test-client", grace=60).key
    assert rotated != env.api_key
    for key in (env.api_key, rotated):  # the old key works during the grace period
        assert client.post(DECIDE_PATH, json=body, headers={"Authorization": f"Bearer {key}"}
                           ).status_code == 200
    env.clock.advance(61)
    assert client.post(DECIDE_PATH, json=body, headers={"Authorization": f"Bearer {env.api_key}"}
                       ).status_code == 401
    assert client.post(DECIDE_PATH, json=body, headers={"Authorization": f"Bearer {rotated}"}
                       ).status_code == 200
    keys.revoke("test-client")
    assert client.post(DECIDE_PATH, json=body, headers={"Authorization": f"Bearer {rotated}"}
                       ).status_code == 401


def test_key_management_and_refusals_are_audited_without_the_key(env: Env,
                                                                  client: TestClient) -> None:
    client.post(DECIDE_PATH, json={}, headers={"Authorization": "Bearer sgk_bad"})
    ApiKeys(env.runtime).revoke("test-client")
    env.runtime.audit.flush()
    entries = list(env.runtime.audit_log.entries())
    outcomes = [e.outcome for e in entries]
    assert "api_key_created" in outcomes and "api_key_revoked" in outcomes
    assert "failed:malformed" in outcomes
    assert all(env.api_key.split("_", 2)[2] not in repr(e) for e in entries)


# ------------------------------------------------------------------------------------ decisions


def test_anonymous_request_gets_a_sign_in_step_up(client: TestClient) -> None:
    answer = decide(client, {"method": "GET", "host": "app.test", "path": "/account/x"})
    assert answer.decision == "step_up" and answer.login
    assert answer.challenge_url == f"{BASE}/login?rd=https%3A%2F%2Fapp.test%2Faccount%2Fx"
    assert answer.subject is None


def test_signed_in_request_is_allowed_with_the_subject(env: Env, client: TestClient) -> None:
    token, _ = open_session(env)
    answer = decide(client, {"method": "GET", "host": "app.test", "path": "/dashboard",
                             "session_token": token})
    assert answer.decision == "allow" and answer.rule == "default"
    assert answer.level == "aal1" and answer.acr == "urn:stepguard:aal1"
    assert answer.subject is not None
    assert answer.subject.username == "alice" and answer.subject.groups == ["admins"]
    assert answer.subject.amr == ["pwd"] and answer.subject.auth_time == int(env.clock.now)
    assert not answer.consumed_grant and answer.grant_id is None


def test_step_up_names_level_freshness_and_a_portal_challenge(env: Env,
                                                              client: TestClient) -> None:
    token, session = open_session(env)
    answer = decide(client, {"method": "GET", "host": "app.test", "path": "/export",
                             "session_token": token,
                             "return_url": "https://evil.example/phish"})
    assert answer.decision == "step_up" and not answer.login
    assert answer.level == "aal2" and answer.acr == "urn:stepguard:aal2"
    assert answer.max_age == 900 and "Exporting data" in answer.reasons
    assert answer.challenge_url and answer.challenge_url.startswith(f"{BASE}/step-up/")
    challenge = env.runtime.store.challenges.get(answer.challenge_url.rsplit("/", 1)[1])
    assert challenge is not None and challenge.session_id == session.id
    assert challenge.return_url == "https://app.test/export"  # the foreign return URL is refused


def test_after_the_step_up_the_same_request_is_allowed(env: Env, client: TestClient) -> None:
    token, session = open_session(env)
    body = {"method": "GET", "host": "app.test", "path": "/export", "session_token": token}
    passed = pass_totp(env, decide(client, body).challenge_url or "", session)
    answer = decide(client, {**body, "session_token": passed.token})
    assert answer.decision == "allow" and answer.level == "aal2"
    assert answer.subject and answer.subject.amr == ["otp"]
    assert answer.subject.auth_time == int(env.clock.now)
    assert decide(client, body).decision == "step_up"  # the pre-step-up token was rotated away


def test_deny_is_a_decision_not_an_error(env: Env, client: TestClient) -> None:
    token, _ = open_session(env, level=Level.AAL2)
    answer = decide(client, {"method": "GET", "host": "app.test", "path": "/blocked/x",
                             "session_token": token})
    assert answer.decision == "deny" and answer.reasons == ["Blocked by policy"]
    assert answer.subject is None and answer.challenge_url is None


@pytest.mark.parametrize("path", ["/blocked%2Fx", "/a/%2e%2e/blocked", "/x%00", "/a;b", "x"])
def test_an_ambiguous_path_is_a_400_json_error(client: TestClient, path: str) -> None:
    response = client.post(DECIDE_PATH, json={"method": "GET", "host": "app.test", "path": path})
    assert response.status_code == 400
    assert response.json()["error"] in ("bad_request", "invalid_request")


def test_the_canonical_path_is_decided(env: Env, client: TestClient) -> None:
    token, _ = open_session(env, level=Level.AAL2)
    answer = decide(client, {"method": "GET", "host": "APP.test.", "path": "/public/../blocked/x",
                             "session_token": token})
    assert answer.decision == "deny"


@pytest.mark.parametrize("body", [
    {"method": "GET", "host": "app.test"},
    {"method": "GET", "host": "app.test", "path": "/", "extra": 1},
    {"method": "GET", "host": "app.test", "path": "/", "client_ip": "not-an-ip"},
    {"method": "GET", "host": "app.test", "path": "/", "attributes": {"a": {"nested": 1}}},
    {"method": "GET", "host": "app.test", "path": "/", "attributes": {"bad key": 1}},
])
def test_invalid_bodies_are_400_without_echoing_input(client: TestClient,
                                                      body: dict[str, Any]) -> None:
    body = {**body, "session_token": "s3cret-token-value"}
    response = client.post(DECIDE_PATH, json=body)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "s3cret-token-value" not in response.text


def test_wrong_media_type_and_oversized_bodies(client: TestClient) -> None:
    assert client.post(DECIDE_PATH, content=b"method=GET",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}
                       ).status_code == 415
    huge = {"method": "GET", "host": "app.test", "path": "/", "user_agent": "x" * 70_000}
    assert client.post(DECIDE_PATH, json=huge).status_code == 413


def test_store_outage_is_503_never_an_allow(env: Env, client: TestClient,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from stepguard.core.errors import StoreUnavailable

    token, _ = open_session(env)

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(env.runtime.store.session_states, "read", down)
    response = client.post(DECIDE_PATH, json={"method": "GET", "host": "app.test",
                                              "path": "/dashboard", "session_token": token})
    assert response.status_code == 503 and response.json()["error"] == "unavailable"


def test_a_streamed_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    """No Content-Length (chunked): the body is still bounded while it is read."""
    def pieces():  # type: ignore[no-untyped-def]
        yield b'{"method": "GET", "host": "app.test", "path": "/", "user_agent": "'
        for _ in range(40):
            yield b"x" * 4096
        yield b'"}'

    assert client.post(DECIDE_PATH, content=pieces(),
                       headers={"Content-Type": "application/json"}).status_code == 413


def test_a_store_outage_while_checking_the_api_key_is_503(
        env: Env, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from stepguard.core.errors import StoreUnavailable

    def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(env.runtime.store.api_keys, "get", down)
    response = client.post(DECIDE_PATH, json={"method": "GET", "host": "app.test", "path": "/"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"] == "unavailable"


# ------------------------------------------------------------------------------------ bearer hook


def test_bearer_tokens_go_through_the_bearer_adapter(tmp_path: Path) -> None:
    """A JWT from a (simulated) issuer is decided by adapters.bearer: acr/amr/auth_time count."""
    from stepguard.adapters.bearer import BearerSettings, BearerValidator
    from tests.integration.test_bearer import AUDIENCE, ISSUER, T0, Issuer, ec_key, sign

    clock = Clock(T0)
    runtime = make_runtime(tmp_path, clock=clock, policy=TEST_POLICY,
                           extra=f'bearer: {{issuer: "{ISSUER}", audience: "{AUDIENCE}"}}\n')
    key = ec_key()
    validator = BearerValidator(BearerSettings.from_config(runtime.config.bearer, runtime.policy),
                                Issuer([key]).jwks(clock), now=clock)
    app = create_app(runtime)
    app.router.routes[0:0] = decision_api_routes(runtime, app.state.guard, app.state.stepup,
                                                 bearer_validator=validator)
    try:
        with TestClient(app, base_url=BASE) as client:
            client.headers["X-Api-Key"] = ApiKeys(runtime).create("oauth-api").key
            body = {"method": "GET", "host": "app.test", "path": "/export"}
            aal2 = sign(key, acr="urn:stepguard:aal2", amr=["otp"])
            allowed = decide(client, {**body, "bearer": aal2})
            assert allowed.decision == "allow" and allowed.subject
            assert allowed.subject.id == "alice" and allowed.subject.amr == ["otp"]
            weak = decide(client, {**body, "bearer": sign(key)})
            assert weak.decision == "step_up" and weak.acr == "urn:stepguard:aal2"
            assert weak.challenge_url is None and weak.token_error is None
            expired = decide(client, {**body, "bearer": sign(key, exp=int(T0) - 60)})
            assert expired.decision == "step_up" and expired.token_error == "invalid_token"
    finally:
        runtime.close()


def test_bearer_without_an_issuer_is_refused_as_an_invalid_token(client: TestClient) -> None:
    answer = decide(client, {"method": "GET", "host": "app.test", "path": "/", "bearer": "x.y.z"})
    assert answer.decision == "step_up" and answer.token_error == "invalid_token"
    assert answer.subject is None


# ------------------------------------------------------------------------------------ OpenAPI


def test_openapi_document_is_generated_from_the_models(client: TestClient) -> None:
    served = client.get("/api/v1/openapi.json").json()
    assert served == openapi_document()
    assert served["openapi"] == "3.1.0"
    schemas = served["components"]["schemas"]
    assert schemas["DecideRequest"]["properties"].keys() == DecideRequest.model_fields.keys()
    assert set(schemas["DecideResponse"]["required"]) == set(DecideResponse.model_fields)
    post = served["paths"][DECIDE_PATH]["post"]
    assert {"200", "400", "401", "413", "415", "503"} <= set(post["responses"])


def test_the_api_can_be_switched_off(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, clock=Clock(), policy=TEST_POLICY,
                           extra="api: {enabled: false}\n")
    try:
        assert decision_api_routes(runtime, None, None) == []  # type: ignore[arg-type]
    finally:
        runtime.close()


# ------------------------------------------------------------------------------------ schemathesis


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Starlette, Env]]:
    env = make_env(tmp_path_factory.mktemp("schemathesis"))
    yield gateway_app(env.runtime), env
    env.runtime.close()


def test_schemathesis_finds_no_5xx_and_no_schema_violation(
        fuzz_target: tuple[Starlette, Env]) -> None:
    """Every operation of the served spec, fuzzed: no 5xx, every answer matches the spec."""
    app, env = fuzz_target
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    seen: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            # A schema-valid body can still be ambiguous (`/a%2Fb`, a bad host): the spec names
            # that 400, so the "positive data must be accepted" heuristic does not apply.
            response = case.call_and_validate(headers={"Authorization": f"Bearer {env.api_key}"},
                                              excluded_checks=[positive_data_acceptance])
            assert response.status_code < 500, response.text
            seen[response.status_code] = seen.get(response.status_code, 0) + 1

        run()
    assert 200 in seen, seen


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "x" * 65])
def test_an_api_key_name_outside_its_shape_is_refused(env: Env, name: str) -> None:
    with pytest.raises(ValueError, match="a key name is"):
        ApiKeys(env.runtime).create(name)
    assert [r.name for r in ApiKeys(env.runtime).list()] == ["test-client"]
