"""The admin console's actions and views in the CLI (issue 14): confirmation, the paged audit
view, the ledger's status, policy versions and diff."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from stepguard.cli.main import app as cli
from stepguard.config.load import load_config
from stepguard.service.runtime import build_runtime
from tests.integration.test_admin_console import POLICY
from tests.support.gateway import Clock, seed_user, write_config


def test_cli_actions_confirm_views_page_and_policy_versions_diff(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy=POLICY)
    runtime = build_runtime(load_config(config), clock=Clock())
    alice = seed_user(runtime)
    from tests.integration.test_admin_console import Console

    Console(runtime, runtime.clock, {}, alice).session(alice)  # type: ignore[arg-type]
    for n in range(7):
        runtime.record(kind="admin", subject=alice.user.id, outcome=f"probe{n % 2}")
    runtime.close()
    c, runner = str(config), CliRunner()

    kept = runner.invoke(cli, ["users", "end-sessions", "alice", "-c", c], input="n\n")
    assert kept.exit_code == 1 and "Aborted" in kept.output
    ended = runner.invoke(cli, ["users", "end-sessions", "alice", "-c", c], input="y\n")
    assert ended.exit_code == 0 and "ended 1 session(s) of alice" in ended.output

    page = runner.invoke(cli, ["audit", "list", "-c", c, "--user", "alice", "--outcome",
                               "probe1", "--limit", "2"])
    assert page.exit_code == 0 and page.output.count("probe1") == 2
    assert "more: --before" in page.output
    lines = runner.invoke(cli, ["audit", "list", "-c", c, "--kind", "admin", "--format",
                                "jsonl"]).output.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records[0]["outcome"] == "sessions_ended"
    assert records[0]["detail"]["by"].startswith("cli")
    assert [r["seq"] for r in records] == sorted((r["seq"] for r in records), reverse=True)
    status = runner.invoke(cli, ["audit", "status", "-c", c])
    assert status.exit_code == 0 and "entries:" in status.output

    (tmp_path / "policy.yaml").write_text(POLICY.replace("max_age: 1h", "max_age: 10m"))
    build_runtime(load_config(config), clock=Clock()).close()
    versions = runner.invoke(cli, ["policy", "versions", "-c", c])
    assert [line.split()[0] for line in versions.output.splitlines()] == ["2", "1"]
    diff = runner.invoke(cli, ["policy", "diff", "-c", c])
    assert "-    require: {level: aal2, max_age: 1h" in diff.output
    assert "+    require: {level: aal2, max_age: 10m" in diff.output
    assert runner.invoke(cli, ["policy", "diff", "-c", c, "--to", "9"]).exit_code == 1
