"""Report (shadow) mode through every door: the request passes, the ledger and /metrics say
what would have happened (issue 14). Doors: Caddy and nginx forward-auth, the decision API, the
ASGI middleware; through real nginx and Caddy in tests/e2e/test_proxies.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stepguard.asgi import StepguardMiddleware
from stepguard.audit.ledger import AuditEntry
from stepguard.web.app import create_app
from tests.integration.test_asgi_middleware import starlette_app
from tests.integration.test_decision_api import (
    DECIDE_PATH,
    Env,
    gateway_app,
    make_env,
    open_session,
)
from tests.integration.test_reverse_proxy import upstream  # noqa: F401  (the fixture)
from tests.support.gateway import make_runtime, seed_user

POLICY = """
rules:
  - {name: public, match: {paths: ["/healthz"]}, allow: true}
  - name: new-export
    mode: report
    match: {paths: ["/export/**"]}
    require: {level: aal2, max_age: 5m, reason: "Exporting data"}
  - name: relaxed-blocked
    mode: report
    match: {paths: ["/blocked/**"]}
    allow: true
  - {name: blocked, match: {paths: ["/blocked/**"]}, deny: "Not here"}
default: {level: aal1}
"""
REPORT_POLICY = """
mode: report
rules:
  - {name: export, match: {paths: ["/export/**"]}, require: {level: aal2}}
  - {name: blocked, match: {paths: ["/blocked/**"]}, deny: "Not here"}
