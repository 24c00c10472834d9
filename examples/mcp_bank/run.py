"""One command: the bank MCP server, `stepguard serve` with the MCP door in front of it, the user
alice (password and TOTP secret printed) and an agent token for her.

    python examples/mcp_bank/run.py [--port 9093]
"""

from __future__ import annotations

import argparse
import base64
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyotp

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    from stepguard.config.load import load_config
    from stepguard.service.accounts import Accounts
    from stepguard.service.agent_tokens import AgentTokens
    from stepguard.service.runtime import build_runtime

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9093)
    port = parser.parse_args().port
    work = Path(tempfile.mkdtemp(prefix="stepguard-mcp-bank-"))
    bank_port = free_port()
    (work / "policy.yaml").write_text((HERE / "policy.yaml").read_text())
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    (work / "stepguard.yaml").write_text(f"""\
policy: policy.yaml
server: {{public_url: "http://localhost:{port}", server: uvicorn}}
store: {{url: "sqlite:///stepguard.db"}}
secrets: {{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{k1: "{key}"}}, totp_current: k1}}
webauthn: {{rp_id: localhost, origins: ["http://localhost:{port}"]}}
portal: {{protected_domains: [localhost]}}
mcp_servers:
  - {{name: bank, url: "http://127.0.0.1:{bank_port}/mcp"}}
  - {{name: bank-stdio, command: ["{sys.executable}", "{HERE / 'bank.py'}", stdio]}}
""")
    runtime = build_runtime(load_config(work / "stepguard.yaml"))
    password, secret = secrets.token_urlsafe(12), pyotp.random_base32(32)
    accounts = Accounts(runtime)
    alice = accounts.add_user("alice", password=password, display_name="Alice")
    accounts.add_totp_secret(alice, secret)
    token = AgentTokens(runtime).create(alice.id, "example agent", ttl=86400).token
    runtime.close()
    bank = subprocess.Popen([sys.executable, str(HERE / "bank.py"), "http", str(bank_port)])
    gate = subprocess.Popen([sys.executable, "-m", "stepguard.cli.main", "serve", "-c",
                             str(work / "stepguard.yaml"), "--port", str(port)])
    print(f"\nMCP door:     http://localhost:{port}/mcp/bank  (and /mcp/bank-stdio)\n"
          f"agent token:  {token}\nportal:       http://localhost:{port}/login  "
          f"alice / {password}\nTOTP secret:  {secret}\n")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while bank.poll() is None and gate.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (gate, bank):
            process.terminate()


if __name__ == "__main__":
    main()
