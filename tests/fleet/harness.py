"""A Stepguard fleet on loopback: real PostgreSQL and Redis, three `stepguard serve` processes,
the protected app, and a real nginx (deploy/nginx/stepguard.conf, its Stepguard upstream widened
to the three instances) in front.

Tests reach one instance directly (`fleet.instances[i].url`, forward-auth with the Caddy-style
headers, `trusted_proxies` is 127.0.0.1) when they need a specific one, or go through nginx
(`fleet.nginx_url`, Host `app.test`), which balances over the instances.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pyotp

from stepguard.audit.ledger import AuditEntry
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.engine import make_engine
from tests.support.postgres import PostgresServer, _pg_ctl
from tests.support.servers import Nginx, Process, Redis, free_port, nginx_conf, python_env

SITE = "app.test"
SESSION_COOKIE = "stepguard_session"

FLEET_POLICY = """\
levels:
  aal2: {acr: "urn:stepguard:aal2", max_session: 24h, idle: 1h}
rules:
  - name: public
    match: {paths: ["/static/**", "/healthz"]}
    allow: true
  - name: approve-payment
    description: each approval needs its own fresh second factor, spent by exactly one request
    match: {methods: [POST], paths: ["/approve"]}
    require: {level: aal2, max_age: 5m, single_use: true, scope: approve,
              reason: "Approve this payment"}
  - name: admin
    match: {paths: ["/admin/**"]}
    require: {level: aal2, max_age: 1h, scope: admin, reason: "Opening the admin console"}
