"""Web security helpers: headers and their middleware, CSRF tokens, cookies, return URLs."""

from __future__ import annotations

import asyncio
import base64
import string
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from stepguard.core.errors import CsrfRejected, StepguardError
from stepguard.web.security import (
    CONTENT_SECURITY_POLICY,
    DomainEntry,
    SecurityHeadersMiddleware,
    check_csrf,
    cookie_attributes,
    csrf_token,
    is_exempt_path,
    parse_domain_entry,
    safe_return_url,
    security_headers,
)

KEY = b"k" * 32
OTHER_KEY = b"q" * 32
BINDING = "session-7f3a"
PORTAL = "https://portal.example.com"
ALLOWED_ORIGINS = [PORTAL, "http://localhost:9091"]
DOMAINS = [
    "app.example.com",
    "*.corp.example.org",
    "pinned.example.net:8443",
    "xn--bcher-kva.example",
]
DEFAULT = "/account"


# --- headers ---------------------------------------------------------------------------------


def test_security_headers_over_http() -> None:
    headers = dict(security_headers(https=False))
    assert headers == {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }


def test_security_headers_over_https_add_hsts_of_a_year() -> None:
    headers = dict(security_headers(https=True))
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/api/authz/forward-auth", True),
        ("/api/authz/auth-request", True),
        ("/api/authz", True),
        ("/metrics", True),
        ("/healthz", True),
        ("/readyz", True),
        ("/login", False),
        ("/step-up/abc", False),
        ("/api/authzz", False),
        ("/metricsx", False),
        ("/api/v1/decide", False),
        ("/", False),
    ],
)
def test_exempt_paths(path: str, exempt: bool) -> None:
    assert is_exempt_path(path) is exempt


def _app(*, https: bool) -> TestClient:
    async def page(request: Request) -> Response:
        return HTMLResponse("<h1>portal</h1>")

    async def cached(request: Request) -> Response:
        return PlainTextResponse("x", headers={"Cache-Control": "max-age=60"})

    async def bare(request: Request) -> Response:
        return Response(status_code=200)

    routes = [
        Route("/login", page),
        Route("/static/x.css", cached),
        Route("/api/authz/forward-auth", bare),
        Route("/metrics", bare),
        Route("/healthz", bare),
        Route("/readyz", bare),
    ]
    return TestClient(SecurityHeadersMiddleware(Starlette(routes=routes), https=https))


@pytest.mark.parametrize("https", [False, True])
def test_middleware_adds_headers_to_portal_pages(https: bool) -> None:
    response = _app(https=https).get("/login")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert ("strict-transport-security" in response.headers) is https


def test_middleware_adds_headers_to_not_found_pages_too() -> None:
    response = _app(https=False).get("/nowhere")
    assert response.status_code == 404
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/api/authz/forward-auth", "/metrics", "/healthz", "/readyz"])
def test_middleware_leaves_forward_auth_and_probes_minimal(path: str) -> None:
    response = _app(https=True).get(path)
    assert response.status_code == 200
    for name, _ in security_headers(https=True):
        assert name.lower() not in response.headers


def test_middleware_keeps_a_header_the_route_set() -> None:
    response = _app(https=False).get("/static/x.css")
    assert response.headers.get_list("cache-control") == ["max-age=60"]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_middleware_passes_other_scopes_through() -> None:
    seen: list[str] = []

    async def inner(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append(scope["type"])
        await send({"type": "lifespan.startup.complete"})

    sent: list[dict] = []

    async def send(message) -> None:  # type: ignore[no-untyped-def]
        sent.append(message)

    async def receive() -> dict:
        return {"type": "lifespan.startup"}

    middleware = SecurityHeadersMiddleware(inner, https=True)
    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]
    assert sent == [{"type": "lifespan.startup.complete"}]


# --- CSRF ------------------------------------------------------------------------------------


