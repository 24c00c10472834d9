"""Identity-provider tests over real HTTP: the bundled OpenID provider (stepguard.demo.idp) and
Stepguard each served by uvicorn on a loopback port, and a `Browser` (httpx, its own cookie
jar, redirects followed by hand) that signs in the way a browser does."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from stepguard.config.load import load_config
from stepguard.demo.idp import ACR_LEVELS, Client, DemoIdp, ThreadServer, User
from stepguard.gateway import create_app
from stepguard.service.runtime import Runtime, build_runtime
from tests.support.gateway import write_config
from tests.support.servers import free_port

CLIENT_ID = "stepguard"
CLIENT_SECRET = "stepguard-test-secret"  # noqa: S105 (a test provider's client secret)
_CSRF = re.compile(r'name="csrf(?:_token|-token)" (?:value|content)="([^"]+)"')
_RID = re.compile(r'name="rid" value="([^"]+)"')

POLICY = """\
levels:
  aal2: {acr: "urn:stepguard:aal2", max_session: 24h, idle: 1h}
  aal3: {acr: "urn:stepguard:aal3", max_session: 12h, idle: 15m}
rules:
  - name: idp-fresh
    match: {paths: ["/idp-fresh/**"]}
    require: {level: aal2, max_age: 0s, via: idp, reason: "Approve this at your company sign-in"}
  - name: idp-strong
    match: {paths: ["/idp-strong/**"]}
    require: {level: aal2, max_age: 10m, via: idp}
  - name: local-strong
    match: {paths: ["/local-strong/**"]}
    require: {level: aal2, max_age: 10m, via: local}
  - name: passkey-only
    match: {paths: ["/passkey/**"]}
    require: {level: aal1, methods: [webauthn]}
  - name: staff
    match: {paths: ["/staff/**"], groups: [staff]}
    require: {level: aal1}
  - name: not-staff
    match: {paths: ["/staff/**"]}
    deny: "Staff only"
