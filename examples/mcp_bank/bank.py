"""A small bank as an MCP server (the official `mcp` SDK): the upstream behind Stepguard's MCP
door in `examples/mcp_bank` and in the tests.

    python bank.py http 8000     # Streamable HTTP on 127.0.0.1:8000/mcp
    python bank.py stdio         # stdio (Stepguard starts it itself)

Every executed `transfer` and `export_customers` is appended to the file named by
`BANK_LEDGER` (one JSON line each), so a test can count what really ran. `BANK_DESCRIBE`
overrides the `transfer` tool's description (a test re-describes the tool after an approval).
"""

from __future__ import annotations

import json
import os
import sys

from mcp.server.mcpserver import MCPServer

bank = MCPServer("acme-bank")
BALANCES = {"checking": 12_500.0, "savings": 40_000.0}
DESCRIBE = os.environ.get("BANK_DESCRIBE", "Transfer money from checking to a payee's IBAN.")


def _record(kind: str, **fields: object) -> None:
    ledger = os.environ.get("BANK_LEDGER")
    if ledger:
        with open(ledger, "a", encoding="utf-8") as out:
            out.write(json.dumps({"kind": kind, **fields}) + "\n")


@bank.tool()
def get_balance(account: str = "checking") -> float:
    """The balance of one account."""
    return BALANCES.get(account, 0.0)


@bank.tool(description=DESCRIBE)
def transfer(amount: float, to: str, memo: str = "") -> str:
    _record("transfer", amount=amount, to=to, memo=memo)
    BALANCES["checking"] -= amount
    return f"sent {amount:.2f} to {to}"


@bank.tool()
def export_customers(table: str = "customers") -> str:
    """Export a customer table as CSV."""
    _record("export", table=table)
    return "id,name\n1,Ada\n2,Grace\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        import uvicorn

        port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
        uvicorn.run(bank.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")
    else:
        bank.run("stdio")


if __name__ == "__main__":
    main()