def _check(**overrides: object) -> None:
    arguments: dict[str, object] = {
        "key": KEY,
        "session_binding": BINDING,
        "token": csrf_token(key=KEY, session_binding=BINDING),
        "origin": None,
        "referer": None,
        "allowed_origins": ALLOWED_ORIGINS,
    }
    arguments.update(overrides)
    check_csrf(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("origin", "referer"),
    [
        (None, None),
        ("", ""),
        (PORTAL, None),
        ("https://PORTAL.example.com", None),
        ("https://portal.example.com:443", None),
        ("http://localhost:9091", None),
        (None, PORTAL + "/step-up/abc?x=1"),
        (PORTAL, "https://evil.com/"),  # Origin decides when present
    ],
)
def test_csrf_accepts_valid_token_from_allowed_origin(
    origin: str | None, referer: str | None
) -> None:
    _check(origin=origin, referer=referer)


@pytest.mark.parametrize(
    ("origin", "referer"),
    [
        ("https://evil.com", None),
        ("null", None),
        ("NULL", None),
        ("http://portal.example.com", None),  # scheme differs
        ("https://portal.example.com:8443", None),  # port differs
        ("https://portal.example.com.evil.com", None),
        ("https://sub.portal.example.com", None),
        ("http://localhost", None),
        ("garbage", None),
        ("https://evil.com", PORTAL + "/"),  # a good Referer does not rescue a bad Origin
        (None, "https://evil.com/page"),
        (None, "https://portal.example.com@evil.com/"),
        (None, "http://portal.example.com/"),
        (None, "about:blank"),
    ],
)
def test_csrf_refuses_foreign_origins(origin: str | None, referer: str | None) -> None:
    with pytest.raises(CsrfRejected):
        _check(origin=origin, referer=referer)


def test_csrf_with_no_allowed_origin_refuses_every_origin() -> None:
    with pytest.raises(CsrfRejected):
        _check(origin=PORTAL, allowed_origins=[])


@pytest.mark.parametrize("token", [None, "", "abc", "A" * 64, "A" * 63 + "=", "!" * 64, "A" * 200])
def test_csrf_refuses_missing_or_malformed_token(token: str | None) -> None:
    with pytest.raises(CsrfRejected):
        _check(token=token, origin=PORTAL)


def test_csrf_refuses_token_of_another_session() -> None:
    token = csrf_token(key=KEY, session_binding="another-session")
    with pytest.raises(CsrfRejected, match="not valid for this session"):
        _check(token=token, origin=PORTAL)


def test_csrf_refuses_token_signed_with_another_key() -> None:
    with pytest.raises(CsrfRejected):
        _check(token=csrf_token(key=OTHER_KEY, session_binding=BINDING))


def test_csrf_refuses_every_single_character_change() -> None:
    token = csrf_token(key=KEY, session_binding=BINDING)
    for index in range(len(token)):
        replacement = "A" if token[index] != "A" else "B"
        tampered = token[:index] + replacement + token[index + 1 :]
        with pytest.raises(CsrfRejected):
            _check(token=tampered)


def test_csrf_refuses_a_check_without_session_binding() -> None:
    with pytest.raises(CsrfRejected):
        _check(session_binding="")


def test_csrf_tokens_are_fresh_and_all_valid() -> None:
    tokens = {csrf_token(key=KEY, session_binding=BINDING) for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        _check(token=token)


def test_csrf_token_is_base64url_and_does_not_reveal_the_binding() -> None:
    token = csrf_token(key=KEY, session_binding=BINDING)
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) == 48
    assert BINDING.encode() not in raw and BINDING not in token


def test_csrf_needs_a_real_key_and_binding() -> None:
    with pytest.raises(ValueError):
        csrf_token(key=b"short", session_binding=BINDING)
    with pytest.raises(ValueError):
        csrf_token(key=KEY, session_binding="")
    with pytest.raises(ValueError):
        _check(key=b"short")


