"""adapters/http_context: identity headers, absolute URLs, browser or API (which client address
to believe: tests/unit/test_trusted_proxies.py and tests/integration/test_enforcement.py)."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from stepguard.adapters.http_context import (
    is_identity_header,
    read_body,
    split_url,
    wants_html,
)
from stepguard.core.errors import BadRequest


@pytest.mark.parametrize("name", ["Remote-User", "REMOTE_USER", "remote_groups", "Stepguard-Acr"])
def test_identity_headers_in_any_spelling(name: str) -> None:
    assert is_identity_header(name)
    assert not is_identity_header("X-Remote-User")


def test_split_url() -> None:
    assert split_url("https://app.test:8443/a/b?x=1") == ("https", "app.test:8443", "/a/b?x=1")
    assert split_url("http://app.test") == ("http", "app.test", "/")


@pytest.mark.parametrize("url", ["/relative", "ftp://app.test/", "https://u:p@app.test/",
                                 "https:///nohost", "javascript:alert(1)"])
def test_split_url_refuses_what_is_not_a_plain_absolute_http_url(url: str) -> None:
    with pytest.raises(BadRequest):
        split_url(url)


@pytest.mark.parametrize(("headers", "html"), [
    ({"accept": "text/html,application/xhtml+xml"}, True),
    ({"accept": "application/json"}, False),
    ({}, False),
    ({"accept": "text/html", "x-requested-with": "XMLHttpRequest"}, False),
    ({"accept": "text/html", "authorization": "Bearer abc"}, False),
    ({"accept": "text/html", "authorization": "Basic abc"}, True),
])
def test_wants_html(headers: dict[str, str], html: bool) -> None:
    assert wants_html(Headers(headers)) is html


@pytest.mark.parametrize("media", ["text/plain", "application/octet-stream", ""])
def test_a_body_of_another_media_type_has_no_fields(media: str) -> None:
    """Form-looking bytes sent as text/plain are not read as fields (no framework reads them
    so), so a rule's attribute cannot be fed through them."""
    body = read_body(b"amount=1&payee=bob", media)
    assert (body.fields, body.form, body.document) == ([], [], None)
