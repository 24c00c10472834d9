"""ASGI middleware benchmark (DESIGN.md §10), each figure beside its anchor, same run.

(a) **middleware**: a FastAPI app behind `StepguardMiddleware` in embedded mode (every request
    decided: session lookup, risk, `decide()`, audit entry), signed-in user, allowed requests —
    vs the same FastAPI app without the middleware. Both under uvicorn (1 worker) on 127.0.0.1,
    loaded in turn by the same wrk command (or, without wrk, an httpx async load generator).
    Target: ≥ 0.75× the bare app's req/s (DESIGN.md §10).
(b) **decision API round trip**: `POST /api/v1/decide` on a real Stepguard server over loopback,
    one keep-alive connection, sequential calls: p50 and p99 — beside the round trip of the bare
    app's `GET /hello` on the same kind of connection (the HTTP + loopback floor).

Run: `python bench/middleware.py` (`--help`). About 30 s with the defaults. The same file is the
app module uvicorn loads (`--factory middleware:bare_app | guarded_app | decision_server`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

RATIO_TARGET = 0.75
CONFIG_ENV = "STEPGUARD_BENCH_CONFIG"
HOST = "app.test"


# ------------------------------------------------------------------------------------ the apps


def _fastapi() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, bool]:
        return {"ok": True}

    return app


def _runtime() -> Any:
    from stepguard.config.load import load_config
    from stepguard.service.runtime import build_runtime

    return build_runtime(load_config(os.environ[CONFIG_ENV]))


def bare_app() -> Any:
    return _fastapi()


def guarded_app() -> Any:
    from stepguard.asgi import StepguardMiddleware

    return StepguardMiddleware(_fastapi(), mode="embedded", runtime=_runtime())


def decision_server() -> Any:
    from stepguard.adapters.decision_api import DECIDE_PATH, decision_api_routes
    from stepguard.gateway import create_app

    runtime = _runtime()
    app = create_app(runtime)
    if not any(getattr(r, "path", "") == DECIDE_PATH for r in app.router.routes):
        app.router.routes[0:0] = decision_api_routes(runtime, app.state.guard, app.state.stepup)
    return app


# ------------------------------------------------------------------------------------ setup


def prepare(folder: Path) -> tuple[Path, str, str]:
    """Config + store with one user, a signed-in session and an API key: (config, token, key)."""
    from tests.support.gateway import make_runtime, seed_user

    from stepguard.core.context import AuthEvent
    from stepguard.core.levels import Level
    from stepguard.service.api_keys import ApiKeys
    from stepguard.service.runtime import hash_token, new_id, new_token
    from stepguard.storage.records import SessionRecord

    runtime = make_runtime(folder, clock=time.time)  # type: ignore[arg-type]
    user = seed_user(runtime, "bench", with_totp=False).user
    token, now = new_token(), time.time()
    runtime.store.sessions.add(SessionRecord(
        id=new_id(), token_hash=hash_token(token), user_id=user.id, created=now, last_seen=now,
        events=(AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now),)))
    key = ApiKeys(runtime).create("bench").key
    runtime.close()
    return folder / "stepguard.yaml", token, key


@contextmanager
def serve(factory: str, config: Path, workdir: Path) -> Iterator[str]:
    from tests.support.servers import Process, free_port, python_env

    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory", f"middleware:{factory}",
            "--app-dir", str(REPO_ROOT / "bench"), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]
    env = python_env({CONFIG_ENV: str(config)})
    with Process(argv, port=port, workdir=workdir, name=factory, env=env, ready_path="/hello"):
        yield f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------ load


def wrk(url: str, headers: dict[str, str], *, duration: float, connections: int) -> float:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            *[a for k, v in headers.items() for a in ("-H", f"{k}: {v}")], url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    if bad or (errors and "timeout 0" not in errors.group(0)):
        raise SystemExit(f"invalid run against {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


async def _httpx_load(url: str, headers: dict[str, str], duration: float,
                      connections: int) -> float:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, headers=headers) as client:
        deadline, done = time.perf_counter() + duration, 0

        async def worker() -> int:
            count = 0
            while time.perf_counter() < deadline:
                response = await client.get(url)
                if response.status_code != 200:
                    raise SystemExit(f"invalid run: {response.status_code} from {url}")
                count += 1
            return count

        start = time.perf_counter()
        done = sum(await asyncio.gather(*(worker() for _ in range(connections))))
        return done / (time.perf_counter() - start)


def load(url: str, headers: dict[str, str], *, duration: float, connections: int) -> float:
    if shutil.which("wrk"):
        return wrk(url, headers, duration=duration, connections=connections)
    return asyncio.run(_httpx_load(url, headers, duration, connections))


def round_trips(client: httpx.Client, count: int, call: Any) -> tuple[float, float]:
    """p50 and p99 of `count` sequential calls, in milliseconds."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = call(client)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"invalid round trip: {response.status_code} {response.text[:200]}")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per app (best kept)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--calls", type=int, default=1000, help="round trips for p50/p99")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepguard-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        config, token, key = prepare(workdir / "stepguard")
        bare = stack.enter_context(serve("bare_app", config, workdir))
        guarded = stack.enter_context(serve("guarded_app", config, workdir))
        headers = {"Host": HOST, "Accept": "application/json",
                   "Cookie": f"stepguard_session={token}"}
        check = httpx.get(f"{guarded}/hello", headers=headers)
        if check.status_code != 200:
            raise SystemExit(f"the guarded app does not allow the bench user: {check.text}")
        best = {"bare": 0.0, "guarded": 0.0}
        for url in (bare, guarded):  # warm-up
            load(f"{url}/hello", headers, duration=1, connections=args.connections)
        for _ in range(args.rounds):
            for name, url in (("bare", bare), ("guarded", guarded)):
                rate = load(f"{url}/hello", headers, duration=args.duration,
                            connections=args.connections)
                best[name] = max(best[name], rate)
        ratio = best["guarded"] / best["bare"]
        verdict = "PASS" if ratio >= RATIO_TARGET else "MISS"
        tool = "wrk" if shutil.which("wrk") else "httpx"
        print(f"middleware (embedded, allowed, {tool} c={args.connections}): "
              f"{best['guarded']:,.0f} req/s | bare FastAPI {best['bare']:,.0f} req/s | "
              f"{ratio:.2f}× (target ≥ {RATIO_TARGET}×) {verdict}")

        server = stack.enter_context(serve("decision_server", config, workdir))
        body = {"method": "GET", "host": HOST, "path": "/hello", "session_token": token}
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(50):
                client.post(f"{server}/api/v1/decide", json=body)
            decide_p50, decide_p99 = round_trips(
                client, args.calls, lambda c: c.post(f"{server}/api/v1/decide", json=body))
            floor_p50, floor_p99 = round_trips(
                client, args.calls, lambda c: c.get(f"{bare}/hello", headers=headers))
        print(f"decision API round trip (loopback, keep-alive, {args.calls} calls): "
              f"p50 {decide_p50:.2f} ms p99 {decide_p99:.2f} ms | bare FastAPI GET round trip "
              f"p50 {floor_p50:.2f} ms p99 {floor_p99:.2f} ms")


if __name__ == "__main__":
    main()
