"""The command line: every problem at once with exit code 2; explain and test; config reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepguard.cli.main import app
from stepguard.config.reference import reference_markdown

ROOT = Path(__file__).parents[2]
runner = CliRunner()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("rules: [\n", "invalid YAML"),
        ("rules:\n  - name: a\n    colour: red\n    allow: true\n", "unknown field 'colour'"),
        (
            'attributes: {amount: number}\nrules:\n  - name: a\n    when: "amout > 1"\n'
            "    require: {level: aal2}\n",
            "did you mean 'amount'",
        ),
        ("networks: {office: [10.0.0.0/40]}\nrules: []\n", "CIDR"),
        ("rules:\n  - name: a\n    require: {level: aal9}\n", "aal9"),
    ],
)
def test_broken_policy_exits_2_with_a_clear_report(
    tmp_path: Path, text: str, fragment: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    result = runner.invoke(app, ["policy", "validate", str(policy)])
    assert result.exit_code == 2
    assert fragment in result.output
    assert str(policy) in result.output


def test_all_problems_are_listed_together(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "networks: {office: [bad]}\nrules:\n  - name: a\n    require: {level: aal9}\n"
        "  - name: a\n    deny: ''\n"
    )
    result = runner.invoke(app, ["policy", "validate", str(policy)])
    assert result.exit_code == 2
    assert "4 problems" in result.output or "3 problems" in result.output


def test_example_policy_validates_and_its_tests_pass() -> None:
    assert (
        runner.invoke(app, ["policy", "validate", str(ROOT / "examples/policy.yaml")]).exit_code
        == 0
    )
    result = runner.invoke(app, ["policy", "test", str(ROOT / "examples/policy.tests.yaml")])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output


def test_the_agent_policy_tests_with_tool_call_cases_pass() -> None:
    tests = ROOT / "examples/mcp_bank/policy.tests.yaml"
    result = runner.invoke(app, ["policy", "test", str(tests)])
    assert result.exit_code == 0, result.output
    assert "13 passed, 0 failed" in result.output


def test_a_tool_call_case_that_expects_the_wrong_thing_fails(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text((ROOT / "examples/mcp_bank/policy.yaml").read_text())
    (tmp_path / "t.yaml").write_text(
        "cases:\n  - name: changed arguments\n"
        "    call: {server: bank, tool: transfer, arguments: {amount: 5001, to: DE89}}\n"
        "    grants: [{scope: agent-large-transfer, single_use: true,\n"
        "              call: {arguments: {amount: 5000, to: DE89}}}]\n"
        "    expect: {outcome: allow}\n"
        "  - name: both kinds\n    request: {path: /}\n"
        "    call: {server: bank, tool: transfer}\n    expect: {outcome: allow}\n")
    result = runner.invoke(app, ["policy", "test", str(tmp_path / "t.yaml")])
    assert result.exit_code == 1
    assert "FAIL changed arguments" in result.output and "got 'step_up'" in result.output
    assert "FAIL both kinds" in result.output and "either a request or a call" in result.output


def test_explain_takes_an_agents_tool_call() -> None:
    policy = str(ROOT / "examples/mcp_bank/policy.yaml")
    call = '{"server":"bank","tool":"transfer","arguments":{"amount":5000,"to":"DE89"}}'
    result = runner.invoke(app, ["policy", "explain", policy, "--call", call])
    assert result.exit_code == 0, result.output
    assert "agent-large-transfer" in result.output and "STEP_UP" in result.output
    assert "Your agent wants to send 5000 to DE89" in result.output
    denied = runner.invoke(app, ["policy", "explain", policy, "--call",
                                 '{"server":"bank","tool":"drop_table"}'])
    assert denied.exit_code == 0 and "DENY" in denied.output
    bad = runner.invoke(app, ["policy", "explain", policy, "--call",
                              '{"server":"bank","tool":"tr ansfer"}'])
    assert bad.exit_code == 0 and "400" in bad.output
    assert runner.invoke(app, ["policy", "explain", policy]).exit_code == 2


def test_a_failing_policy_test_exits_1(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text((ROOT / "examples/policy.yaml").read_text())
    (tmp_path / "t.yaml").write_text(
        "cases:\n  - name: wrong\n    request: {path: /healthz}\n    expect: {outcome: deny}\n"
    )
    result = runner.invoke(app, ["policy", "test", str(tmp_path / "t.yaml")])
    assert result.exit_code == 1 and "FAIL wrong" in result.output


def test_explain_prints_the_trace_and_decision() -> None:
    result = runner.invoke(
        app,
        [
            "policy",
            "explain",
            str(ROOT / "examples/policy.yaml"),
            "--request",
            '{"method":"POST","host":"bank.example.com","path":"/transfers",'
            '"attributes":{"amount":5000,"payee":"Bob"}}',
            "--session",
            '{"user":"alice","level":"aal1","age":"1m"}',
        ],
    )
    assert result.exit_code == 0, result.output
    assert "large-transfer" in result.output and "STEP_UP" in result.output
    assert "Approve a transfer of 5000 to Bob" in result.output


def test_explain_reports_a_bad_request() -> None:
    result = runner.invoke(
        app,
        ["policy", "explain", str(ROOT / "examples/policy.yaml"), "--request", '{"path":"/a%2fb"}'],
    )
    assert result.exit_code == 0 and "400" in result.output


def test_config_validate_lists_config_and_policy_problems(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("rules:\n  - name: a\n    require: {level: aal7}\n")
    (tmp_path / "stepguard.yaml").write_text(
        'server: {port: 99999, trusted_proxies: [nope]}\nsecrets: {cookie_key: "${NO_SUCH_VAR}"}\n'
        "unknown: 1\n"
    )
    result = runner.invoke(app, ["config", "validate", str(tmp_path / "stepguard.yaml")])
    assert result.exit_code == 2
    for fragment in (
        "server.port",
        "server.trusted_proxies",
        "NO_SUCH_VAR",
        "unknown field",
        "aal7",
        "policy.yaml",
    ):
        assert fragment in result.output, fragment


def test_configuration_reference_is_up_to_date() -> None:
    assert (ROOT / "docs/configuration.md").read_text() == reference_markdown(), (
        "run: stepguard config reference > docs/configuration.md"
    )


def test_the_demo_ships_the_example_policy() -> None:
    packaged = ROOT / "src" / "stepguard" / "demo" / "policy.yaml"
    assert packaged.read_text() == (ROOT / "examples" / "policy.yaml").read_text(), \
        "copy examples/policy.yaml to src/stepguard/demo/policy.yaml"


@pytest.mark.parametrize(("chosen", "upstreams", "served"), [
    ("auto", [], "granian"),  # forward-auth and the portal: granian measured ~1.8x uvicorn
    ("auto", [{"host": "*", "url": "http://127.0.0.1:9"}], "uvicorn"),  # reverse-proxy mode
    ("granian", [{"host": "*", "url": "http://127.0.0.1:9"}], "granian"),
    ("uvicorn", [], "uvicorn"),
])
def test_serve_runs_the_server_chosen_for_the_mode(chosen: str, upstreams: list[dict[str, str]],
                                                   served: str) -> None:
    from stepguard.config.schema import StepguardConfig

    config = StepguardConfig.model_validate({"server": {"server": chosen},
                                             "upstreams": upstreams})
    assert config.http_server() == served
