"""Fleet benchmark: Stepguard instances on one PostgreSQL (+ Redis), each figure beside its anchor.

(1) **Invalidation** (in process, real PostgreSQL and Redis): what the per-request version read
    costs, beside no read (a push cache) and the replaced global epoch, the miss load, and how
    late a push arrives: PostgreSQL LISTEN/NOTIFY (commit returned → notification read on
    another connection) and Redis pub/sub (PUBLISH returned → message read). A push's delay is
    the window in which another instance would still allow a revoked session; the read has
    none (bench/invalidation.py).
(2) **Load** (wrk through nginx, deploy/nginx/stepguard.conf): nginx `auth_request` to one
    Stepguard instance, to two instances (upstream widened), and nginx → the no-op app (the
    anchor), in the same run: req/s, p50, p99, errors. Targets are loaded in turns, best of
    `--rounds` (see bench/gateway.py, whose wrk helpers this reuses).

Run: `python bench/fleet.py` (about 60 s; `--skip-load` or `--skip-invalidation` for one part).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

import redis  # noqa: E402
from tests.fleet.harness import (  # noqa: E402
    SITE,
    Browser,
    Instance,
    cookie_header,
    fleet_config,
    fleet_nginx,
    instance,
    start_all,
)
from tests.support.gateway import seed_user  # noqa: E402
from tests.support.postgres import create_database, running_postgres  # noqa: E402
from tests.support.servers import Nginx, Redis, ensure_packages, free_port  # noqa: E402

from bench.gateway import (  # noqa: E402
    Target,
    WrkResult,
    WrkSettings,
    best_of_rounds,
    noop_server,
    plain_nginx_conf,
)
from bench.invalidation import Timing, measure, notify_delays  # noqa: E402
from bench.invalidation import report as invalidation_report  # noqa: E402
from stepguard.config.load import load_config  # noqa: E402
from stepguard.service.runtime import build_runtime  # noqa: E402
from stepguard.storage.migrate import upgrade  # noqa: E402

# ================================================================================================
# (1) invalidation
# ================================================================================================


def pubsub_delays(redis_url: str, count: int = 300) -> Timing:
    client = redis.Redis.from_url(redis_url)
    subscription = client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe("stepguard-epoch")
    arrived: list[float] = []
    got = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if subscription.get_message(timeout=0.1) is not None:
                arrived.append(time.perf_counter())
                got.set()

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(0.2)
    delays = []
    for _ in range(count):
        got.clear()
        client.publish("stepguard-epoch", "1")
        sent = time.perf_counter()
        if not got.wait(5):
            raise RuntimeError("a message did not arrive within 5 s")
        delays.append(arrived[-1] - sent)
    stop.set()
    time.sleep(0.2)
    subscription.close()
    client.close()
    return Timing("Redis pub/sub: PUBLISH returned → subscriber has it", tuple(delays))


def invalidation(store_url: str, redis_url: str) -> list[Timing]:
    """The per-request read and the miss load on this fleet's PostgreSQL, beside the delivery
    window of either push (see bench/invalidation.py for SQLite and the design discussion)."""
    return [*measure("PostgreSQL", store_url, 1000), notify_delays(store_url, 300),
            pubsub_delays(redis_url)]


# ================================================================================================
# (2) load through nginx
# ================================================================================================


@contextmanager
def stores(workdir: Path) -> Iterator[tuple[object, str, Redis]]:
    with running_postgres() as postgres, Redis(workdir / "redis") as redis_server:
        url = create_database(postgres.url(), prefix="bench_fleet")
        upgrade(url)
        yield postgres, url, redis_server


def load(workdir: Path, config: Path, settings: WrkSettings) -> dict[str, WrkResult]:
    wrk = ensure_packages("wrk", "nginx")["wrk"]
    with ExitStack() as stack:
        noop = stack.enter_context(noop_server(workdir, 1, "noop"))
        members = [instance(workdir, config, name) for name in ("a", "b")]
        start_all(members)
        for member in members:
            stack.callback(member.stop)
        runtime = build_runtime(load_config(config))
        user = seed_user(runtime, "bench-load")
        runtime.close()
        browser = Browser(_PortalOnly(str(load_config(config).config.server.public_url)))  # type: ignore[arg-type]
        if browser.sign_in(members[0].url, user.user.username, user.password).status_code != 303:
            raise RuntimeError("could not sign in")
        cookies = cookie_header(browser.cookies)
        one = _nginx(stack, workdir / "nginx-1", members[:1], noop.port)
        two = _nginx(stack, workdir / "nginx-2", members, noop.port)
        plain_port = free_port()
        stack.enter_context(Nginx(plain_nginx_conf(listen_port=plain_port,
                                                   stepguard_port=noop.port),
                                  workdir / "nginx-plain", access_log=False, log_level="warn"))
        headers = {"Host": SITE, "Accept": "application/json", "Cookie": cookies}
        path = "/orders?page=2"
        return best_of_rounds(wrk, [
            Target("nginx → no-op app (anchor)", f"http://127.0.0.1:{plain_port}{path}",
                   headers, settings),
            Target("nginx auth_request → 1 instance", f"{one}{path}", headers, settings),
            Target("nginx auth_request → 2 instances", f"{two}{path}", headers, settings),
        ])


@dataclass
class _PortalOnly:
    """What `Browser` needs of a fleet to sign in: the portal's public URL (CSRF Origin)."""

    public_url: str


def _nginx(stack: ExitStack, workdir: Path, members: Sequence[Instance], app_port: int) -> str:
    port = free_port()
    stack.enter_context(fleet_nginx(workdir, members, app_port=app_port, listen=port))
    return f"http://127.0.0.1:{port}"


def load_report(results: dict[str, WrkResult], settings: WrkSettings, server: str) -> str:
    anchor = results["nginx → no-op app (anchor)"]
    lines = [f"load: wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s, "
             f"best of {settings.rounds}; each instance = `stepguard serve`, 1 {server} worker; "
             f"the no-op app = 1 uvicorn worker; PostgreSQL + Redis on the same machine",
             f"{'run':<36}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'× anchor':>10}"]
    for result in results.values():
        errors = result.bad_responses + result.socket_errors
        ratio = result.requests_per_second / anchor.requests_per_second
        lines.append(f"{result.label:<36}{result.requests_per_second:>10.0f}{result.p50_ms:>9.2f}"
                     f"{result.p99_ms:>9.2f}{errors:>8}{ratio:>10.2f}")
    return "\n".join(lines)


# ================================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-invalidation", action="store_true")
    args = parser.parse_args(argv)
    settings = WrkSettings(args.threads, args.connections, args.duration, rounds=args.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="sg-bench-fleet-"))
    print(f"fleet benchmark: {os.cpu_count()} CPUs; Python {platform.python_version()}; "
          f"work dir {workdir}")
    valid = True
    with stores(workdir) as (_, store_url, redis_server):
        public = f"http://localhost:{free_port()}"
        config = fleet_config(workdir, store_url=store_url, redis_url=redis_server.redis_url,
                              public_url=public, allows="summary")
        if not args.skip_invalidation:
            print(invalidation_report(invalidation(store_url, redis_server.redis_url)))
        if not args.skip_load:
            results = load(workdir, config, settings)
            server = load_config(config).config.http_server()
            print(load_report(results, settings, server))
            valid = all(r.valid for r in results.values())
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())

