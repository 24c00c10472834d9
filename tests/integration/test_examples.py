"""The issue-5 examples work as their READMEs say.

- `examples/fastapi_bank/`: the FastAPI bank in embedded mode, in process: sign in through the
  portal the middleware serves, a small transfer passes, a large one steps up (RFC 9470 for the
  API client, 303 for the browser), the TOTP step-up at the portal approves exactly that
  transfer, once.
- `examples/remote_decide/`: `decide.sh` (sh + curl) against a real `stepguard serve` on a free
  port with a temp config, with an API key made by `stepguard api-keys create`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from stepguard.cli import api_keys_cmd
from tests.integration.test_decision_api import Env, make_env, open_session
from tests.support.servers import Process, free_port, python_env

REPO = Path(__file__).resolve().parents[2]
BANK = REPO / "examples" / "fastapi_bank"
DECIDE_SH = REPO / "examples" / "remote_decide" / "decide.sh"
BANK_POLICY = (BANK / "policy.yaml").read_text()


# ------------------------------------------------------------------------------------ fastapi_bank


@pytest.fixture()
def bank(tmp_path: Path) -> Iterator[tuple[TestClient, Env]]:
    from examples.fastapi_bank.app import create_bank

    env = make_env(tmp_path, policy=BANK_POLICY)
    with TestClient(create_bank(env.runtime), base_url="http://localhost:9091",
                    follow_redirects=False) as client:
        yield client, env
    env.runtime.close()


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def test_fastapi_bank_end_to_end(bank: tuple[TestClient, Env]) -> None:
    client, env = bank
    assert client.get("/", headers={"Accept": "text/html"}).status_code == 303
    login = client.get("/login?rd=%2F")
    signed_in = client.post("/login?rd=%2F", data={
        "username": "alice", "password": env.alice.password, "csrf_token": csrf(login.text)})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    home = client.get("/").json()
    assert home["user"] == "alice" and home["level"] == "aal1" and home["amr"] == ["pwd"]

    small = client.post("/transfers", json={"amount": "12.00", "payee": "Bob"})
    assert small.status_code == 200 and small.json()["approved_by_grant"] is None
    large = {"amount": 5000, "payee": "Bob"}
    api = client.post("/transfers", json=large)
    assert api.status_code == 401
    assert 'acr_values="urn:stepguard:aal2"' in api.headers["www-authenticate"]
    assert "max_age=0" in api.headers["www-authenticate"]
    browser = client.post("/transfers", json=large, headers={"Accept": "text/html"})
    assert browser.status_code == 303
    step_up_path = browser.headers["location"].removeprefix("http://localhost:9091")

    page = client.get(step_up_path)
    assert page.status_code == 200 and "Approve a transfer of 5000 to Bob" in page.text
    env.clock.advance(30)
    passed = client.post(f"{step_up_path}/totp", data={
        "code": env.alice.code(env.clock.now), "csrf_token": csrf(page.text)})
    assert passed.status_code == 303, passed.text

    assert client.post("/transfers", json={"amount": "5000", "payee": "Mallory"}).status_code == 401
    sent = client.post("/transfers", json=large)
    assert sent.status_code == 200, sent.text
    assert sent.json()["approved_by_grant"] and sent.json()["level"] == "aal2"
    assert client.post("/transfers", json=large).status_code == 401  # approved once
    export = client.get("/statements/export")
    assert export.status_code == 200 and export.json()["amr"] == ["otp"]


# ------------------------------------------------------------------------------------ remote_decide


@pytest.fixture()
def stepguard_server(tmp_path: Path) -> Iterator[tuple[Process, str, str]]:
    """A real `stepguard serve` on a free port; an API key from the CLI; alice's session."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    port = free_port()
    env = make_env(tmp_path, policy=BANK_POLICY, public_url=f"http://localhost:{port}")
    token, _ = open_session(env)
    env.runtime.close()
    config = str(tmp_path / "stepguard.yaml")
    created = CliRunner().invoke(api_keys_cmd.app, ["create", "curl-client", "-c", config])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    server = Process([sys.executable, "-m", "stepguard.cli.main", "serve", "-c", config,
                      "--host", "127.0.0.1", "--port", str(port)], port=port,
                     workdir=tmp_path, name="stepguard", env=python_env(), ready_path="/healthz")
    with server:
        spec = httpx.get(f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=5)
        if spec.status_code == 404:
            pytest.fail("`stepguard serve` has no decision API: web/app.py needs "
                        "`routes += decision_api_routes(runtime, guard, stepup)`")
        yield server, key, token


def run_decide(server: Process, key: str, *args: str) -> tuple[int, dict[str, object] | str]:
    result = subprocess.run(["sh", str(DECIDE_SH), *args], capture_output=True, text=True,
                            timeout=20, env={"PATH": "/usr/bin:/bin",
                                             "STEPGUARD_URL": f"http://127.0.0.1:{server.port}",
                                             "STEPGUARD_API_KEY": key})
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.returncode, result.stderr


def test_remote_decide_script_against_a_real_server(
        stepguard_server: tuple[Process, str, str]) -> None:
    server, key, token = stepguard_server
    code, answer = run_decide(server, key, "GET", "/dashboard", token)
    assert code == 0 and isinstance(answer, dict) and answer["decision"] == "allow"
    assert answer["subject"]["username"] == "alice"  # type: ignore[index]

    code, answer = run_decide(server, key, "POST", "/transfers", token, "payments.transfer",
                              '{"amount": 5000, "payee": "Bob"}')
    assert code == 10 and isinstance(answer, dict)
    assert answer["bound_values"] == {"amount": "5000", "payee": "Bob"}
    assert str(answer["challenge_url"]).startswith(f"http://localhost:{server.port}/step-up/")

    code, answer = run_decide(server, key, "GET", "/dashboard")
    assert code == 10 and isinstance(answer, dict) and answer["login"] is True

    code, _ = run_decide(server, "sgk_0000000000000000_" + "x" * 43, "GET", "/dashboard", token)
    assert code == 3  # a wrong key is no decision: the caller fails closed
    code, _ = run_decide(server, key, "GET", "/a%2Fb", token)
    assert code == 3


def test_api_keys_cli_lists_rotates_and_revokes(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.runtime.close()
    config = str(tmp_path / "stepguard.yaml")
    runner = CliRunner()
    listed = runner.invoke(api_keys_cmd.app, ["list", "-c", config])
    assert listed.exit_code == 0 and "test-client" in listed.output and "active" in listed.output
    rotated = runner.invoke(api_keys_cmd.app, ["rotate", "test-client", "--grace", "5m",
                                                "-c", config])
    assert rotated.exit_code == 0 and rotated.stdout.startswith("sgk_")
    assert runner.invoke(api_keys_cmd.app, ["revoke", "test-client", "-c", config]).exit_code == 0
    assert "revoked" in runner.invoke(api_keys_cmd.app, ["list", "-c", config]).output
    again = runner.invoke(api_keys_cmd.app, ["revoke", "test-client", "-c", config])
    assert again.exit_code == 1
