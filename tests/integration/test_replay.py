"""What-if replay agrees with a live run: the same traffic, decided live by policy B, gives
exactly the outcomes that replaying policy A's ledger through B predicts (issue 14)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from stepguard.audit.replay import outcome_name, recorded_requests, replay
from stepguard.cli.main import app as cli
from stepguard.config.load import load_policy
from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from stepguard.service.runtime import hash_token, new_id, new_token
from stepguard.storage.records import SessionRecord
from tests.integration.test_decision_api import DECIDE_PATH, Env, gateway_app, make_env
from tests.support.gateway import seed_user

POLICY_A = """
attributes: {amount: number}
networks: {office: [10.20.0.0/16]}
rules:
  - {name: public, match: {paths: ["/static/**"]}, allow: true}
  - {name: admin, match: {paths: ["/admin/**"]}, require: {level: aal2}}
  - {name: transfer, match: {paths: ["/transfers"]}, when: "amount > 1000",
     require: {level: aal2}}
default: {level: aal1}
"""
POLICY_B = """
attributes: {amount: number}
networks: {office: [10.20.0.0/16]}
rules:
  - {name: public, match: {paths: ["/static/**"]}, allow: true}
  - {name: admin, match: {paths: ["/admin/**"]}, when: "not network in office",
     require: {level: aal2}}
  - {name: reports, match: {paths: ["/reports/**"]}, require: {level: aal2, max_age: 10m}}
  - {name: transfer, match: {paths: ["/transfers"]}, when: "amount > 500",
     require: {level: aal2}}
  - {name: old, match: {paths: ["/old/**"]}, deny: "gone"}
