"""`stepguard demo` prints a walk-through whose commands work exactly as printed (issue 15):
the current-code command prints alice's code of this moment (never a stale one printed at
start), and the ledger check verifies the demo's store."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pyotp

from stepguard.demo.run import current_code
from tests.support.demo_server import DemoServer
from tests.support.servers import REPO_ROOT, python_env


def printed_command(log: str, after: str) -> list[str]:
    lines = log.splitlines()
    index = next(i for i, line in enumerate(lines) if after in line)
    return shlex.split(lines[index + 1].strip())


def test_the_printed_walkthrough_commands_work(tmp_path: Path) -> None:
    with DemoServer(tmp_path) as demo:
        log = demo.log_tail(80)
        assert "code now" not in log  # no code that is stale by the time it is read
        secret = demo.user("alice").totp_secret
        command = printed_command(log, "A current code for alice")
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                env=python_env(), cwd=REPO_ROOT, check=True).stdout
        code = answer.split()[0]
        now = time.time()
        assert code in {pyotp.TOTP(secret).at(now + d) for d in (-30, 0)}, answer
        assert "valid for" in answer
        verify = printed_command(log, "Verify the ledger:")
        checked = subprocess.run(verify, capture_output=True, text=True, timeout=60,
                                 env=python_env(), cwd=REPO_ROOT)
        assert checked.returncode == 0 and "ledger intact" in checked.stdout, checked


def test_current_code_says_how_long_it_stays_valid(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("alice pw JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\n")
    assert current_code(tmp_path, "alice", now=59.0) == (
        f"{pyotp.TOTP('JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP').at(59)}   (valid for 1 more second)")
    assert current_code(tmp_path, "alice", now=60.0).endswith("(valid for 30 more seconds)")
