"""web/security rules that only the slow HTTP tests held before: the header middleware hands
the request body on (portal pages and exempt paths alike), a return URL may be exactly the
length limit, and the percent-encoded control range is exactly DEL and C1 (U+007F–U+009F).
Found by `make mutate` on `web/security.py`."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from stepguard.web.security import SecurityHeadersMiddleware, safe_return_url

DOMAINS = ["app.example.com"]
DEFAULT = "/account"


def _body_seen_by_app(path: str) -> bytes:
    """The request body the app behind the middleware reads for a POST to `path`."""
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"amount=5000", "more_body": False}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(SecurityHeadersMiddleware(app, https=True)(scope, receive, send))
    return b"".join(seen)


@pytest.mark.parametrize("path", ["/login", "/api/authz/forward-auth"])
def test_the_header_middleware_hands_the_request_body_to_the_app(path: str) -> None:
    assert _body_seen_by_app(path) == b"amount=5000"


def test_a_return_url_of_exactly_the_length_limit_is_kept_and_one_longer_refused() -> None:
    at_limit = "/" + "a" * 4095
    assert safe_return_url(at_limit, protected_domains=DOMAINS, default=DEFAULT) == at_limit
    longer = at_limit + "a"
    assert safe_return_url(longer, protected_domains=DOMAINS, default=DEFAULT) == DEFAULT


@pytest.mark.parametrize("encoded", ["%7F", "%C2%80", "%C2%9F"])
def test_a_percent_encoded_del_or_c1_control_is_refused(encoded: str) -> None:
    for url in (f"/a{encoded}b", f"https://app.example.com/a{encoded}b"):
        assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == DEFAULT


@pytest.mark.parametrize("encoded", ["%7E", "%C2%A0", "%C3%A9"])
def test_the_percent_encoded_characters_around_the_control_range_are_kept(encoded: str) -> None:
    """`~` (just below DEL), the no-break space (just above C1) and `é` are no control
    characters: a path holding them percent-encoded is a same-site path."""
    url = f"/caf{encoded}"
    assert safe_return_url(url, protected_domains=DOMAINS, default=DEFAULT) == url
