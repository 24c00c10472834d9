"""The postgres door beside pgbouncer (DESIGN.md §10), same run, same PostgreSQL 15.

pgbench select-only (`-S`), extended protocol (`-M extended`), 16 clients, against
(a) PostgreSQL directly (no proxy), (b) pgbouncer 1.18 (session pooling, the anchor),
(c) the floor, bench/pg_floor.py (a uvloop byte relay: what any asyncio gateway costs before
it reads a message) and (d) Stepguard's gateway (`stepguard postgres serve`: SCRAM sign-in with
a database token, every statement classified and judged by the policy, audit on). Each proxy
runs as one process on the same 2 shared cores as pgbench and PostgreSQL.

The four runs are interleaved in `--rounds` rounds (default 3) and each figure is the best of its
rounds (a shared machine moves single runs by a third); every round's ratio is printed too.
Prints tps for each, Stepguard / pgbouncer as a ratio with PASS/MISS (target ≥ 0.75), the
latency p50/p99 each proxy adds over the direct run (from pgbench's per-transaction log), and
the classification cost per statement (cached: a dictionary lookup; uncached: pglast's parse and
the walk), measured in this process.

Run: `python bench/postgres.py` (`--help`); about four minutes with the defaults.
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

RATIO_TARGET = 0.75
CLIENTS = 16

POLICY = """\
rules:
  - name: no-server-files
    match: {postgres: {kinds: [admin]}}
    deny: "Server files and maintenance are not run through Stepguard."
  - name: wipe
    match: {postgres: {kinds: [delete, update, truncate]}}
    when: "sql.unbounded"
    require: {level: aal2, max_age: 0s, reason: "Changing every row of {sql.tables}"}
  - name: branches
    match: {postgres: {kinds: [delete], tables: [public.pgbench_branches]}}
    require: {level: aal2, max_age: 0s}
  - name: risky
    match: {postgres: {kinds: [function, set_role, grant, ddl]}}
    require: {level: aal2, max_age: 0s}
default: {level: aal1}
"""


@dataclass
class Run:
    name: str
    tps: float
    latencies_ms: list[float]
    transactions: int = 0
    cpu_seconds: float = float("nan")  # the proxy process's CPU time during the run

    @property
    def cpu_us(self) -> float:
        """CPU µs the proxy process spent per transaction (user + system, all its threads)."""
        return self.cpu_seconds / self.transactions * 1e6 if self.transactions else float("nan")

    def pct(self, q: float) -> float:
        values = sorted(self.latencies_ms)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (all threads), from /proc."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    from tests.support.servers import free_port as pick

    return pick()


def as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


# ------------------------------------------------------------------------------------ servers


@contextmanager
def pgbouncer(pg_port: int, database: str, work: Path) -> Iterator[tuple[int, int]]:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    port = free_port()
    folder = work / "pgbouncer"
    folder.mkdir()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""[databases]
bench = host=127.0.0.1 port={pg_port} dbname={database} user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = {CLIENTS + 4}
logfile = {folder}/log
pidfile = {folder}/pid
""")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        for child in folder.iterdir():
            shutil.chown(child, "postgres", "postgres")
    process = subprocess.Popen(as_postgres([binary, str(folder / "pgbouncer.ini")]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, bouncer_pid(folder, process.pid)
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def stepguard(pg_port: int, database: str, work: Path
              ) -> Iterator[tuple[int, str, str, int]]:
    """The gateway as its own process; (port, user name, token of alice's database token, the
    process id)."""
    from stepguard.config.load import load_config
    from stepguard.core.context import AuthEvent
    from stepguard.core.levels import Level
    from stepguard.pgwire.tokens import TokenService
    from stepguard.service.accounts import Accounts
    from stepguard.service.runtime import build_runtime, hash_token, new_id, new_token
    from stepguard.storage.records import SessionRecord

    port = free_port()
    folder = work / "stepguard"
    folder.mkdir()
    (folder / "policy.yaml").write_text(POLICY)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = folder / "stepguard.yaml"
    config.write_text(f"""policy: policy.yaml
store: {{url: "sqlite:///stepguard.db"}}
secrets: {{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{k1: "{key}"}},
           totp_current: k1}}
server: {{log_level: warning}}
postgres:
  listeners:
    - listen: "127.0.0.1:{port}"
      databases:
        - {{name: bench, upstream: "127.0.0.1:{pg_port}", database: {database}, user: postgres}}
""")
    runtime = build_runtime(load_config(config))
    try:
        user = Accounts(runtime).add_user("alice", password=secrets.token_urlsafe(12))
        now = runtime.now()
        session = SessionRecord(id=new_id(), token_hash=hash_token(new_token()), user_id=user.id,
                                created=now, last_seen=now, events=(AuthEvent(
                                    factor="password", amr=("pwd",), level=Level.AAL1, at=now),))
        runtime.store.sessions.add(session)
        issued = TokenService(runtime).issue(session, user, level="aal1")
    finally:
        runtime.close()
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}:{REPO_ROOT}"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from stepguard.cli.main import app; app()", "postgres", "serve",
         "--config", str(config)], env=env, cwd=folder,
        stdout=subprocess.DEVNULL, stderr=open(folder / "log", "wb"))  # noqa: SIM115
    try:
        wait_port(port)
        yield port, issued.user_name, issued.secret, process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def floor(pg_port: int) -> Iterator[tuple[int, int]]:
    """The least asyncio gateway (bench/pg_floor.py: a uvloop byte relay); (port, pid)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "pg_floor.py"),
                                str(port), str(pg_port)])
    try:
        wait_port(port)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


def bouncer_pid(folder: Path, started: int) -> int:
    """pgbouncer's own process id (as root it runs under runuser, which forks it)."""
    pidfile = folder / "pid"
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(pidfile.read_text().strip()) if pidfile.exists() else started


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# ------------------------------------------------------------------------------------ pgbench


