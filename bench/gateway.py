"""Gateway load benchmark (DESIGN.md §10), driven by wrk, each result beside its anchor.

Every Python app runs under granian, one worker, on 127.0.0.1 — but for reverse-proxy mode,
which Stepguard serves under uvicorn (its `server: auto`, chosen by the figures below).

(a) **forward-auth vs the floor**: Stepguard's `GET /api/authz/forward-auth` for a signed-in
    user with a cached session (allowed, 200, identity headers) vs `bench/floor_app.py`, the
    least Python forward-auth (cookie → SHA-256 → dict → identity headers, ~30 lines), sent the
    same request headers. Target ≥ 0.6×. The no-op app (`bench/noop_app.py`) is printed too.
    The request is an ordinary one: from the address the session signed in from. A reference
    row sends the same cookie from another address (a risk signal: each allow is then its own
    sealed audit entry, not a summary count).
(b) **behind nginx auth_request**: nginx with deploy/nginx/stepguard.conf (auth subrequest to
    Stepguard, then a no-op app as the protected upstream) vs the same nginx config with the
    floor as the auth endpoint. Targets: ≥ 0.75× the req/s, one-connection p99 at most +1 ms.
    A reference row puts the floor's hop beside nginx proxying straight to the upstream.
(c) **reverse-proxy mode**: Stepguard proxying to the no-op app vs nginx `proxy_pass` to the
    same no-op app (target ≥ 0.5×), and the no-op app reached directly as a reference. A second
    reference, `bench/relay_floor_app.py`, is the least Python relay (Stepguard's own upstream
    client, no decision, under granian): what this server and client cost before any gate. The
    same mode under granian is printed beside it (the server choice `auto` rests on).
(d) **server choice** (reference): Stepguard's forward-auth under uvicorn (httptools + uvloop)
    beside granian's (`--no-uvicorn` skips it).

Each target is warmed up for 1 s, then the targets of one comparison are loaded in turn, two
rounds of 3 s each (`--rounds`, `--duration`), and each figure is the target's best over the
rounds: on a small or shared machine this spreads a slow spell over both sides instead of
charging it to one. A run with any non-2xx answer or socket error is reported as invalid (exit
status 1). p99 is compared on one connection (`-t1 -c1`): with 32 connections latency is mostly
queueing (connections ÷ req/s), so it only repeats the req/s ratio. Whole run: about 2 minutes
with the defaults.

Run: `python bench/gateway.py` (`--help` for options, `--json` for machine-readable output).
The two functions under "ADJUST HERE" are how the bench starts and signs in to Stepguard.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

from tests.support.servers import (  # noqa: E402
    Nginx,
    Process,
    UvicornServer,
    ensure_packages,
    free_port,
    nginx_conf,
    python_env,
)

FORWARD_AUTH_RATIO_TARGET = 0.6
NGINX_RATIO_TARGET = 0.75
NGINX_P99_EXTRA_TARGET_MS = 1.0
REVERSE_PROXY_RATIO_TARGET = 0.5
SITE = "app.test"
FORWARD_AUTH_PATH = "/api/authz/forward-auth"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


# ================================================================================================
# ADJUST HERE (1/2): how the bench starts Stepguard — the command, its config and the seeded user.
# ================================================================================================

BENCH_USERNAME = "bench-user"


def start_stepguard(workdir: Path, *, port: int, workers: int, password: str,
                    server: str = "uvicorn", upstream_port: int | None = None) -> Process:
    """Write a config + policy into `workdir`, add one user, start `stepguard serve`
    (under `server`; in reverse-proxy mode in front of 127.0.0.1:`upstream_port` if given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    upstreams = (f'upstreams: [{{host: "*", url: "http://127.0.0.1:{upstream_port}"}}]\n'
                 if upstream_port else "")
    (workdir / "policy.yaml").write_text((REPO_ROOT / "examples" / "policy.yaml").read_text())
    totp_key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = workdir / "stepguard.yaml"
    config.write_text(
        f"""\
policy: policy.yaml
server:
  host: 127.0.0.1
  port: {port}
  public_url: http://127.0.0.1:{port}
  trusted_proxies: [127.0.0.1/32]
  server: {server}
  workers: {workers}
store: {{url: "sqlite:///stepguard.db"}}
secrets: {{cookie_key: "{secrets.token_urlsafe(32)}", totp_keys: {{k1: "{totp_key}"}},
           totp_current: k1}}
portal: {{protected_domains: [{SITE}, 127.0.0.1]}}
"""
        + upstreams
    )
    stepguard = [sys.executable, "-m", "stepguard.cli.main"]
    for command in (
        ["db", "upgrade", "--config", str(config)],
        ["users", "add", BENCH_USERNAME, "--config", str(config), "--password", password],
    ):
        done = subprocess.run(
            [*stepguard, *command], env=python_env(), cwd=workdir, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"stepguard {command[0]} failed: {done.stdout}{done.stderr}")
    return Process(
        [*stepguard, "serve", "--config", str(config)],
        port=port,
        workdir=workdir,
        name=f"stepguard-{server}{'-proxy' if upstream_port else ''}",
        env=python_env(),
        cwd=workdir,
        ready_path="/healthz",
        ready_timeout=30.0,
    )


# ================================================================================================
# ADJUST HERE (2/2): signing in. Returns the cookies of a signed-in session.
# ================================================================================================


def obtain_session_cookie(base_url: str, *, username: str, password: str) -> dict[str, str]:
    """Sign in through the portal (GET /login for any CSRF token, then POST /login)."""
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30.0,
                      headers={"User-Agent": BROWSER}) as client:
        page = client.get("/login")
        form = {"username": username, "password": password}
        for name, value in re.findall(
            r'<input[^>]*name="([^"]*csrf[^"]*)"[^>]*value="([^"]*)"', page.text
        ):
            form[name] = value
        answer = client.post("/login", data=form, headers={"Origin": base_url})
        if answer.status_code >= 400:
            raise RuntimeError(f"POST /login answered {answer.status_code}: {answer.text[:300]}")
        return dict(client.cookies.items())


