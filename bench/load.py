"""Load with churn (DESIGN.md §10): many signed-in users on forward-auth while others sign in and
step up, each figure beside the same run without churn.

1,000 users, each with a live session. wrk loads forward-auth with a Lua script that rotates
through all 1,000 session cookies (so the cache holds many sessions, not one), while a driver
runs real sign-ins (POST /login, argon2id) and real TOTP step-ups (forward-auth → challenge →
POST /step-up/…/totp) at 20 per second in total, for users of the same 1,000. Each run is
measured twice, without churn (the anchor) and with it, taking turns, best of `--rounds`:

* throughput with churn ≥ 0.8× the anchor, p99 with churn ≤ 2× the anchor;
* the session-cache hit rate during each run (from `/metrics`) is printed beside them;
* the churn's own cost: the CPU the Stepguard processes spend on the churn alone (no wrk), beside
  the CPU they spend under wrk without churn. Sign-ins hash with argon2id (memory-hard, tens of
  ms each by design), so on a machine where wrk and the server already share every core the
  churn's own work bounds the ratio: `ceiling ≈ 1 − churn CPU ÷ server CPU under wrk`, printed
  beside the measured ratio (what the cache design can be judged against).

Two set-ups: **SQLite** (one `stepguard serve`, wrk straight at forward-auth) and a **fleet**
(two instances on one PostgreSQL + Redis, wrk at nginx `auth_request` in front of them, the
churn spread over both instances; see bench/fleet.py for how instances are started). Beside
them, the **churn floor** (bench/churn_floor_app.py: raw ASGI, argon2id at the same cost, one
SQLite write per step, nothing else) takes the same users, wrk load and churn: what this
machine allows any gateway, printed as a reference.

Run: `python bench/load.py` (about 3 min; `--only sqlite|fleet|floor`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

import httpx  # noqa: E402
import pyotp  # noqa: E402
from tests.fleet.harness import (  # noqa: E402
    FLEET_POLICY,
    SITE,
    fleet_config,
    fleet_nginx,
    instance,
    start_all,
)
from tests.support.gateway import write_config  # noqa: E402
from tests.support.postgres import create_database, running_postgres  # noqa: E402
from tests.support.servers import Redis, ensure_packages, free_port  # noqa: E402

from bench.gateway import WrkResult, granian_app, noop_server, parse_wrk  # noqa: E402
from stepguard.config.load import load_config  # noqa: E402
from stepguard.core.context import AuthEvent  # noqa: E402
from stepguard.core.levels import Level  # noqa: E402
from stepguard.core.risk import network_prefix  # noqa: E402
from stepguard.factors.password import hash_password  # noqa: E402
from stepguard.service.accounts import Accounts  # noqa: E402
from stepguard.service.runtime import build_runtime, hash_token, new_id, new_token  # noqa: E402
from stepguard.storage.migrate import upgrade  # noqa: E402
from stepguard.storage.records import SessionRecord, UserRecord  # noqa: E402

USERS = 1000
CHURN_PER_SECOND = 20.0
THROUGHPUT_TARGET = 0.8
P99_TARGET = 2.0
CLIENT_IP = "198.51.100.7"  # where wrk's requests come from (every seeded session's address)
# What wrk sends to forward-auth (as a proxy would) beside the rotating cookie.
FORWARD_AUTH_HEADERS = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http",
                        "X-Forwarded-Host": SITE, "X-Forwarded-Uri": "/orders?page=2",
                        "X-Forwarded-For": CLIENT_IP, "Accept": "application/json"}


def home_address(n: int) -> str:
    """Where user `n` signs in from in the churn: one address per user (250 in turn, one known
    /24), as real sign-ins come from many clients. From one address, 20 sign-ins a second would
    meet the per-address throttle, which counts an attempt in flight before its argon2 hash
    ends (so that parallel guesses cannot outrun it)."""
    return f"203.0.113.{n % 250 + 1}"
SESSION_COOKIE = "stepguard_session"

LUA = """\
-- Rotate through every session cookie (one per line in the file named below).
local tokens = {}
for line in io.lines("%(tokens)s") do tokens[#tokens + 1] = line end
local n = 0
function setup(thread)
  thread:set("start", n * 97)
  n = n + 1
end
function init(args)
  i = tonumber(start) or 0
end
function request()
  i = (i %% #tokens) + 1
  wrk.headers["Cookie"] = "%(cookie)s=" .. tokens[i]
  return wrk.format(nil)
end
"""


# ================================================================================================
# users
# ================================================================================================


@dataclass(frozen=True)
class Person:
    username: str
    password: str
    totp_secret: str
    token: str  # the session wrk uses (never rotated: churn uses sessions of its own)
    address: str  # where the churn signs this user in from


def seed(config: Path, count: int) -> list[Person]:
    """`count` users with one password (one argon2id hash: seeding stays fast), a TOTP factor
    each, a known network, and a live aal1 session each."""
    runtime = build_runtime(load_config(config))
    try:
        password = secrets.token_urlsafe(12)
        hashed, now = hash_password(password), runtime.now()
        users = [UserRecord(id=new_id(), username=f"load-{n:04d}", password_hash=hashed,
                            groups=frozenset({"staff"}), created=now) for n in range(count)]
        runtime.store.users.import_many(users)
        accounts, people = Accounts(runtime), []
        for user in users:
            secret = pyotp.random_base32(32)
            accounts.add_totp_secret(user, secret)
            address = home_address(len(people))
            for known in (CLIENT_IP, address):
                runtime.store.history.record_success(
                    user.id, device_id="", network_prefix=network_prefix(known), country="",
                    location=None, at=now, hour=int(now // 3600 % 24))
            token = new_token()
            runtime.store.sessions.add(SessionRecord(
                id=new_id(), token_hash=hash_token(token), user_id=user.id, created=now,
                last_seen=now, ip=CLIENT_IP, user_agent="",
                events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now),)))
            people.append(Person(user.username, password, secret, token, address))
        return people
    finally:
        runtime.close()


# ================================================================================================
# churn: real sign-ins and step-ups
# ================================================================================================


class Churn:
    """Sign in, then step up on that new session (two operations), for user after user, paced
    to `rate` operations per second over `bases` (instances, taken in turn)."""

    def __init__(self, people: Sequence[Person], bases: Sequence[str], public_url: str,
                 rate: float = CHURN_PER_SECOND, workers: int = 24, start: int = 0) -> None:
        self.people, self.bases, self.public_url = people, bases, public_url
        self.interval = 2 / rate  # one cycle = two operations
        self.workers = workers
        self.done = self.failed = 0
        self.why: Counter[str] = Counter()  # failed cycles by step and status
        self._next = start  # runs continue through the users: a TOTP step is accepted once
        self._slot = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Churn:
        self._slot = time.monotonic()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _claim(self) -> tuple[Person, str] | None:
        with self._lock:
            wait = self._slot - time.monotonic()
            self._slot = max(self._slot, time.monotonic()) + self.interval
            person = self.people[self._next % len(self.people)]
            base = self.bases[self._next % len(self.bases)]
            self._next += 1
        if wait > 0 and self._stop.wait(wait):
            return None
        return None if self._stop.is_set() else (person, base)

    def _run(self) -> None:
        with httpx.Client(timeout=30.0, follow_redirects=False) as http:
            while (claimed := self._claim()) is not None:
                person, base = claimed
                try:
                    why = self._cycle(http, person, base)
                except httpx.HTTPError as error:
                    why = type(error).__name__
                with self._lock:
                    self.done += 0 if why else 2
                    self.failed += 1 if why else 0
                    if why:
                        self.why[why] += 1

    def _cycle(self, http: httpx.Client, person: Person, base: str) -> str:
        """One sign-in and one step-up; "" when both passed, else the step that failed."""
        cookies: dict[str, str] = {}
        headers = {"X-Forwarded-For": person.address, "Origin": self.public_url}

        def send(method: str, path: str, **kwargs: object) -> httpx.Response:
            sent = {**headers, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
            if cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            response = http.request(method, base + path, headers=sent, **kwargs)  # type: ignore[arg-type]
            cookies.update(response.cookies.items())
            http.cookies.clear()
            return response

        page = send("GET", "/login")
        signed = send("POST", "/login", data={"username": person.username,
                                               "password": person.password,
                                               "csrf_token": _csrf(page.text)})
        if signed.status_code != 303 or signed.headers.get("location", "").startswith("/login"):
            shown = send("GET", signed.headers.get("location", "/login"))  # the refusal's page
            said = re.search(r'id="sg-alert"[^>]*>([^<]{0,60})', shown.text)
            return f"sign-in {signed.status_code}: {said.group(1) if said else '?'}"
        asked = send("GET", "/api/authz/forward-auth", headers={
            "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Host": SITE,
            "X-Forwarded-Uri": "/admin/users", "Accept": "text/html"})
        location = asked.headers.get("location", "").removeprefix(self.public_url)
        if asked.status_code != 302 or not location.startswith("/step-up/"):
            return f"challenge {asked.status_code} to {location.split('?')[0][:24] or '-'}"
        form = send("GET", location)
        passed = send("POST", location + "/totp", data={
            "code": pyotp.TOTP(person.totp_secret).now(), "csrf_token": _csrf(form.text)})
        return "" if passed.status_code == 303 else f"step-up {passed.status_code}"


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    return found.group(1) if found else ""


# ================================================================================================
# wrk and the cache hit rate
# ================================================================================================


@dataclass(frozen=True)
class Run:
    wrk: WrkResult
    hit_rate: float
    churn_ops: float  # operations per second the churn driver completed
    churn_failed: int
    churn_why: str = ""
    server_cpu: float = 0.0  # CPU-seconds per second the Stepguard processes used


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes and all their descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    wanted, total = set(pids), 0.0
    for pid, seconds in times.items():
        ancestor = pid
        while ancestor > 1 and ancestor not in wanted:
            ancestor = parents.get(ancestor, 0)
        if ancestor in wanted:
            total += seconds
    return total


METRICS_TOKEN = secrets.token_urlsafe(24)  # /metrics answers only with it (404 otherwise)


def with_metrics(config: Path) -> Path:
    """The config with a metrics token, so that the cache counters can be read."""
    with config.open("a") as out:
        out.write(f'metrics: {{token: "{METRICS_TOKEN}"}}\n')
    return config


def cache_counts(bases: Sequence[str]) -> tuple[float, float]:
    hits = misses = 0.0
    for base in bases:
        answer = httpx.get(base + "/metrics", timeout=10.0,
                           headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        answer.raise_for_status()
        text = answer.text
        for result, value in re.findall(
                r'^stepguard_session_cache_total\{result="(hit|miss)"\} ([0-9.e+]+)$', text,
                re.MULTILINE):
            if result == "hit":
                hits += float(value)
            else:
                misses += float(value)
    return hits, misses


def run_wrk(wrk: str, url: str, headers: dict[str, str], script: Path, seconds: int,
            label: str) -> WrkResult:
    argv = [wrk, "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script),
            *[arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")], url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(label, done.stdout)


def measure(wrk: str, target: Target, seconds: int, churn: Churn | None) -> Run:
    before = cache_counts(target.instances)
    cpu_before = cpu_seconds(target.pids)
    if churn is not None:
        churn.start()
    started = time.monotonic()
    try:
        result = run_wrk(wrk, target.url, target.headers, target.script, seconds,
                         "churn" if churn else "no churn")
    finally:
        elapsed = time.monotonic() - started
        if churn is not None:
            churn.stop()
    cpu = (cpu_seconds(target.pids) - cpu_before) / elapsed
    after = cache_counts(target.instances)
    hits, misses = after[0] - before[0], after[1] - before[1]
    rate = hits / (hits + misses) if hits + misses else 0.0
    return Run(result, rate, churn.done / elapsed if churn else 0.0,
               churn.failed if churn else 0,
               ", ".join(f"{k} ×{v}" for k, v in churn.why.most_common(3)) if churn else "",
               cpu)


def churn_alone(target: Target, people: Sequence[Person], seconds: int, start: int) -> float:
    """CPU-seconds per second the Stepguard processes spend on the churn with no other load."""
    churn = Churn(people, target.instances, target.public_url, start=start)
    cpu_before = cpu_seconds(target.pids)
    started = time.monotonic()
    churn.start()
    try:
        time.sleep(seconds)
    finally:
        churn.stop()
    return (cpu_seconds(target.pids) - cpu_before) / (time.monotonic() - started)


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]
    script: Path
    instances: list[str]  # base URLs for /metrics and the churn
    public_url: str
    pids: list[int]  # the Stepguard server processes (their workers are counted too)
    reference: bool = False  # a floor, no candidate: its figures say what this machine allows


def compare(wrk: str, target: Target, people: Sequence[Person], seconds: int,
            rounds: int) -> tuple[Run, Run, float]:
    """No churn and churn in turns, `rounds` times; the best figures of each, and the CPU the
    churn costs the servers on its own."""
    run_wrk(wrk, target.url, target.headers, target.script, 3, "warm-up")  # fill the caches
    quiet: list[Run] = []
    busy: list[Run] = []
    start = 0
    for _ in range(rounds):
        quiet.append(measure(wrk, target, seconds, None))
        churn = Churn(people, target.instances, target.public_url, start=start)
        busy.append(measure(wrk, target, seconds, churn))
        start = churn._next
    alone = churn_alone(target, people, seconds, start)
    return _best(quiet), _best(busy), alone


def _best(runs: Sequence[Run]) -> Run:
    fastest = max(runs, key=lambda r: r.wrk.requests_per_second)
    p99 = min(r.wrk.p99_ms for r in runs)
    wrk = WrkResult(fastest.wrk.label, fastest.wrk.requests_per_second, fastest.wrk.p50_ms, p99,
                    sum(r.wrk.requests for r in runs), sum(r.wrk.bad_responses for r in runs),
                    sum(r.wrk.socket_errors for r in runs))
    why = "; ".join(r.churn_why for r in runs if r.churn_why)
    return Run(wrk, min(r.hit_rate for r in runs), min(r.churn_ops for r in runs),
               sum(r.churn_failed for r in runs), why, fastest.server_cpu)


# ================================================================================================
# the two set-ups
# ================================================================================================


def tokens_file(folder: Path, people: Sequence[Person]) -> Path:
    tokens = folder / "tokens.txt"
    tokens.write_text("".join(p.token + "\n" for p in people))
    script = folder / "rotate.lua"
    script.write_text(LUA % {"tokens": tokens, "cookie": SESSION_COOKIE})
    return script


@contextmanager
def sqlite_setup(workdir: Path, users: int) -> Iterator[tuple[Target, list[Person]]]:
    solo = instance(workdir, workdir / "stepguard.yaml", "sqlite")
    public = f"http://localhost:{solo.port}"
    config = with_metrics(write_config(workdir, public_url=public, policy=FLEET_POLICY))
    people = seed(config, users)
    with ExitStack() as stack:
        solo.start()
        stack.callback(solo.stop)
        yield Target("SQLite, 1 instance, forward-auth", solo.url + "/api/authz/forward-auth",
                     FORWARD_AUTH_HEADERS, tokens_file(workdir, people), [solo.url], public,
                     _pids([solo])), people


@contextmanager
def fleet_setup(workdir: Path, users: int) -> Iterator[tuple[Target, list[Person]]]:
    with ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        redis = stack.enter_context(Redis(workdir / "redis"))
        url = create_database(postgres.url(), prefix="bench_load")
        upgrade(url)
        app = stack.enter_context(noop_server(workdir, 1, "noop"))
        nginx_port = free_port()
        public = f"http://localhost:{nginx_port}"
        config = with_metrics(fleet_config(workdir, store_url=url, redis_url=redis.redis_url,
                                           public_url=public, allows="summary"))
        people = seed(config, users)
        members = [instance(workdir, config, name) for name in ("a", "b")]
        start_all(members)
        for member in members:
            stack.callback(member.stop)
        stack.enter_context(fleet_nginx(workdir, members, app_port=app.port, listen=nginx_port))
        headers = {"Host": SITE, "Accept": "application/json", "X-Forwarded-For": CLIENT_IP}
        yield Target("PostgreSQL, 2 instances behind nginx auth_request",
                     f"http://127.0.0.1:{nginx_port}/orders?page=2", headers,
                     tokens_file(workdir, people), [m.url for m in members], public,
                     _pids(members)), people


@contextmanager
def floor_setup(workdir: Path, users: int) -> Iterator[tuple[Target, list[Person]]]:
    """The churn floor (bench/churn_floor_app.py, one granian process): the same users, wrk
    load and churn on the least gateway that signs users in with argon2id and keeps sessions
    in SQLite — what this machine allows any gateway, the figure the targets are judged against."""
    password = secrets.token_urlsafe(12)
    people = [Person(f"load-{n:04d}", password, pyotp.random_base32(32), new_token(),
                     home_address(n)) for n in range(users)]
    setup = workdir / "floor.json"
    setup.write_text(json.dumps({
        "hash": hash_password(password), "db": str(workdir / "floor.db"),
        "users": {p.username: p.totp_secret for p in people},
        "sessions": {p.token: p.username for p in people}}))
    with granian_app(workdir, 1, "churn_floor_app:app", "churn-floor",
                     {"CHURN_FLOOR": str(setup)}) as floor:
        yield Target("(reference) the churn floor, bench/churn_floor_app.py, 1 process, "
                     "forward-auth", floor.url + "/api/authz/forward-auth", FORWARD_AUTH_HEADERS,
                     tokens_file(workdir, people), [floor.url], floor.url,
                     [floor.pid] if floor.pid else [], reference=True), people


def _pids(members: Sequence[Any]) -> list[int]:
    return [pid for m in members if (pid := m.process.pid) is not None]


SETUPS: dict[str, Callable[[Path, int], object]] = {"sqlite": sqlite_setup,
                                                     "fleet": fleet_setup,
                                                     "floor": floor_setup}


def check_allowed(target: Target, person: Person) -> None:
    answer = httpx.get(target.url, headers={**target.headers,
                                            "Cookie": f"{SESSION_COOKIE}={person.token}"},
                       timeout=10.0)
    if answer.status_code != 200:
        raise RuntimeError(f"{target.name}: a seeded session is not allowed "
                           f"({answer.status_code})")


def report(name: str, quiet: Run, busy: Run, alone: float, *,
           reference: bool = False) -> list[str]:
    throughput = busy.wrk.requests_per_second / quiet.wrk.requests_per_second
    ceiling = max(0.0, 1 - alone / quiet.server_cpu) if quiet.server_cpu else 0.0
    p99 = busy.wrk.p99_ms / quiet.wrk.p99_ms if quiet.wrk.p99_ms else float("inf")
    valid = quiet.wrk.valid and busy.wrk.valid
    return [
        f"{name}",
        f"  {'run':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cache hits':>12}"
        f"{'churn ops/s':>13}{'valid':>7}",
        *(f"  {label:<12}{r.wrk.requests_per_second:>9.0f}{r.wrk.p50_ms:>9.2f}"
          f"{r.wrk.p99_ms:>9.2f}{r.hit_rate:>11.1%}{r.churn_ops:>13.1f}"
          f"{'yes' if r.wrk.valid else 'NO':>7}"
          for label, r in (("no churn", quiet), ("churn", busy))),
        f"  throughput {throughput:.2f}× no churn (target ≥ {THROUGHPUT_TARGET}×) — "
        f"{_verdict(reference, throughput >= THROUGHPUT_TARGET)}",
        f"  p99 {p99:.2f}× no churn (target ≤ {P99_TARGET}×) — "
        f"{_verdict(reference, p99 <= P99_TARGET)}",
        f"  server CPU: {quiet.server_cpu:.2f} CPU-s/s under wrk without churn, "
        f"{busy.server_cpu:.2f} with it; the churn alone costs {alone:.2f} CPU-s/s "
        f"→ ceiling on this machine ≈ {ceiling:.2f}× (measured {throughput:.2f}×, "
        f"{throughput / ceiling if ceiling else 0:.2f} of the ceiling)",
        f"  churn: {busy.churn_ops:.1f} sign-ins + step-ups/s done (target {CHURN_PER_SECOND:.0f}),"
        f" {busy.churn_failed} failed cycles"
        + (f" ({busy.churn_why})" if busy.churn_why else "")
        + ("" if valid else "  — INVALID (non-2xx answers or socket errors under wrk)"),
    ]


def _verdict(reference: bool, met: bool) -> str:
    """PASS or MISS; for a floor (no candidate) what this machine allows any gateway."""
    if reference:
        return "within reach here" if met else "out of reach here, even for the floor"
    return "PASS" if met else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=sorted(SETUPS))
    args = parser.parse_args(argv)
    wrk = ensure_packages("wrk", "nginx")["wrk"]
    print(f"load benchmark: {args.users} users with sessions, wrk -t2 -c32 -d{args.duration}s "
          f"rotating their cookies, churn {CHURN_PER_SECOND:.0f} sign-ins + step-ups/s; "
          f"best of {args.rounds}; {os.cpu_count()} CPUs; Python {platform.python_version()}")
    valid = True
    for name, setup in SETUPS.items():
        if args.only and name != args.only:
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"sg-bench-load-{name}-"))
        with setup(workdir, args.users) as (target, people):  # type: ignore[attr-defined]
            check_allowed(target, people[0])
            quiet, busy, alone = compare(wrk, target, people, args.duration, args.rounds)
        print("\n".join(report(target.name, quiet, busy, alone,
                                    reference=target.reference)))
        valid = valid and quiet.wrk.valid and busy.wrk.valid
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