def test_csrf_rejection_is_a_stepguard_error_without_the_token() -> None:
    token = csrf_token(key=KEY, session_binding="other")
    with pytest.raises(CsrfRejected) as caught:
        _check(token=token)
    assert isinstance(caught.value, StepguardError)
    assert token not in str(caught.value) and BINDING not in str(caught.value)
    assert caught.value.reason


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_csrf_never_accepts_a_forged_token(token: str) -> None:
    with pytest.raises(CsrfRejected):
        _check(token=token)


# --- cookies ---------------------------------------------------------------------------------


def test_cookie_on_https_without_domain_uses_host_prefix() -> None:
    name, attributes = cookie_attributes(name="stepguard_session", https=True)
    assert name == "__Host-stepguard_session"
    assert attributes == {"httponly": True, "secure": True, "samesite": "lax", "path": "/"}


@pytest.mark.parametrize("domain", ["example.com", ".Example.com"])  # a leading dot is kept
def test_cookie_on_https_with_domain_uses_secure_prefix(domain: str) -> None:
    name, attributes = cookie_attributes(name="sg", https=True, domain=domain)
    assert name == "__Secure-sg"
    assert attributes == {
        "httponly": True,
        "secure": True,
        "samesite": "lax",
        "path": "/",
        "domain": domain,
    }


@pytest.mark.parametrize("domain", ["", "localhost"])
def test_cookie_over_http_has_no_prefix_and_is_not_secure(domain: str) -> None:
    name, attributes = cookie_attributes(name="sg", https=False, domain=domain)
    assert name == "sg"
    assert attributes["secure"] is False and attributes["httponly"] is True
    assert attributes.get("domain", "") == domain


@pytest.mark.parametrize("name", ["", "__Host-sg", "__secure-sg", "a b", "a;b", "a=b"])
def test_cookie_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        cookie_attributes(name=name, https=True)


@pytest.mark.parametrize("domain", ["evil.com; path=/", "exa mple.com", "a/b"])
def test_cookie_refuses_bad_domains(domain: str) -> None:
    with pytest.raises(ValueError):
        cookie_attributes(name="sg", https=True, domain=domain)


def test_cookie_attributes_fit_starlettes_set_cookie() -> None:
    name, attributes = cookie_attributes(name="sg", https=True)
    response = Response()
    response.set_cookie(name, "value", **attributes)
    header = response.headers["set-cookie"]
    assert header.startswith("__Host-sg=value;")
    for part in ("HttpOnly", "Path=/", "SameSite=lax", "Secure"):
        assert part in header
    assert "Domain" not in header