# ================================================================================================
# wrk
# ================================================================================================


@dataclass(frozen=True)
class WrkSettings:
    threads: int = 2
    connections: int = 32
    duration: int = 3
    warmup: int = 1
    rounds: int = 2


@dataclass(frozen=True)
class WrkResult:
    label: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad_responses: int
    socket_errors: int

    @property
    def valid(self) -> bool:
        return self.requests > 0 and self.bad_responses == 0 and self.socket_errors == 0


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(label: str, output: str) -> WrkResult:
    """Requests/sec, the 50% and 99% latencies, and any non-2xx/3xx or socket errors."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        label=label,
        requests_per_second=float(rps.group(1)),
        p50_ms=_percentile_ms(output, "50"),
        p99_ms=_percentile_ms(output, "99"),
        requests=int(total.group(1)),
        bad_responses=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(count) for count in errors.groups()) if errors else 0,
    )


def _percentile_ms(output: str, percent: str) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {percent}% latency in wrk's output (was --latency given?)")
    return float(found.group(1)) * _UNITS_MS[found.group(2)]


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    headers: dict[str, str]
    settings: WrkSettings


def run_wrk(wrk: str, target: Target, seconds: int) -> WrkResult:
    settings = target.settings
    header_args = [
        arg for name, value in target.headers.items() for arg in ("-H", f"{name}: {value}")
    ]
    argv = [
        wrk, f"-t{settings.threads}", f"-c{settings.connections}", f"-d{seconds}s", "--latency",
        *header_args, target.url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(target.label, done.stdout)


def best_of_rounds(wrk: str, targets: Sequence[Target]) -> dict[str, WrkResult]:
    """Warm every target up, then load them in turn, round after round, and keep each figure's
    best (highest req/s, lowest p50 and p99). Taking turns spreads a slow spell of the machine
    over all targets instead of charging it to one."""
    for target in targets:
        if target.settings.warmup:
            run_wrk(wrk, target, target.settings.warmup)
    best: dict[str, WrkResult] = {}
    for _ in range(max(target.settings.rounds for target in targets)):
        for target in targets:
            result = run_wrk(wrk, target, target.settings.duration)
            kept = best.get(target.label)
            best[target.label] = result if kept is None else _best_figures(kept, result)
    return best


def _best_figures(one: WrkResult, other: WrkResult) -> WrkResult:
    return WrkResult(
        label=one.label,
        requests_per_second=max(one.requests_per_second, other.requests_per_second),
        p50_ms=min(one.p50_ms, other.p50_ms),
        p99_ms=min(one.p99_ms, other.p99_ms),
        requests=one.requests + other.requests,
        bad_responses=one.bad_responses + other.bad_responses,
        socket_errors=one.socket_errors + other.socket_errors,
    )


# ================================================================================================
# the benchmark
# ================================================================================================


@dataclass(frozen=True)
class Comparison:
    """`subject` beside `anchor`; a target left None is not judged (a reference row)."""

    name: str
    subject: WrkResult
    anchor: WrkResult
    ratio_target: float | None = None
    p99_extra_target_ms: float | None = None

    @property
    def ratio(self) -> float:
        return self.subject.requests_per_second / self.anchor.requests_per_second

    @property
    def p99_extra_ms(self) -> float:
        return self.subject.p99_ms - self.anchor.p99_ms

    @property
    def met(self) -> bool | None:
        checks = []
        if self.ratio_target is not None:
            checks.append(self.ratio >= self.ratio_target)
        if self.p99_extra_target_ms is not None:
            checks.append(self.p99_extra_ms <= self.p99_extra_target_ms)
        return all(checks) if checks else None


def plain_nginx_conf(*, listen_port: int, stepguard_port: int) -> str:
    """The anchor for (b): the same nginx settings, proxying straight to the upstream (here
    `stepguard_port` is the no-op app's: the only backend)."""
    return f"""\
upstream bench_upstream {{
    server 127.0.0.1:{stepguard_port};
    keepalive 32;
}}

server {{
    listen 127.0.0.1:{listen_port};
    server_name {SITE};

    location / {{
        proxy_pass http://bench_upstream;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


SIGN_IN_ADDRESS = "127.0.0.1"  # the bench signs in straight from loopback (no proxy)
MOVED_ADDRESS = "198.51.100.7"


def forward_auth_headers(cookies: dict[str, str], *,
                         client_ip: str = SIGN_IN_ADDRESS) -> dict[str, str]:
    """An ordinary request: the signed-in browser (its User-Agent), from the address it signed
    in from. With
    `client_ip=MOVED_ADDRESS` the session changed address mid-way — a risk signal, so each allow
    is its own sealed audit entry instead of a summary count (a reference row)."""
    return {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": SITE,
        "X-Forwarded-Uri": "/orders?page=2",
        "X-Forwarded-For": client_ip,
        "Accept": "text/html",
        "User-Agent": BROWSER,
        "Cookie": cookie_header(cookies),
    }


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def check_allowed(url: str, headers: dict[str, str], *, upstream: bool = False) -> None:
    """Refuse to time anything but an allowed, signed-in request (through nginx: one that
    reached the upstream, which answers 200 with an empty body)."""
    answer = httpx.get(url, headers=headers, timeout=10.0)
    user = answer.headers.get("remote-user", "")
    if answer.status_code != 200 or not (user or upstream):
        raise RuntimeError(
            f"GET {url} is not an allowed signed-in request: {answer.status_code}, "
            f"Remote-User={user!r}, Location={answer.headers.get('location')!r}"
        )


def noop_server(workdir: Path, workers: int, name: str) -> UvicornServer:
    bench_dir = str(REPO_ROOT / "bench")
    return UvicornServer(
        "noop_app:app", workdir / name, workers=workers, extra_args=["--app-dir", bench_dir],
        name=name,
    )


def granian_app(workdir: Path, workers: int, app: str, name: str,
                env: dict[str, str] | None = None) -> Process:
    """A bench app (`noop_app:app`, `floor_app:app`) under granian, like Stepguard's default."""
    port = free_port()
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), app]
    (workdir / name).mkdir(parents=True, exist_ok=True)
    return Process(argv, port=port, workdir=workdir / name, name=name,
                   env=python_env(env), cwd=REPO_ROOT / "bench", ready_path="/")