default: {level: aal1}
"""


@dataclass
class Instance:
    """One `stepguard serve` process on its own port (same config as the others)."""

    name: str
    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        """SIGTERM (graceful: in-flight requests finish, the audit queue is written), then wait."""
        self.process.stop()


@dataclass
class Fleet:
    workdir: Path
    postgres: PostgresServer
    store_url: str
    redis: Redis
    config: Path
    instances: list[Instance]
    nginx: Nginx
    public_url: str
    _engine: object = field(default=None, repr=False)

    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}"

    # -------------------------------------------------------------- faults

    def stop_postgres(self) -> None:
        _pg_ctl(self.postgres, "stop")

    def start_postgres(self) -> None:
        _pg_ctl(self.postgres, "start")

    # -------------------------------------------------------------- the ledger

    def audit_log(self) -> SqlAuditLog:
        if self._engine is None:
            self._engine = make_engine(self.store_url)
        return SqlAuditLog(self._engine)  # type: ignore[arg-type]

    def entries(self, after_seq: int = 0) -> list[AuditEntry]:
        return list(self.audit_log().entries(after_seq=after_seq))

    def head(self) -> int:
        return self.audit_log().state().head.seq

    def wait_for_entries(self, after_seq: int, predicate: Callable[[list[AuditEntry]], bool],
                         timeout: float = 20.0) -> list[AuditEntry]:
        """Entries after `after_seq`, once `predicate` holds (the writers are asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(after_seq)
            if predicate(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def stepguard(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `stepguard` CLI against the fleet's config."""
        return subprocess.run(
            [sys.executable, "-m", "stepguard.cli.main", *args, "--config", str(self.config)],
            env=python_env(), cwd=self.workdir, capture_output=True, text=True, timeout=60,
        )

    def verify_ledger(self) -> str:
        done = self.stepguard("audit", "verify")
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Every instance answers /readyz 200 (stores back, pools reconnected)."""
        deadline = time.monotonic() + timeout
        pending = list(self.instances)
        while pending and time.monotonic() < deadline:
            pending = [i for i in pending if not _ready(i.url)]
            if pending:
                time.sleep(0.1)
        assert not pending, f"not ready after {timeout} s: {[i.name for i in pending]}"


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


# The first failed sign-in's back-off in the tests' fleet (doubling after): long enough that the
# next attempt, with the hashing of the failed one's password before it, lands inside it.
TEST_BASE_DELAY = 3.0


def fleet_config(folder: Path, *, store_url: str, redis_url: str, public_url: str,
                 allows: str = "every_request", base_delay: float = 1.0) -> Path:
    """The fleet's shared config. The tests audit every allow (`audit.allows: every_request`) so
    that each allowed request can be matched with its own entry; the benchmarks pass
    `allows="summary"`, the default. The tests lock sign-ins for `TEST_BASE_DELAY` (a slow
    machine still answers within it); the benchmarks keep the default."""
    from tests.support.gateway import write_config

    extra = f"""\
redis: {{url: "{redis_url}", health_check_interval: 0.5, socket_timeout: 0.5}}
throttle: {{base_delay: {base_delay:g}s}}
audit: {{shutdown_timeout: 2s, allows: {allows}}}
"""
    return write_config(folder, store_url=store_url, public_url=public_url, policy=FLEET_POLICY,
                        extra=extra)


def instance(workdir: Path, config: Path, name: str) -> Instance:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "stepguard.cli.main", "serve", "--config", str(config),
         "--port", str(port)],
        port=port, workdir=workdir / name, name=name, env=python_env(), cwd=workdir,
        ready_path="/healthz", ready_timeout=60.0, stop_timeout=15.0,
    )
    return Instance(name, port, process)


def fleet_nginx(workdir: Path, instances: Sequence[Instance], *, app_port: int,
                listen: int) -> Nginx:
    """deploy/nginx/stepguard.conf, with its `upstream stepguard` listing every instance."""
    first = instances[0].port
    text = nginx_conf(listen_port=listen, stepguard_port=first, upstream_port=app_port,
                      server_name=SITE)
    servers = "\n    ".join(f"server 127.0.0.1:{i.port} max_fails=1 fail_timeout=2s;"
                            for i in instances)
    widened = text.replace(f"server 127.0.0.1:{first};", servers, 1)
    assert widened != text
    return Nginx(widened, workdir / "nginx", port=listen, access_log=False, log_level="warn")


def start_all(processes: Sequence[Instance]) -> None:
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(lambda i: i.start(), processes))


# ------------------------------------------------------------------ a browser, by hand


class Browser:
    """One user agent: its own cookies, sent to whichever instance (or nginx) a test names."""

    def __init__(self, fleet: Fleet, ip: str = "198.51.100.20") -> None:
        self.fleet = fleet
        self.ip = ip
        self.cookies: dict[str, str] = {}
        self.http = httpx.Client(follow_redirects=False, timeout=15.0)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                data: dict[str, str] | None = None) -> httpx.Response:
        sent = {"X-Forwarded-For": self.ip, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method == "POST":
            sent.setdefault("Origin", self.fleet.public_url)
        response = self.http.request(method, url, headers=sent, data=data)
        for name, value in response.cookies.items():
            self.cookies[name] = value
        self.http.cookies.clear()
        return response

    @property
    def token(self) -> str:
        return self.cookies.get(SESSION_COOKIE, "")

    def csrf(self, base: str, path: str) -> str:
        page = self.request("GET", base + path)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, f"no CSRF field on {path} ({page.status_code})"
        return found.group(1)

    def sign_in(self, base: str, username: str, password: str) -> httpx.Response:
        """POST /login; a refused sign-in answers 303 back to the form (post/redirect/get), and
        the page that follows carries the refusal's status (401, 429): that page is returned."""
        token = self.csrf(base, "/login")
        answer = self.request("POST", base + "/login",
                              data={"username": username, "password": password,
                                    "csrf_token": token})
        if answer.status_code == 303 and "stepguard_flash" in answer.headers.get("set-cookie", ""):
            return self.request("GET", urljoin(base + "/", answer.headers["location"]))
        return answer

    def sign_out(self, base: str) -> httpx.Response:
        token = self.csrf(base, "/account")
        return self.request("POST", base + "/logout", data={"csrf_token": token})

    def forward(self, base: str, path: str, method: str = "GET", *,
                html: bool = True) -> httpx.Response:
        """Forward-auth on one instance, as Caddy asks it."""
        return self.request("GET", base + "/api/authz/forward-auth", headers={
            "X-Forwarded-Method": method, "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": SITE, "X-Forwarded-Uri": path,
            "Accept": "text/html" if html else "application/json",
        })

    def step_up_totp(self, base: str, location: str, secret: str) -> httpx.Response:
        """Pass the challenge at `location` with a TOTP code, on instance `base`."""
        path = location.removeprefix(self.fleet.public_url)
        token = self.csrf(base, path)
        code = pyotp.TOTP(secret).now()
        return self.request("POST", base + path + "/totp",
                            data={"code": code, "csrf_token": token})


# ------------------------------------------------------------------ load


@dataclass(frozen=True)
class Answer:
    path: str
    status: int
    sent: float
    received: float


def load(url: str, cookies: str, *, threads: int, until: threading.Event, tag: str,
         limit: int = 2000) -> list[Answer]:
    """GET `url/<tag>-<thread>-<n>` through nginx (Host app.test) from `threads` clients until
    `until` is set (or `limit` requests each): every path is unique, so each answer can be
    matched with its audit entry."""
    answers: list[Answer] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(timeout=10.0) as http:
            for n in range(limit):
                if until.is_set():
                    return
                path = f"/orders/{tag}-{number}-{n}"
                sent = time.monotonic()
                try:
                    status = http.get(url + path, headers={
                        "Host": SITE, "Accept": "application/json", "Cookie": cookies,
                    }).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    answers.append(Answer(path, status, sent, time.monotonic()))

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return answers


def run_load(url: str, cookies: str, *, threads: int = 4, tag: str
             ) -> tuple[threading.Event, Callable[[], list[Answer]]]:
    """Start `load` in the background; returns (stop, collect)."""
    stop = threading.Event()
    result: list[list[Answer]] = []
    runner = threading.Thread(
        target=lambda: result.append(load(url, cookies, threads=threads, until=stop, tag=tag)),
        daemon=True)
    runner.start()

    def collect() -> list[Answer]:
        stop.set()
        runner.join(timeout=120)
        return result[0] if result else []

    return stop, collect


def decision_paths(entries: Sequence[AuditEntry], prefix: str) -> Counter[str]:
    """How many decision entries each request path under `prefix` got."""
    return Counter(
        e.request.get("path", "") for e in entries
        if e.kind == "decision" and e.request.get("path", "").startswith(prefix)
    )


def statuses(answers: Sequence[Answer]) -> Counter[int]:
    return Counter(a.status for a in answers)


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def iter_instances(fleet: Fleet) -> Iterator[Instance]:
    yield from fleet.instances