# --- return URLs: domain entries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("app.example.com", DomainEntry("app.example.com")),
        (" App.Example.COM ", DomainEntry("app.example.com")),
        ("*.example.com", DomainEntry("example.com", wildcard=True)),
        ("app.example.com:8443", DomainEntry("app.example.com", port=8443)),
        ("*.example.com:8443", DomainEntry("example.com", wildcard=True, port=8443)),
        ("localhost", DomainEntry("localhost")),
    ],
)
def test_parse_domain_entry(entry: str, parsed: DomainEntry) -> None:
    assert parse_domain_entry(entry) == parsed


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "*",
        "*.com",
        "https://app.example.com",
        "app.example.com/path",
        "app.example.com:0",
        "app.example.com:70000",
        "-app.example.com",
        "app..example.com",
        "app.example.com.",
        "bücher.example",
        "user@app.example.com",
        "*app.example.com",
    ],
)
def test_parse_domain_entry_refuses(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_domain_entry(entry)


# --- return URLs: the SECURITY.md case 4 matrix ---------------------------------------------

ACCEPTED = [
    "/",
    "/account",
    "/a/b?x=1&y=2#frag",
    "/path%20with%20space",
    "/files/a%2Fb",
    "/transfer?rd=https://evil.com",
    "https://app.example.com/",
    "https://app.example.com",
    "http://app.example.com/x",
    "HTTPS://APP.EXAMPLE.COM/x",
    "https://app.example.com:8080/x",
    "https://app.example.com/?next=https://evil.com",
    "https://app.example.com/a%40b",
    "https://corp.example.org/",
    "https://a.corp.example.org/x",
    "https://b.a.corp.example.org",
    "https://pinned.example.net:8443/x",
    "https://xn--bcher-kva.example/",
]

REFUSED = [
    # not a same-site path or absolute URL
    "",
    "evil.com",
    "relative/path",
    "?x=1",
    "#top",
    # other hosts and lookalike hosts
    "https://evil.com/",
    "http://evil.com",
    "https://app.example.com.evil.com/",
    "https://evilapp.example.com/",
    "https://sub.app.example.com/",
    "https://evilcorp.example.org/",
    "https://example.com/",
    "https://127.0.0.1/",
    "https://[::1]/",
    "https://app.example.com./",
    # scheme-relative and backslash tricks
    "//evil.com",
    "///evil.com",
    "////evil.com",
    "/\\evil.com",
    "\\\\evil.com",
    "/\\/evil.com",
    "\\/evil.com",
    "https:\\\\evil.com",
    "http:/\\evil.com",
    "https:/evil.com",
    "https:evil.com",
    "https:app.example.com",
    "https:///evil.com",
    "https://",
    # other schemes
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "javascript://app.example.com/%0Aalert(1)",
    "javascript://%0Aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://app.example.com/",
    "ws://app.example.com/",
    # tabs, newlines and control characters, raw and inside the scheme
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java\rscript:alert(1)",
    "\thttps://app.example.com/",
    "https://app.example.com/\r\nSet-Cookie:x=1",
    "ht\ttps://evil.com",
    "/\t/evil.com",
    "/ /evil.com",
    "/\x00",
    "/\x7f",
    "https://app.example.com/\x00",
    # userinfo
    "https://user@app.example.com/",
    "https://user:pass@app.example.com/",
    "https://app.example.com@evil.com/",
    "https://app.example.com:443@evil.com/",
    "https://evil.com\\@app.example.com/",
    "https://app.example.com%40evil.com/",
    # fragment, query and path confusion
    "https://evil.com#@app.example.com",
    "https://evil.com?@app.example.com",
    "https://evil.com/@app.example.com",
    "https://evil.com/.app.example.com",
    # percent-encoded variants
    "/%2f%2fevil.com",
    "/%2F%2Fevil.com",
    "/%2F/evil.com",
    "/%5cevil.com",
    "/%5Cevil.com",
    "/%5C/evil.com",
    "%2f%2fevil.com",
    "%2F%2Fevil.com",
    "/%09/evil.com",
    "/%0d%0aLocation:%20https://evil.com",
    "/%00",
    "https://app.example.com%2f@evil.com",
    "https://app.example.com%2eevil.com/",
    "https%3A%2F%2Fevil.com",
    "https://app.example.com/%0d%0aSet-Cookie:x=1",
    "javascript%3Aalert(1)",
    # IDN and Unicode lookalikes
    "https://\u0430pp.example.com/",  # Cyrillic a
    "https://app.ex\u0430mple.com/",
    "https://app.example.com\u3002evil.com/",  # ideographic full stop
    "https://\uff41pp.example.com/",  # fullwidth a
    "https://app.example.com\u2215evil.com/",  # division slash
    "/\u2215\u2215evil.com",
    "https://b\u00fccher.example/",
    # ports
    "https://pinned.example.net/",
    "https://pinned.example.net:9443/",
    "https://app.example.com:99999/",
    "https://app.example.com:abc/",
    "https://app.example.com:-1/",
    # size
    "/" + "a" * 5000,
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_safe_return_url_accepts(url: str) -> None:
    assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == url


@pytest.mark.parametrize("url", REFUSED)
def test_safe_return_url_refuses(url: str) -> None:
    assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == DEFAULT


def test_safe_return_url_with_none_gives_default() -> None:
    assert safe_return_url(None, protected_domains=DOMAINS, default="/home") == "/home"


def test_invalid_domain_entries_match_nothing() -> None:
    entries = ["*", "*.com", "https://app.example.com", "", "app.example.com/path"]
    for url in ("https://app.example.com/", "https://evil.com/", "https://x.com/"):
        assert safe_return_url(url, protected_domains=entries, default=DEFAULT) == DEFAULT
    assert safe_return_url("/ok", protected_domains=entries, default=DEFAULT) == "/ok"


def test_no_protected_domains_allows_only_paths() -> None:
    assert (
        safe_return_url("https://app.example.com/", protected_domains=[], default=DEFAULT)
        == DEFAULT
    )
    assert safe_return_url("/x", protected_domains=[], default=DEFAULT) == "/x"


def _allowed_host(host: str) -> bool:
    return (
        host in {"app.example.com", "pinned.example.net", "xn--bcher-kva.example"}
        or host == "corp.example.org"
        or host.endswith(".corp.example.org")
    )


def _lands_safely(result: str) -> bool:
    """Where a browser following `Location: result` from the portal would go."""
    if result.startswith("/"):
        decoded = unquote(result)
        return not result.startswith("//") and "\\" not in decoded and not decoded.startswith("//")
    target = urlsplit(urljoin("https://portal.example.com/here", result))
    return target.scheme in {"http", "https"} and _allowed_host(target.hostname or "")


URL_ALPHABET = st.sampled_from(
    list(string.ascii_letters + string.digits + "/\\:@.%?#&=-_~ \t\n\r\x00")
    + [
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%40",
        "%09",
        "%0a",
        "//",
        "/\\",
        "javascript:",
        "data:",
        "https://",
        "http://",
        "app.example.com",
        "evil.com",
        "corp.example.org",
        "\u0430",
        "\u3002",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(URL_ALPHABET, max_size=14).map("".join))
def test_safe_return_url_never_leaves_the_protected_domains(url: str) -> None:
    result = safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT)
    assert result in (url, DEFAULT)
    assert _lands_safely(result)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/", max_size=40))
def test_safe_return_url_keeps_plain_paths(path: str) -> None:
    url = "/" + path.lstrip("/")
    assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == url


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(LABEL, min_size=1, max_size=3), st.sampled_from(["http", "https"]))
def test_safe_return_url_accepts_any_subdomain_of_a_wildcard(
    labels: list[str], scheme: str
) -> None:
    url = f"{scheme}://{'.'.join(labels)}.corp.example.org/x"
    assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == url


@settings(max_examples=200, deadline=None)
@given(st.lists(LABEL, min_size=1, max_size=4))
def test_safe_return_url_refuses_other_hosts(labels: list[str]) -> None:
    host = ".".join(labels)
    if _allowed_host(host):
        return
    for url in (
        f"https://{host}/",
        f"https://{host}/app.example.com",
        f"//{host}",
        f"/\\{host}",
        f"https://app.example.com@{host}/",
        f"https://{host}#@app.example.com",
    ):
        assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == DEFAULT


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_safe_return_url_refuses_dangerous_prefixes(rest: str) -> None:
    for prefix in ("//", "/\\", "javascript:", "data:", "/%2f/", "\\"):
        assert safe_return_url(prefix + rest, protected_domains=DOMAINS, default=DEFAULT) == DEFAULT


@pytest.mark.parametrize("origin", ["https://portal.example.com:99999",  # no such port
                                    "https://portal.example.com:https",
                                    "http://[::1", "https://"])
def test_an_origin_that_is_no_url_origin_is_refused(origin: str) -> None:
    with pytest.raises(CsrfRejected, match="another origin"):
        _check(origin=origin)
    with pytest.raises(CsrfRejected, match="referred by another origin"):
        _check(referer=origin + "/page")


def test_a_csrf_token_of_the_right_shape_but_another_session_is_refused() -> None:
    with pytest.raises(CsrfRejected, match="not valid for this session"):
        _check(token="A" * 64)
    with pytest.raises(CsrfRejected, match="malformed"):
        _check(token="A" * 63 + "=")