def floor_env(cookies: dict[str, str]) -> dict[str, str]:
    """The floor knows the bench user's session (same cookie, same token) and nothing else."""
    return {"FLOOR_SESSIONS": f"{cookies['stepguard_session']}:{BENCH_USERNAME}"}


@dataclass(frozen=True)
class Servers:
    upstream: UvicornServer  # the protected upstream behind nginx and the reverse proxy
    noop: Process  # the no-op app under granian (printed beside the floor)
    floor: Process  # the minimal Python forward-auth under granian: the anchor
    stepguard: Process  # Stepguard under granian
    cookies: dict[str, str]


@contextmanager
def servers(workdir: Path, workers: int) -> Iterator[Servers]:
    with ExitStack() as stack:
        upstream = stack.enter_context(noop_server(workdir, workers, "upstream"))
        noop = stack.enter_context(granian_app(workdir, workers, "noop_app:app", "noop-granian"))
        password = secrets.token_urlsafe(18)
        (workdir / "stepguard").mkdir()
        stepguard = start_stepguard(
            workdir / "stepguard", port=free_port(), workers=workers, password=password,
            server="granian")
        stack.enter_context(stepguard)
        cookies = obtain_session_cookie(stepguard.url, username=BENCH_USERNAME, password=password)
        floor = stack.enter_context(granian_app(workdir, workers, "floor_app:app", "floor",
                                                floor_env(cookies)))
        yield Servers(upstream, noop, floor, stepguard, cookies)


