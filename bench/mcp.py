"""MCP door benchmark (DESIGN.md §10, issue 12), the figure beside its anchor, same run.

A relayed `tools/call` that needs no step-up, made by the official `mcp` SDK client over
Streamable HTTP, through `stepguard serve` (`/mcp/bank`, agent token, policy of
`examples/mcp_bank`) — vs **the same SDK client calling the same upstream MCP server directly**
(`examples/mcp_bank/bank.py` under uvicorn). Target: the relayed call costs ≤ 1.25× the direct
one.

How it is measured: several agents (one MCP session each, `--agents`) call `get_balance` and a
small `transfer` (allowed: below the policy's step-up amount, so both are decided, audited and
relayed) in turn, sequentially per agent and concurrently across agents, so the door sees many
sessions at once as it does in real traffic. The direct and relayed runs alternate
(`--rounds`); each figure is the best round's mean time per call (wall time ÷ calls), and p50
and p99 of single calls are printed beside it. Every result is checked (an error aborts the
run), and the bank's ledger must hold exactly the relayed and direct transfers sent.

Run: `python bench/mcp.py` (`--help`). About 40 s with the defaults. A MISS prints but does not
fail the run unless `--strict` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# This file is named after the door: its own folder must not shadow the `mcp` SDK package.
sys.path[:] = [str(REPO_ROOT / "src"), str(REPO_ROOT),
               *(p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT / "bench")]

RATIO_TARGET = 1.25
BANK = REPO_ROOT / "examples" / "mcp_bank"


# ------------------------------------------------------------------------------------ setup


def prepare(folder: Path, bank_port: int, port: int) -> tuple[Path, list[str]]:
    """Config, store with four users and sixteen agent tokens: (config, tokens)."""
    quiet = io.StringIO()  # the admin log lines of the setup
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return _seed(folder, bank_port, port)


def _seed(folder: Path, bank_port: int, port: int) -> tuple[Path, list[str]]:
    from tests.support.gateway import make_runtime, seed_user

    from stepguard.service.agent_tokens import AgentTokens

    extra = f"mcp_servers:\n  - {{name: bank, url: \"http://127.0.0.1:{bank_port}/mcp\"}}\n"
    runtime = make_runtime(folder, policy=(BANK / "policy.yaml").read_text(),
                           public_url=f"http://localhost:{port}", extra=extra,
                           clock=time.time)  # type: ignore[arg-type]
    users = [seed_user(runtime, f"agent-owner-{i}", with_totp=False).user for i in range(4)]
    agents = AgentTokens(runtime)
    tokens = [agents.create(users[i % len(users)].id, f"bench agent {i}", ttl=86400).token
              for i in range(16)]
    runtime.close()
    return folder / "stepguard.yaml", tokens


@dataclass
class Rig:
    direct: str  # the bank's own endpoint
    door: str  # the same bank through Stepguard's MCP door
    tokens: list[str]
    ledger: Path
    bank_group: int
    door_group: int


@dataclass
class Round:
    wall: float  # seconds per call: the round's wall time ÷ its calls
    cpu: float  # CPU seconds per call: client + every server on the path
    times: list[float]  # each call alone
    transfers: int


@contextmanager
def servers(workdir: Path) -> Iterator[Rig]:
    """The bank and `stepguard serve` in front of it, each its own process group."""
    from tests.support.servers import Process, free_port, python_env

    bank_port, port = free_port(), free_port()
    config, tokens = prepare(workdir / "stepguard", bank_port, port)
    ledger = workdir / "bank-ledger.jsonl"
    bank = Process([sys.executable, str(BANK / "bank.py"), "http", str(bank_port)],
                   port=bank_port, workdir=workdir, name="bank",
                   env=python_env({"BANK_LEDGER": str(ledger)}), ready_path="/")
    door = Process([sys.executable, "-m", "stepguard.cli.main", "serve", "-c", str(config),
                    "--host", "127.0.0.1", "--port", str(port)], port=port, workdir=workdir,
                   name="stepguard", env=python_env(), ready_path="/healthz")
    with bank, door:
        assert bank.pid is not None and door.pid is not None
        yield Rig(f"http://127.0.0.1:{bank_port}/mcp", f"http://127.0.0.1:{port}/mcp/bank",
                  tokens, ledger, bank.pid, door.pid)


# ------------------------------------------------------------------------------------ load


async def _agent(url: str, token: str | None, calls: int, times: list[float],
                 sent: list[int]) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    async with Client(transport, mode="legacy") as client:
        for i in range(calls):
            start = time.perf_counter()
            if i % 2:
                result = await client.call_tool("transfer", {"amount": 10, "to": "DE-bench"})
                sent.append(1)
            else:
                result = await client.call_tool("get_balance", {"account": "savings"})
            times.append(time.perf_counter() - start)
            if result.is_error:
                raise SystemExit(f"invalid run: a call through {url} failed: {result.content}")


async def _calls(url: str, tokens: list[str | None], calls: int, times: list[float],
                 sent: list[int]) -> None:
    await asyncio.gather(*(_agent(url, token, calls, times, sent) for token in tokens))


def measure(url: str, tokens: list[str | None], calls: int, groups: list[int]) -> Round:
    """One round: every agent opens its MCP session and makes `calls` calls."""
    times: list[float] = []
    sent: list[int] = []
    cpu = time.process_time() + sum(group_cpu(g) for g in groups)
    start = time.perf_counter()
    asyncio.run(_calls(url, tokens, calls, times, sent))
    wall = time.perf_counter() - start
    cpu = time.process_time() + sum(group_cpu(g) for g in groups) - cpu
    return Round(wall / len(times), cpu / len(times), times, len(sent))


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields from the state on: pgrp is the third
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8, help="concurrent MCP sessions (≤ 16)")
    parser.add_argument("--calls", type=int, default=150, help="calls per agent per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best kept)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a MISS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepguard-bench-") as tmp, ExitStack() as stack:
        rig = stack.enter_context(servers(Path(tmp)))
        agents: list[str | None] = list(rig.tokens[:args.agents])
        anonymous: list[str | None] = [None] * len(agents)
        ways = (("direct", rig.direct, anonymous, [rig.bank_group]),
                ("door", rig.door, agents, [rig.bank_group, rig.door_group]))
        expected = _transfers(rig.ledger)
        for _, url, who, groups in ways:  # warm-up
            expected += measure(url, who[:2], 20, groups).transfers
        best: dict[str, Round] = {}
        for _ in range(args.rounds):
            for name, url, who, groups in ways:
                result = measure(url, who, args.calls, groups)
                expected += result.transfers
                if name not in best or result.wall < best[name].wall:
                    best[name] = result
        if _transfers(rig.ledger) != expected:
            raise SystemExit(f"invalid run: the bank ran {_transfers(rig.ledger)} transfers, "
                             f"{expected} were sent")
        door, direct = best["door"], best["direct"]
        ratio, cpu_ratio = door.wall / direct.wall, door.cpu / direct.cpu
        verdict = "PASS" if ratio <= RATIO_TARGET else "MISS"
        print(f"MCP door, tools/call without step-up ({len(agents)} agents, "
              f"{args.calls} calls each, best of {args.rounds}, load {os.getloadavg()[0]:.1f}): "
              f"{_ms(door.wall)} per call, {_ms(door.cpu)} CPU (one call p50 "
              f"{_ms(statistics.median(door.times))}, p99 {_ms(_percentile(door.times, 0.99))})"
              f" | upstream directly {_ms(direct.wall)}, {_ms(direct.cpu)} CPU (p50 "
              f"{_ms(statistics.median(direct.times))}, p99 "
              f"{_ms(_percentile(direct.times, 0.99))}) | {ratio:.2f}× the time, "
              f"{cpu_ratio:.2f}× the CPU (target ≤ {RATIO_TARGET}×) {verdict}")
        if verdict == "MISS" and args.strict:
            raise SystemExit(1)


def _transfers(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines()
               if json.loads(line).get("kind") == "transfer")


if __name__ == "__main__":
    main()
