"""The gateway: the whole server as one ASGI application — forward-auth, the reverse proxy, the
portal, the decision API, health and metrics — wired from one `Runtime`.

The hot paths are raw ASGI handlers dispatched before Starlette's routing and middleware
(`Gateway.__call__`): forward-auth's two endpoints by exact path, and in reverse-proxy mode every
HTTP request whose path starts with none of Stepguard's own routes. Everything else (the portal's
pages with their security headers, the decision API, health, metrics, WebSockets, lifespan) goes
through the Starlette application as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from stepguard.adapters.decision_api import decision_api_routes
from stepguard.adapters.forward_auth import CaddyStrategy, ForwardAuth, NginxStrategy
from stepguard.adapters.mcp import PREFIX as MCP_PREFIX
from stepguard.adapters.mcp import McpDoor
from stepguard.adapters.proxy import ReverseProxy
from stepguard.core.errors import BadRequest, StoreUnavailable
from stepguard.service.accounts import Accounts
from stepguard.service.guard import Guard
from stepguard.service.hot_metrics import FastCounter, FastHistogram
from stepguard.service.idp import IdentityProviders
from stepguard.service.runtime import Runtime
from stepguard.service.stepup import StepUp
from stepguard.web import metrics_access
from stepguard.web.agents_page import AgentsPage
from stepguard.web.db_tokens import DbTokenPages
from stepguard.web.oidc import OidcPages
from stepguard.web.portal import Portal
from stepguard.web.security import SecurityHeadersMiddleware

STATIC = Path(__file__).parent / "web" / "static"
FORWARD_AUTH_PATH = "/api/authz/forward-auth"
AUTH_REQUEST_PATH = "/api/authz/auth-request"
FORWARD_AUTH_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
AUTH_REQUEST_METHODS = ("GET", "HEAD")
PROXIED_METHODS = FORWARD_AUTH_METHODS


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
        self.decisions = FastCounter("stepguard_forward_auth_responses_total",
                                     "Forward-auth answers by HTTP status", ["status"],
                                     self.registry)
        self.latency = FastHistogram("stepguard_forward_auth_seconds", "Forward-auth latency",
                                     (0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0),
                                     self.registry)
        self.unavailable = Counter("stepguard_store_unavailable_total",
                                   "Requests refused with 503 because a store was unreachable",
                                   registry=self.registry)
        self.audit_backlog = Gauge("stepguard_audit_backlog",
                                   "Audit entries queued but not yet written",
                                   registry=self.registry)
        self.store_up = Gauge("stepguard_store_up", "1 when the store answered the last check",
                              ["store"], registry=self.registry)

    def forward_auth(self, status: int, seconds: float) -> None:
        """One forward-auth answer: its latency and status (503s also count as unavailable)."""
        self.latency.observe(seconds)
        self.decisions.inc(_STATUS.get(status) or str(status))
        if status == 503:
            self.unavailable.inc()


_STATUS = {status: str(status) for status in (200, 302, 303, 400, 401, 403, 503)}


class Gateway(Starlette):
    """Starlette, with the hot paths answered before its routing and middleware."""

    raw: dict[str, tuple[ASGIApp, tuple[str, ...]]]
    proxy: ASGIApp | None
    own_prefixes: tuple[str, ...]
    mcp: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            raw = self.raw.get(path)
            if self.mcp is not None and path.startswith(MCP_PREFIX):
                await self.mcp(scope, receive, send)
                return
            if raw is not None:
                if scope["method"] in raw[1]:
                    await raw[0](scope, receive, send)
                    return
            elif (self.proxy is not None and scope["method"] in PROXIED_METHODS
                  and not path.startswith(self.own_prefixes)):
                await self.proxy(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(runtime: Runtime) -> Gateway:
    guard, stepup, accounts = Guard(runtime), StepUp(runtime), Accounts(runtime)
    metrics = Metrics.of(runtime.observer.registry)
    forward = ForwardAuth(runtime, guard, stepup, observe=metrics.forward_auth)
    https = runtime.config.server.public_url.startswith("https://")
    proxy = (ReverseProxy(runtime, guard, stepup, https=https,
                          unavailable=metrics.unavailable.inc)
             if runtime.config.upstreams else None)
    portal = Portal(runtime, guard, stepup, accounts,
                    replay=proxy.replay if proxy is not None else None)
    providers = (IdentityProviders.start(runtime, accounts, stepup)
                 if runtime.config.oidc.providers else None)
    provider_pages = OidcPages(portal, providers) if providers is not None else None
    forward_auth = forward.endpoint(CaddyStrategy())
    auth_request = forward.endpoint(NginxStrategy())

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
        if mcp is not None:
            await mcp.close()
        # The server has stopped accepting and finished its in-flight requests; now write the
        # audit queue (or spill it, see service/audit_spill.py) off the event loop.
        await run_in_threadpool(runtime.close)
        if providers is not None:
            providers.close()

    routes = [
        # Answered by `Gateway.__call__` first; here for any other method (405).
        Route(FORWARD_AUTH_PATH, forward_auth, methods=list(FORWARD_AUTH_METHODS)),
        Route(AUTH_REQUEST_PATH, auth_request, methods=list(AUTH_REQUEST_METHODS)),
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_page),
        Route("/.well-known/stepguard-configuration", well_known),
        *([] if runtime.config.upstreams else [Route("/", root)]),
        *decision_api_routes(runtime, guard, stepup),
        *portal.routes(),
        *AgentsPage(portal).routes(),
        *DbTokenPages(portal).routes(),
        *(provider_pages.routes() if provider_pages is not None else []),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    mcp = McpDoor(runtime, guard, stepup) if runtime.config.mcp_servers else None
    own_prefixes = tuple(_literal_prefix(r) for r in routes) + ((MCP_PREFIX,) if mcp else ())
    if proxy is not None:
        routes.append(Route("/{path:path}", proxy, methods=list(PROXIED_METHODS)))
        routes.append(WebSocketRoute("/{path:path}", proxy.websocket))
    app = Gateway(routes=routes, lifespan=lifespan,
                  exception_handlers={StoreUnavailable: unavailable, BadRequest: bad_request})
    app.raw = {FORWARD_AUTH_PATH: (forward_auth, FORWARD_AUTH_METHODS),
               AUTH_REQUEST_PATH: (auth_request, AUTH_REQUEST_METHODS)}
    app.proxy, app.own_prefixes, app.mcp = proxy, own_prefixes, mcp
    if proxy is not None:
        app.state.proxy = proxy
    app.state.runtime, app.state.guard, app.state.stepup = runtime, guard, stepup
    app.state.accounts, app.state.portal = accounts, portal
    app.state.identity_providers = providers
    app.add_middleware(SecurityHeadersMiddleware, https=https)
    return app


def _literal_prefix(route: BaseRoute) -> str:
    """What every path a route matches starts with (`/step-up/{cid}` -> `/step-up/`): a path
    starting with none of Stepguard's is the upstream's. A path that only looks like one of
    them goes through Starlette's routing, which still ends at the proxy."""
    path = str(getattr(route, "path", "/"))
    return path.split("{", 1)[0] or "/"


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