def bench(settings: WrkSettings, workers: int, workdir: Path, *,
          uvicorn: bool = True) -> list[Comparison]:
    wrk = ensure_packages("wrk", "nginx")["wrk"]
    unloaded = replace(settings, threads=1, connections=1)
    with servers(workdir, workers) as running, ExitStack() as stack:
        stepguard, cookies = running.stepguard, running.cookies
        headers = forward_auth_headers(cookies)
        check_allowed(stepguard.url + FORWARD_AUTH_PATH, headers)
        check_allowed(running.floor.url + FORWARD_AUTH_PATH, headers)
        alone = best_of_rounds(wrk, [
            Target("no-op app", running.noop.url + "/", {}, settings),
            Target("floor forward-auth", running.floor.url + FORWARD_AUTH_PATH, headers,
                   settings),
            Target("forward-auth", stepguard.url + FORWARD_AUTH_PATH, headers, settings),
            Target("forward-auth, moved address", stepguard.url + FORWARD_AUTH_PATH,
                   forward_auth_headers(cookies, client_ip=MOVED_ADDRESS), settings),
        ])
        guarded_conf = partial(nginx_conf, upstream_port=running.upstream.port, server_name=SITE)
        guarded = stack.enter_context(
            proxy(workdir / "nginx-guarded", guarded_conf, stepguard.port))
        floored = stack.enter_context(
            proxy(workdir / "nginx-floor", guarded_conf, running.floor.port))
        plain = stack.enter_context(
            proxy(workdir / "nginx-plain", plain_nginx_conf, running.upstream.port))
        browser = {"Host": SITE, "Accept": "text/html", "Cookie": cookie_header(cookies)}
        check_allowed(guarded, {**browser, "Accept": "application/json"}, upstream=True)
        check_allowed(floored, browser, upstream=True)
        saturated = best_of_rounds(wrk, [
            Target("nginx auth_request", guarded, browser, settings),
            Target("nginx → floor", floored, browser, settings),
            Target("nginx → no-op", plain, browser, settings),
        ])
        one = best_of_rounds(wrk, [
            Target("nginx auth_request c1", guarded, browser, unloaded),
            Target("nginx → floor c1", floored, browser, unloaded),
        ])
        servers_compared = (compare_servers(wrk, workdir, workers, settings, alone)
                            if uvicorn else [])
        proxied = reverse_proxy_mode(wrk, workdir, workers, settings, running.upstream)
    return [
        Comparison("forward-auth (granian) vs the floor", alone["forward-auth"],
                   alone["floor forward-auth"], ratio_target=FORWARD_AUTH_RATIO_TARGET),
        Comparison("(reference) forward-auth vs a no-op app", alone["forward-auth"],
                   alone["no-op app"]),
        Comparison("(reference) the floor vs a no-op app", alone["floor forward-auth"],
                   alone["no-op app"]),
        Comparison("(reference) forward-auth, moved address (sealed one by one) vs the floor",
                   alone["forward-auth, moved address"], alone["floor forward-auth"]),
        Comparison("behind nginx auth_request, saturated", saturated["nginx auth_request"],
                   saturated["nginx → floor"], ratio_target=NGINX_RATIO_TARGET),
        Comparison("behind nginx auth_request, one connection", one["nginx auth_request c1"],
                   one["nginx → floor c1"], p99_extra_target_ms=NGINX_P99_EXTRA_TARGET_MS),
        Comparison("(reference) nginx auth_request → floor vs nginx → app alone",
                   saturated["nginx → floor"], saturated["nginx → no-op"]),
        *proxied,
        *servers_compared,
    ]