default: {level: aal1}
"""


def provider_config(name: str, idp: DemoIdp, *, extra: str = "") -> str:
    levels = ", ".join(f'"{acr}": {level}' for acr, level in ACR_LEVELS.items())
    return (f"    - name: {name}\n"
            f"      issuer: \"{idp.issuer}\"\n"
            f"      client_id: {CLIENT_ID}\n"
            f"      client_secret: {CLIENT_SECRET}\n"
            f"      algorithms: [ES256]\n"
            f"      groups_claim: groups\n"
            f"      acr_levels: {{{levels}}}\n"
            f"      jwks_refetch_interval: 0s\n" + extra)


@dataclass
class Site:
    """Stepguard served over HTTP, and the providers it trusts."""

    url: str
    runtime: Runtime
    idps: dict[str, DemoIdp]
    providers: Any = None  # the running IdentityProviders

    def browser(self) -> Browser:
        return Browser(self)


def make_idp(name: str, stepguard_url: str, *, honour_acr: bool = True,
             honour_acrs: bool = True) -> tuple[DemoIdp, ThreadServer]:
    port = free_port()
    idp = DemoIdp(f"http://127.0.0.1:{port}", honour_acr=honour_acr, honour_acrs=honour_acrs)
    idp.add_client(Client(CLIENT_ID, CLIENT_SECRET, [f"{stepguard_url}/oidc/{name}/callback"],
                          [f"{stepguard_url}/login"],
                          f"{stepguard_url}/oidc/{name}/backchannel-logout"))
    idp.add_user(User("sub-alice", "alice", "alice@example.com", "Alice Idp",
                      ["staff", "engineering"]))
    idp.add_user(User("sub-bob", "bob", "bob@example.com", "Bob Idp", ["contractors"]))
    return idp, ThreadServer(idp.app, port).start()


@contextmanager
def serve_site(folder: Path, providers: dict[str, dict[str, object]],
               *, oidc_extra: str = "") -> Iterator[Site]:
    """Start one provider per entry ({"honour_acr": bool, "honour_acrs": bool, "config": extra
    yaml}) and
    Stepguard configured with all of them."""
    port = free_port()
    url = f"http://localhost:{port}"
    idps, servers = {}, []
    for name, options in providers.items():
        idp, server = make_idp(name, url, honour_acr=bool(options.get("honour_acr", True)),
                               honour_acrs=bool(options.get("honour_acrs", True)))
        idps[name] = idp
        servers.append(server)
    entries = "".join(provider_config(name, idps[name], extra=str(options.get("config", "")))
                      for name, options in providers.items())
    config = write_config(folder, public_url=url, policy=POLICY,
                          extra=f"oidc:\n{oidc_extra}  providers:\n{entries}")
    runtime = build_runtime(load_config(config), clock=time.time)
    app = create_app(runtime)
    server = ThreadServer(app, port, lifespan="on").start()
    try:
        yield Site(url, runtime, idps, app.state.identity_providers)
    finally:
        server.stop()
        for s in servers:
            s.stop()


class Browser:
    """A browser without JavaScript: one cookie jar, redirects followed one by one."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.http = httpx.Client(follow_redirects=False, timeout=10)

    def get(self, url: str, **kwargs: object) -> httpx.Response:
        return self.http.get(self._absolute(url), **kwargs)  # type: ignore[arg-type]

    def post(self, url: str, data: dict[str, str], *, origin: str | None = None) -> httpx.Response:
        target = self._absolute(url)
        parts = urlsplit(target)
        headers = {"Origin": origin or f"{parts.scheme}://{parts.netloc}"}
        return self.http.post(target, data=data, headers=headers)

    def csrf(self, page: httpx.Response) -> str:
        found = _CSRF.search(page.text)
        assert found, page.text[:500]
        return found.group(1)

    def start_login(self, provider: str, rd: str = "/account") -> httpx.Response:
        """Press the provider's button on the sign-in page: the redirect to the provider."""
        page = self.get(f"/login?rd={rd}")
        return self.post(f"/oidc/{provider}/start?rd={rd}", {"csrf_token": self.csrf(page)})

    def at_provider(self, redirect: httpx.Response, *, user: str = "alice",
                    method: str = "pwd") -> httpx.Response:
        """Follow Stepguard's redirect to the provider and sign in there if it asks: the
        provider's redirect back to Stepguard (the callback URL), or its error page."""
        assert redirect.status_code in (302, 303), redirect.text[:500]
        answer = self.get(redirect.headers["location"])
        if answer.status_code == 200 and "rid" in answer.text:
            rid = _RID.search(answer.text)
            assert rid
            idp = urlsplit(redirect.headers["location"])
            answer = self.post(f"{idp.scheme}://{idp.netloc}/login",
                               {"rid": rid.group(1), "username": user, "method": method})
        return answer

    def sign_in(self, provider: str = "corp", *, user: str = "alice", method: str = "pwd",
                rd: str = "/account") -> httpx.Response:
        """The whole sign-in: Stepguard's answer to the callback."""
        back = self.at_provider(self.start_login(provider, rd), user=user, method=method)
        assert back.status_code == 302, back.text[:500]
        return self.get(back.headers["location"])

    def step_up_at_provider(self, challenge_url: str, *, method: str = "mfa",
                            user: str = "alice") -> httpx.Response:
        page = self.get(challenge_url)
        assert page.status_code == 200, page.text[:500]
        start = self.post(f"{challenge_url}/idp", {"csrf_token": self.csrf(page)})
        back = self.at_provider(start, user=user, method=method)
        assert back.status_code == 302, back.text[:500]
        return self.get(back.headers["location"])

    def _absolute(self, url: str) -> str:
        return url if url.startswith("http") else self.site.url + url


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def forward_auth(browser: Browser, path: str, method: str = "GET") -> httpx.Response:
    """Ask Stepguard about a request to app.test, as Caddy's forward_auth does."""
    return browser.get("/api/authz/forward-auth", headers={
        "X-Forwarded-Method": method, "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.test", "X-Forwarded-Uri": path,
        "Accept": "text/html"})
