"""The gateway: one ASGI application with forward-auth, the portal, health and metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from stepguard.adapters.decision_api import decision_api_routes
from stepguard.adapters.forward_auth import CaddyStrategy, ForwardAuth, NginxStrategy
from stepguard.adapters.proxy import ReverseProxy
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.service.accounts import Accounts
from stepguard.service.guard import Guard
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import StepUp
from stepguard.web import metrics_access
from stepguard.web.portal import Portal
from stepguard.web.security import SecurityHeadersMiddleware

STATIC = Path(__file__).parent / "static"


class Metrics:
    """HTTP-level metrics, on the same registry as the decision counters (`service.observe`).

    One set per registry: several apps built on one runtime (tests, embedded setups) share it.
    """

    _by_registry: dict[int, Metrics] = {}

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Metrics:
        found = cls._by_registry.get(id(registry))
        if found is None or found.registry is not registry:
            found = cls._by_registry[id(registry)] = cls(registry)
        return found

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = Counter("stepguard_forward_auth_responses_total",
                                 "Forward-auth answers by HTTP status", ["status"],
                                 registry=self.registry)
        self.latency = Histogram("stepguard_forward_auth_seconds", "Forward-auth latency",
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0))
        self.unavailable = Counter("stepguard_store_unavailable_total",
                                   "Requests refused with 503 because a store was unreachable",
                                   registry=self.registry)
        self.audit_backlog = Gauge("stepguard_audit_backlog",
                                   "Audit entries queued but not yet written",
                                   registry=self.registry)
        self.store_up = Gauge("stepguard_store_up", "1 when the store answered the last check",
                              ["store"], registry=self.registry)


def create_app(runtime: Runtime) -> Starlette:
    guard, stepup, accounts = Guard(runtime), StepUp(runtime), Accounts(runtime)
    forward = ForwardAuth(runtime, guard, stepup)
    portal = Portal(runtime, guard, stepup, accounts)
    metrics = Metrics.of(runtime.observer.registry)
    caddy, nginx = CaddyStrategy(), NginxStrategy()

    async def forward_auth(request: Request) -> Response:
        return await _timed(metrics, forward.handle(request, caddy))

    async def auth_request(request: Request) -> Response:
        return await _timed(metrics, forward.handle(request, nginx))

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        stores = await run_in_threadpool(store_report, runtime)
        for name, state in stores.items():
            metrics.store_up.labels(name).set(1 if state == "ok" else 0)
        ready = all(state == "ok" for state in stores.values())
        audit = "retrying" if runtime.audit.last_error is not None else "ok"
        body = {"ready": ready, **stores, "audit": audit, "audit_backlog": runtime.audit.backlog}
        return JSONResponse(body, 200 if ready else 503)

    def render_metrics() -> bytes:
        metrics.audit_backlog.set(runtime.audit.backlog)
        return bytes(generate_latest(metrics.registry))

    async def metrics_page(request: Request) -> Response:
        # Never unauthenticated on the public port (they name rules): only with the token.
        settings = runtime.config.metrics
        if not settings.token:
            return PlainTextResponse("not found\n", 404)
        if not metrics_access.token_ok(settings, request.headers.get("authorization")):
            return PlainTextResponse("metrics need a bearer token\n", 401,
                                     headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)

    async def unavailable(_: Request, exc: Exception) -> Response:
        metrics.unavailable.inc()
        return PlainTextResponse("Stepguard cannot reach its store; try again shortly.\n", 503,
                                 headers={"Retry-After": "5", "Cache-Control": "no-store"})

    async def bad_request(_: Request, exc: Exception) -> Response:
        # Client input never causes a 500: e.g. a trusted proxy's garbage X-Forwarded-For.
        return PlainTextResponse(f"bad request: {exc}\n", 400,
                                 headers={"Cache-Control": "no-store"})

    async def well_known(_: Request) -> Response:
        levels = runtime.policy.levels
        return JSONResponse({"acr_values_supported": [levels[k].acr for k in sorted(levels)],
                             "portal": runtime.config.server.public_url})

    async def root(_: Request) -> Response:
        return RedirectResponse("/account", 303)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        listener = (await metrics_access.serve(runtime.config.metrics, render_metrics)
                    if runtime.config.metrics.listen else None)
        yield
        if listener is not None:
            listener.close()
        # The server has stopped accepting and finished its in-flight requests; now write the
        # audit queue (or spill it, see service/audit_spill.py) off the event loop.
        await run_in_threadpool(runtime.close)

    routes = [
        Route("/api/authz/forward-auth", forward_auth, methods=["GET", "HEAD", "POST", "PUT",
                                                                 "PATCH", "DELETE", "OPTIONS"]),
        Route("/api/authz/auth-request", auth_request, methods=["GET", "HEAD"]),
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_page),
        Route("/.well-known/stepguard-configuration", well_known),
        *([] if runtime.config.upstreams else [Route("/", root)]),
        *decision_api_routes(runtime, guard, stepup),
        *portal.routes(),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if runtime.config.upstreams:
        proxy = ReverseProxy(runtime, guard, stepup, cookie_name=portal.cookie_name)
        routes.append(Route("/{path:path}", proxy.handle, methods=[
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
        routes.append(WebSocketRoute("/{path:path}", proxy.websocket))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={StoreUnavailable: unavailable,
                                        BadRequest: bad_request})
    if runtime.config.upstreams:
        app.state.replay, app.state.proxy = proxy.replay, proxy
    app.state.runtime, app.state.guard, app.state.stepup = runtime, guard, stepup
    app.state.accounts, app.state.portal = accounts, portal
    https = runtime.config.server.public_url.startswith("https://")
    app.add_middleware(SecurityHeadersMiddleware, https=https)
    return app


async def _timed(metrics: Metrics, pending: object) -> Response:
    start = time.perf_counter()
    response: Response = await pending  # type: ignore[misc]
    metrics.latency.observe(time.perf_counter() - start)
    metrics.decisions.labels(str(response.status_code)).inc()
    if response.status_code == 503:
        metrics.unavailable.inc()
    return response


def store_report(runtime: Runtime) -> dict[str, str]:
    """`{"store": "ok" | "unavailable", "redis": ...}`: one real round trip to each store
    (bounded by its timeouts); "redis" only when Redis is configured."""
    report = {"store": _state(runtime.store.ping)}
    if runtime.redis_watch is not None:
        report["redis"] = _state(runtime.redis_watch.ping)
    return report


def _state(ping: Callable[[], None]) -> str:
    try:
        ping()
    except StoreUnavailable:
        return "unavailable"
    return "ok"