default: {level: aal1}
"""
OFFICE, OUTSIDE = "10.20.0.5", "203.0.113.7"
PATHS = ["/home", "/admin/users", "/reports/q1", "/old/page", "/static/a.css", "/home/b"]


def session(env: Env, user_id: str, *, aal2_age: float | None) -> str:
    token, now = new_token(), env.clock.now
    events = [AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now - 1800)]
    if aal2_age is not None:
        events.append(AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2,
                                at=now - aal2_age))
    env.runtime.store.sessions.add(SessionRecord(
        id=new_id(), token_hash=hash_token(token), user_id=user_id, created=now - 1800,
        last_seen=now, events=tuple(events)))
    return token


def run_traffic(folder: Path, policy: str, *, extra: str = "") -> Env:
    env = make_env(folder, policy=policy)
    if extra:
        env.runtime.close()
        config = folder / "stepguard.yaml"
        config.write_text(config.read_text() + extra)
        from stepguard.config.load import load_config
        from stepguard.service.runtime import build_runtime

        env = Env(build_runtime(load_config(config), clock=env.clock), env.clock, env.alice,
                  env.api_key)
    bob = seed_user(env.runtime, "bob", groups=())
    tokens = [session(env, env.alice.user.id, aal2_age=None),
              session(env, bob.user.id, aal2_age=1200),
              session(env, bob.user.id, aal2_age=60), ""]
    with TestClient(gateway_app(env.runtime), base_url="http://localhost:9091",
                    client=("127.0.0.1", 5000), follow_redirects=False) as client:
        client.headers["Authorization"] = f"Bearer {env.api_key}"
        for round_ in range(3):
            for t, token in enumerate(tokens):
                for p, path in enumerate(PATHS):
                    ip = OFFICE if (t + p + round_) % 2 else OUTSIDE
                    headers = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https",
                               "X-Forwarded-Host": "app.test", "X-Forwarded-Uri": path,
                               "X-Forwarded-For": ip, "Accept": "application/json"}
                    if token:
                        headers["Cookie"] = f"stepguard_session={token}"
                    client.get("/api/authz/forward-auth", headers=headers)
                    env.clock.advance(0.25)
                for amount in (300, 700, 1500):
                    body = {"method": "POST", "host": "app.test", "path": "/transfers",
                            "client_ip": OUTSIDE, "attributes": {"amount": amount},
                            "session_token": token or None}
                    assert client.post(DECIDE_PATH, json=body).status_code == 200
    env.runtime.audit.flush(timeout=10)
    return env


def live_outcomes(env: Env) -> Counter[tuple[str, str]]:
    """(rule, outcome) of every request the ledger records, summaries weighted by count."""
    found: Counter[tuple[str, str]] = Counter()
    for entry in env.runtime.audit_log.entries(kind="decision"):
        for request in recorded_requests(entry):
            found[(request.before_rule, request.before)] += request.count
    return found


@pytest.mark.parametrize("allows", ["summary", "every_request"])
def test_replay_of_a_ledger_through_b_predicts_the_live_run_of_b(tmp_path: Path,
                                                                 allows: str) -> None:
    extra = f"audit: {{allows: {allows}}}\n"
    a = run_traffic(tmp_path / "a", POLICY_A, extra=extra)
    b = run_traffic(tmp_path / "b", POLICY_B, extra=extra)
    try:
        entries = list(a.runtime.audit_log.entries(kind="decision"))
        same = replay(entries, load_policy(tmp_path / "a" / "policy.yaml"))
        requests = 4 * 3 * (len(PATHS) + 3)
        assert same.requests == same.replayed == requests
        assert same.changed == 0 and same.undetermined == 0 and same.not_recorded == 0

        report = replay(entries, load_policy(tmp_path / "b" / "policy.yaml"))
        predicted: Counter[tuple[str, str]] = Counter()
        for (rule, _before, after), count in report.transitions.items():
            predicted[(rule, after)] += count
        assert predicted == live_outcomes(b)
        moves = {(r, x, y) for (r, x, y) in report.transitions if x != y}
        assert ("old", "allow", "deny") in moves and ("reports", "allow", "step_up") in moves
        assert ("default", "step_up", "allow") in moves  # admin pages from the office
        assert ("transfer", "allow", "step_up") in moves
        assert report.changed > 0 and report.undetermined == 0
    finally:
        a.runtime.close()
        b.runtime.close()


def test_the_cli_prints_the_same_report_every_time_in_each_format(tmp_path: Path) -> None:
    a = run_traffic(tmp_path / "a", POLICY_A)
    a.runtime.close()
    candidate = tmp_path / "b.yaml"
    candidate.write_text(POLICY_B)
    config = str(tmp_path / "a" / "stepguard.yaml")
    base = ["policy", "replay", str(candidate), "--config", config, "--since",
            "2020-01-01T00:00:00", "--until", "2100-01-01T00:00:00"]
    runner = CliRunner()
    first = runner.invoke(cli, [*base, "--format", "json"])
    assert first.exit_code == 0, first.output
    assert runner.invoke(cli, [*base, "--format", "json"]).output == first.output
    sliced = runner.invoke(cli, [*base, "--format", "json", "--jobs", "2"])
    assert sliced.exit_code == 0 and sliced.output == first.output
    data = json.loads(first.output)
    assert data["changed"] > 0 and data["undetermined"] == 0
    change = next(c for c in data["changes"] if c["rule"] == "old")
    assert change["from"] == "allow" and change["to"] == "deny"
    assert change["examples"][0]["path"] == "/old/page"
    csv_out = runner.invoke(cli, [*base, "--format", "csv"]).output
    assert csv_out.splitlines()[0] == "rule,from,to,requests,example_seqs"
    assert "old,allow,deny," in csv_out
    text = runner.invoke(cli, [*base]).output
    assert "old: allow -> deny" in text and "would change" in text
    bad = runner.invoke(cli, [*base, "--format", "xml"])
    assert bad.exit_code == 2


def test_outcome_names_match_the_ledger() -> None:
    from stepguard.core.decision import Decision, Outcome

    assert outcome_name(Decision(outcome=Outcome.STEP_UP, rule="r", login=True)) == "login"
    assert outcome_name(Decision(outcome=Outcome.DENY, rule="r")) == "deny"