def pgbench(bindir: Path, *, name: str, port: int, database: str, user: str, password: str,
            seconds: int, work: Path, pid: int | None = None, clients: int = CLIENTS) -> Run:
    logs = work / f"log-{name}"
    logs.mkdir()
    if os.geteuid() == 0:
        shutil.chown(logs, "postgres", "postgres")
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    command = as_postgres([str(bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(port),
                           "-U", user, "-n", "-S", "-M", "extended", "-c", str(clients),
                           "-j", "2", "-T", str(seconds), "-l", "--sampling-rate", "0.2",
                           f"--log-prefix={logs}/tx", database])
    if os.geteuid() == 0:
        command = ["env", f"PGPASSWORD={password}", "PGSSLMODE=disable", *command]
    before = cpu_seconds(pid)
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    spent = cpu_seconds(pid) - before
    if result.returncode != 0:
        raise RuntimeError(f"pgbench against {name} failed: {result.stderr[-2000:]}")
    tps = next(float(line.split("=")[1].split()[0]) for line in result.stdout.splitlines()
               if line.startswith("tps ="))
    transactions = next(int(line.split(":")[1].split("/")[0]) for line in
                        result.stdout.splitlines()
                        if line.startswith("number of transactions actually processed"))
    latencies = []
    for path in glob.glob(f"{logs}/tx*"):
        with open(path) as handle:
            latencies += [int(line.split()[2]) / 1000.0 for line in handle if line.strip()]
    return Run(name, tps, latencies, transactions, spent)


# ------------------------------------------------------------------------------------ classifier


def classification_cost(statements: int = 2000) -> tuple[float, float]:
    """µs per statement: (cached, uncached)."""
    from stepguard.pgwire.classify import Classifier

    texts = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {i} AND bid = $1"
             for i in range(statements)]
    classifier = Classifier(cache_size=statements * 2)
    start = time.perf_counter()
    for text in texts:
        classifier.classify(text)
    uncached = (time.perf_counter() - start) / statements * 1e6
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        for text in texts:
            classifier.classify(text)
    cached = (time.perf_counter() - start) / (statements * rounds) * 1e6
    return cached, uncached


# ------------------------------------------------------------------------------------ main