def compare_servers(wrk: str, workdir: Path, workers: int, settings: WrkSettings,
                    granian_results: dict[str, WrkResult]) -> list[Comparison]:
    """Stepguard's forward-auth under uvicorn (httptools + uvloop) beside granian's — to pick
    the ASGI server by measurement."""
    password = secrets.token_urlsafe(18)
    with ExitStack() as stack:
        stepguard = stack.enter_context(start_stepguard(
            workdir / "stepguard-uvicorn", port=free_port(), workers=workers, password=password,
            server="uvicorn"))
        cookies = obtain_session_cookie(stepguard.url, username=BENCH_USERNAME, password=password)
        headers = forward_auth_headers(cookies)
        check_allowed(stepguard.url + FORWARD_AUTH_PATH, headers)
        results = best_of_rounds(wrk, [
            Target("forward-auth (uvicorn)", stepguard.url + FORWARD_AUTH_PATH, headers,
                   settings),
        ])
    return [
        Comparison("(server choice) uvicorn vs granian, forward-auth",
                   results["forward-auth (uvicorn)"], granian_results["forward-auth"]),
    ]


def reverse_proxy_mode(wrk: str, workdir: Path, workers: int, settings: WrkSettings,
                       noop: UvicornServer) -> list[Comparison]:
    """Stepguard as the reverse proxy in front of the no-op app vs nginx proxy_pass to it."""
    password = secrets.token_urlsafe(18)
    with ExitStack() as stack:
        # `server: auto` (the default) is uvicorn in reverse-proxy mode; granian beside it.
        stepguard = stack.enter_context(start_stepguard(
            workdir / "stepguard-proxy", port=free_port(), workers=workers, password=password,
            upstream_port=noop.port, server="auto"))
        on_granian = stack.enter_context(start_stepguard(
            workdir / "stepguard-proxy-granian", port=free_port(), workers=workers,
            password=password, upstream_port=noop.port, server="granian"))
        nginx = stack.enter_context(proxy(workdir / "nginx-proxy-pass", plain_nginx_conf,
                                          noop.port))
        relay_floor = stack.enter_context(granian_app(
            workdir, workers, "relay_floor_app:app", "relay-floor",
            {"RELAY_UPSTREAM": f"http://127.0.0.1:{noop.port}"}))
        cookies = obtain_session_cookie(stepguard.url, username=BENCH_USERNAME, password=password)
        headers = {"Accept": "text/html", "User-Agent": BROWSER, "Cookie": cookie_header(cookies)}
        check_allowed(stepguard.url + "/orders?page=2", headers, upstream=True)
        granian_cookies = obtain_session_cookie(on_granian.url, username=BENCH_USERNAME,
                                                password=password)
        granian_headers = {**headers, "Cookie": cookie_header(granian_cookies)}
        check_allowed(on_granian.url + "/orders?page=2", granian_headers, upstream=True)
        results = best_of_rounds(wrk, [
            Target("nginx proxy_pass", nginx, {"Host": SITE, **headers}, settings),
            Target("reverse-proxy mode", stepguard.url + "/orders?page=2", headers, settings),
            Target("reverse-proxy mode (granian)", on_granian.url + "/orders?page=2",
                   granian_headers, settings),
            Target("minimal Python relay", relay_floor.url + "/orders?page=2", headers, settings),
            Target("no-op app direct", noop.url + "/orders?page=2", {}, settings),
        ])
    return [Comparison("reverse-proxy mode vs nginx proxy_pass", results["reverse-proxy mode"],
                       results["nginx proxy_pass"], ratio_target=REVERSE_PROXY_RATIO_TARGET),
            Comparison("(server choice) reverse-proxy mode: granian vs uvicorn (auto)",
                       results["reverse-proxy mode (granian)"], results["reverse-proxy mode"]),
            Comparison("(reference) reverse-proxy mode vs a minimal Python relay",
                       results["reverse-proxy mode"], results["minimal Python relay"]),
            Comparison("(reference) the minimal Python relay vs nginx proxy_pass",
                       results["minimal Python relay"], results["nginx proxy_pass"]),
            Comparison("(reference) reverse-proxy mode vs the upstream directly",
                       results["reverse-proxy mode"], results["no-op app direct"])]