default: {level: aal1}
"""
SCRAPER = "scraper-token-for-shadow-tests"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    env = make_env(tmp_path, policy=POLICY)
    yield env
    env.runtime.close()


def client_for(env: Env) -> TestClient:
    client = TestClient(gateway_app(env.runtime), base_url="http://localhost:9091",
                        client=("127.0.0.1", 5000), follow_redirects=False)
    client.headers["Authorization"] = f"Bearer {env.api_key}"
    return client


def caddy(client: TestClient, path: str, token: str) -> int:
    headers = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "app.test", "X-Forwarded-Uri": path,
               "X-Forwarded-For": "203.0.113.7", "Cookie": f"stepguard_session={token}"}
    return client.get("/api/authz/forward-auth", headers=headers).status_code


def nginx(client: TestClient, path: str, token: str) -> int:
    headers = {"X-Original-URL": f"https://app.test{path}", "X-Original-Method": "GET",
               "X-Forwarded-For": "203.0.113.7", "Cookie": f"stepguard_session={token}"}
    return client.get("/api/authz/auth-request", headers=headers).status_code


def decisions(env: Env) -> list[AuditEntry]:
    env.runtime.audit.flush(timeout=10)
    return list(env.runtime.audit_log.entries(kind="decision"))


def test_a_report_rule_never_blocks_and_is_audited_as_would_step_up(env: Env) -> None:
    token, _ = open_session(env)
    with client_for(env) as client:
        assert caddy(client, "/export/all", token) == 200
        assert nginx(client, "/export/all", token) == 200
        answer = client.post(DECIDE_PATH, json={"method": "GET", "host": "app.test",
                                                "path": "/export/x", "session_token": token})
        assert answer.status_code == 200 and answer.json()["decision"] == "allow"
    would = [e for e in decisions(env) if e.outcome == "would_step_up"]
    assert len(would) == 3 and {e.rule for e in would} == {"new-export"}
    assert all(e.decision == "allow" for e in would)
    assert would[0].detail["enforced"] == {"outcome": "allow", "rule": "default"}
    assert would[0].detail["report"]["level"] == "aal2"
    assert "Exporting data" in would[0].reasons


def test_a_report_rule_that_would_allow_leaves_the_enforced_deny_in_force(env: Env) -> None:
    token, _ = open_session(env)
    with client_for(env) as client:
        assert caddy(client, "/blocked/x", token) == 403
    (entry,) = [e for e in decisions(env) if e.rule == "blocked"]
    assert entry.decision == "deny" and entry.detail["report"]["outcome"] == "allow"


def test_metrics_show_would_be_outcomes_beside_real_ones(tmp_path: Path) -> None:
    env = make_env(tmp_path, policy=POLICY)
    env.runtime.close()
    config = tmp_path / "stepguard.yaml"
    config.write_text(config.read_text() + f'metrics: {{token: "{SCRAPER}"}}\n')
    from stepguard.config.load import load_config
    from stepguard.service.runtime import build_runtime

    runtime = build_runtime(load_config(config), clock=env.clock)
    env = Env(runtime, env.clock, env.alice, env.api_key)
    token, _ = open_session(env)
    try:
        with client_for(env) as client:
            caddy(client, "/export/a", token)
            caddy(client, "/blocked/a", token)
            text = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPER}"}).text
    finally:
        runtime.close()
    assert 'stepguard_shadow_decisions_total{outcome="step_up",rule="new-export"} 1.0' in text
    assert 'stepguard_shadow_decisions_total{outcome="allow",rule="relaxed-blocked"} 1.0' in text
    assert 'stepguard_decisions_total{outcome="deny",rule="blocked"} 1.0' in text


def test_a_report_policy_lets_everything_through_and_audits_each_would_be(tmp_path: Path) -> None:
    env = make_env(tmp_path, policy=REPORT_POLICY)
    try:
        token, _ = open_session(env)
        with client_for(env) as client:
            assert caddy(client, "/blocked/x", token) == 200
            assert caddy(client, "/export/x", token) == 200
            assert caddy(client, "/anything", "") == 200  # anonymous: would sign in
        outcomes = sorted(e.outcome for e in decisions(env))
        assert outcomes == ["would_deny", "would_login", "would_step_up"]
    finally:
        env.runtime.close()


def test_the_asgi_middleware_passes_report_decisions(env: Env) -> None:
    token, _ = open_session(env)
    app = StepguardMiddleware(starlette_app(), mode="embedded", runtime=env.runtime)
    with TestClient(app, base_url="http://app.test", follow_redirects=False) as client:
        client.cookies.set("stepguard_session", token)
        assert client.get("/export/x").status_code == 200
        assert client.get("/blocked/x").status_code == 403
    assert [e.outcome for e in decisions(env) if e.rule == "new-export"] == ["would_step_up"]


def test_plain_allows_still_cost_no_entry_of_their_own(env: Env) -> None:
    token, _ = open_session(env)
    with client_for(env) as client:
        for _ in range(5):
            assert caddy(client, "/home", token) == 200
    env.runtime.audit.flush(timeout=10)
    entries = decisions(env)
    assert [e.outcome for e in entries] == ["allow_summary"]
    assert entries[0].detail["count"] == 5


def test_reverse_proxy_mode_passes_report_decisions_to_the_upstream(tmp_path: Path,
                                                                     upstream: str) -> None:  # noqa: F811
    """The fourth door: in reverse-proxy mode a report-mode step-up still reaches the upstream
    with the user's identity, and a report-mode allow never opens an enforced deny."""
    runtime = make_runtime(tmp_path, policy=POLICY,
                           extra=f'upstreams:\n  - host: "*"\n    url: "{upstream}"\n')
    try:
        env = Env(runtime, runtime.clock, seed_user(runtime), "")  # type: ignore[arg-type]
        token, _ = open_session(env)
        with TestClient(create_app(runtime), base_url="http://localhost:9091",
                        client=("203.0.113.5", 1000), follow_redirects=False) as client:
            client.cookies.set("stepguard_session", token)
            passed = client.get("/export/all", headers={"Accept": "text/html"})
            assert passed.status_code == 200, passed.text
            assert [v for k, v in passed.json()["headers"] if k.lower() == "remote-user"] == [
                "alice"]
            assert client.get("/blocked/x").status_code == 403
        runtime.audit.flush(timeout=10)
        outcomes = [(e.rule, e.outcome) for e in runtime.audit_log.entries(kind="decision")]
        assert ("new-export", "would_step_up") in outcomes and ("blocked", "deny") in outcomes
    finally:
        runtime.close()