def door_build() -> str:
    """Whether the door's hot path ran compiled (the twins built by scripts/accelerate.py for
    the current sources; the door process takes them by the same rule) or as Python."""
    from stepguard.compiled import twin
    from stepguard.pgwire import session

    return ("compiled (mypyc twins)" if twin(session) is not session
            else "as Python (no current twins: make accelerate)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="pgbench duration per run")
    parser.add_argument("--scale", type=int, default=1, help="pgbench -i scale")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a MISS")
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the door: its CPU µs per transaction (a measure that a "
                             "loaded machine moves less than tps)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="pgbench clients")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the four runs, interleaved; each figure is its best")
    args = parser.parse_args()
    from tests.support.postgres import create_database, running_postgres

    with ExitStack() as stack:
        server = stack.enter_context(running_postgres())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-pgbench-")))
        if os.geteuid() == 0:
            shutil.chown(work, "postgres", "postgres")
        database = create_database(server.url(), prefix="bench").rsplit("/", 1)[1]
        subprocess.run(as_postgres([str(server.bindir / "pgbench"), "-i", "-q", "-s",
                                    str(args.scale), "-h", "127.0.0.1", "-p", str(server.port),
                                    "-U", "postgres", database]),
                       check=True, capture_output=True)
        door, user, token, door_pid = stack.enter_context(stepguard(server.port, database, work))
        common: dict[str, Any] = {"seconds": args.seconds, "work": work, "clients": args.clients}
        pgbench(server.bindir, name="warmup", port=door, database="bench", user=user,
                password=token, seconds=3, work=work)
        if args.cpu_only:
            run = pgbench(server.bindir, name="stepguard", port=door, database="bench",
                          user=user, password=token, pid=door_pid, **common)
            print(f"stepguard: {run.tps:.0f} tps, {run.transactions} transactions, "
                  f"{run.cpu_us:.1f} CPU µs per transaction in the door process "
                  f"({args.clients} clients, load average {os.getloadavg()[0]:.1f}; "
                  f"{door_build()})")
            return 0
        bouncer, bouncer_pid_ = stack.enter_context(pgbouncer(server.port, database, work))
        relay, relay_pid = stack.enter_context(floor(server.port))
        rounds: list[tuple[Run, Run, Run, Run]] = []
        for number in range(args.rounds):  # interleaved: each round runs all four in turn
            rounds.append((
                pgbench(server.bindir, name=f"direct-{number}", port=server.port,
                        database=database, user="postgres", password="", **common),
                pgbench(server.bindir, name=f"pgbouncer-{number}", port=bouncer,
                        database="bench", user="postgres", password="", pid=bouncer_pid_,
                        **common),
                pgbench(server.bindir, name=f"floor-{number}", port=relay, database=database,
                        user="postgres", password="", pid=relay_pid, **common),
                pgbench(server.bindir, name=f"stepguard-{number}", port=door, database="bench",
                        user=user, password=token, pid=door_pid, **common)))
    cached, uncached = classification_cost()
    direct, anchor, least, guarded = (
        replace(max((r[i] for r in rounds), key=lambda run: run.tps), name=name)
        for i, name in enumerate(("direct", "pgbouncer", "floor", "stepguard")))
    ratio = guarded.tps / anchor.tps
    verdict = "PASS" if ratio >= RATIO_TARGET else "MISS"
    print(f"pgbench -S -M extended, {args.clients} clients, {args.seconds} s each, same "
          f"PostgreSQL 15, best of {args.rounds} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.1f} at the end; the door ran {door_build()}")
    print("  each round, stepguard / pgbouncer: " + ", ".join(
        f"{r[3].tps / r[1].tps:.2f}x ({r[3].tps:.0f} / {r[1].tps:.0f} tps)" for r in rounds))
    for run in (direct, anchor, least, guarded):
        print(f"  {run.name:10s} {run.tps:9.0f} tps   latency p50 {run.pct(0.5):6.3f} ms   "
              f"p99 {run.pct(0.99):6.3f} ms")
    for run in (anchor, least, guarded):
        print(f"  {run.name:10s} CPU {run.cpu_us:6.1f} µs per transaction in its process")
    for run in (anchor, least, guarded):
        print(f"  {run.name:10s} adds p50 {run.pct(0.5) - direct.pct(0.5):+.3f} ms, "
              f"p99 {run.pct(0.99) - direct.pct(0.99):+.3f} ms over direct")
    print(f"  {verdict}  stepguard / pgbouncer = {ratio:.2f}x tps (target >= {RATIO_TARGET}x); "
          f"stepguard / direct = {guarded.tps / direct.tps:.2f}x")
    print(f"  floor (a uvloop byte relay, no door) / pgbouncer = {least.tps / anchor.tps:.2f}x; "
          f"stepguard / floor = {guarded.tps / least.tps:.2f}x")
    print(f"  classification per statement: cached {cached:.2f} µs, uncached {uncached:.1f} µs")
    return 1 if args.strict and verdict == "MISS" else 0


if __name__ == "__main__":
    raise SystemExit(main())