def reverse_proxy_only(settings: WrkSettings, workers: int, workdir: Path) -> list[Comparison]:
    wrk = ensure_packages("wrk", "nginx")["wrk"]
    with noop_server(workdir, workers, "upstream") as upstream:
        return reverse_proxy_mode(wrk, workdir, workers, settings, upstream)


@contextmanager
def proxy(workdir: Path, conf: Callable[..., str], auth_port: int) -> Iterator[str]:
    """A private nginx with `conf(listen_port=, stepguard_port=)`; yields the URL to load."""
    port = free_port()
    text = conf(listen_port=port, stepguard_port=auth_port)
    with Nginx(text, workdir, access_log=False, log_level="warn"):
        yield f"http://127.0.0.1:{port}/orders?page=2"


def report(comparisons: Sequence[Comparison], settings: WrkSettings, workers: int) -> str:
    lines = [
        f"gateway benchmark: wrk -t{settings.threads} -c{settings.connections} "
        f"-d{settings.duration}s --latency, best of {settings.rounds}; "
        f"workers={workers}; "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}",
        "",
        f"{'run':<30}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'valid':>7}",
    ]
    results = {r.label: r for c in comparisons for r in (c.subject, c.anchor)}
    lines += [
        f"{r.label:<30}{r.requests_per_second:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
        f"{'yes' if r.valid else 'NO':>7}"
        for r in results.values()
    ]
    lines.append("")
    for comparison in comparisons:
        lines.append(_verdict_line(comparison))
    lines.append(
        "\np99 is judged on one connection: under saturation latency is queueing "
        "(connections ÷ req/s), so it follows the req/s ratio."
    )
    return "\n".join(lines)


def _verdict_line(comparison: Comparison) -> str:
    parts = [f"{comparison.ratio:.2f}× the anchor's req/s"]
    if comparison.ratio_target is not None:
        parts[0] += f" (target ≥ {comparison.ratio_target}×)"
    parts.append(f"p99 {comparison.p99_extra_ms:+.2f} ms")
    if comparison.p99_extra_target_ms is not None:
        parts[1] += f" (target ≤ +{comparison.p99_extra_target_ms} ms)"
    verdict = {True: "PASS", False: "MISS", None: "reference"}[comparison.met]
    return f"{comparison.name}: {', '.join(parts)} — {verdict}"


def as_json(comparisons: Sequence[Comparison]) -> str:
    return json.dumps(
        [
            {
                "name": c.name,
                "ratio": round(c.ratio, 3),
                "ratio_target": c.ratio_target,
                "p99_extra_ms": round(c.p99_extra_ms, 3),
                "p99_extra_target_ms": c.p99_extra_target_ms,
                "met": c.met,
                "subject": asdict(c.subject),
                "anchor": asdict(c.anchor),
            }
            for c in comparisons
        ],
        indent=2,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=WrkSettings.threads)
    parser.add_argument("--connections", type=int, default=WrkSettings.connections)
    parser.add_argument("--duration", type=int, default=WrkSettings.duration,
                        help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=WrkSettings.rounds,
                        help="measured runs per target, taken in turns; the best is kept")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for both apps")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only-reverse-proxy", action="store_true",
                        help="run only (d), reverse-proxy mode beside nginx proxy_pass")
    parser.add_argument("--no-uvicorn", action="store_true",
                        help="skip the uvicorn row (server choice)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = parser.parse_args(argv)
    settings = WrkSettings(args.threads, args.connections, args.duration, rounds=args.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="sg-bench-gateway-"))
    try:
        comparisons = (reverse_proxy_only(settings, args.workers, workdir)
                       if args.only_reverse_proxy
                       else bench(settings, args.workers, workdir, uvicorn=not args.no_uvicorn))
    except Exception as exc:
        print(f"gateway benchmark failed: {exc}\n(configs and logs kept in {workdir})",
              file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(as_json(comparisons) if args.json else report(comparisons, settings, args.workers))
    results = [r for c in comparisons for r in (c.subject, c.anchor)]
    return 0 if all(result.valid for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
