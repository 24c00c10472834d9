"""adapters/http_context, read the way a door reads a request: raw headers, the client address
behind trusted proxies (remembered answers included), the context's fields, bodies and the
attributes routes take from them. Pure and fast: `make mutate` runs these first."""

from __future__ import annotations

import pytest

from stepguard.adapters.http_context import (
    Body,
    RequestHeaders,
    TrustedProxies,
    build_context,
    effective_method,
    read_body,
    route_attributes,
)
from stepguard.core.errors import BadRequest

NOT_ADDRESSES = "X-Forwarded-For from a trusted proxy is not a list of addresses"


def headers(*pairs: tuple[str, str]) -> RequestHeaders:
    return RequestHeaders((k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs)


# ----------------------------------------------------------------------------- raw headers


def test_raw_headers_are_latin_1_and_the_first_value_wins() -> None:
    raw = [(b"user-agent", b"caf\xe9"), (b"x-a", b"1"), (b"x-a", b"2")]
    view = RequestHeaders(raw)
    assert view.get("user-agent") == "café"
    assert view.get("x-a") == "1"
    assert view.getlist("x-a") == ["1", "2"]
    assert view.items() == [("user-agent", "café"), ("x-a", "1"), ("x-a", "2")]
    assert view.get("missing") is None and view.get("missing", "d") == "d"


def test_header_names_decode_as_latin_1_too() -> None:
    assert RequestHeaders([(b"x-\xe9", b"v")]).items() == [("x-é", "v")]


def test_a_header_is_in_the_view_only_when_sent() -> None:
    view = headers(("authorization", "Bearer x"))
    assert "authorization" in view
    assert "cookie" not in view


# ----------------------------------------------------------------------------- trusted proxies


def test_networks_with_host_bits_are_taken_as_their_network() -> None:
    proxies = TrustedProxies.parse(["10.1.2.3/8", "2001:db8::1/32"])
    assert proxies.trusts("10.200.0.1")
    assert proxies.trusts("2001:db8:ffff::9")
    assert not proxies.trusts("11.0.0.1")


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_remembered_answers_are_the_answers(rounds: int) -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    for _ in range(rounds):
        assert proxies.trusts("10.0.0.1") is True
        assert proxies.trusts("192.0.2.1") is False
        assert proxies.client_ip("10.0.0.1", "203.0.113.7, 10.0.0.2") == "203.0.113.7"
        assert proxies.client_ip("10.0.0.1", "198.51.100.1") == "198.51.100.1"
        assert proxies.client_ip("192.0.2.1", "203.0.113.7") == "192.0.2.1"


def test_a_refusal_is_the_same_refusal_every_time() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    for _ in range(3):
        with pytest.raises(BadRequest) as refused:
            proxies.client_ip("10.0.0.1", "203.0.113.7, not-an-ip")
        assert str(refused.value) == NOT_ADDRESSES


@pytest.mark.parametrize("hop", ["203.0.113.7\x0b", "\x0c203.0.113.7", "203.0.113.7\r"])
def test_only_spaces_and_tabs_are_trimmed_from_a_hop(hop: str) -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    assert proxies.client_ip("10.0.0.1", " \t203.0.113.7\t ") == "203.0.113.7"
    with pytest.raises(BadRequest, match="not a list of addresses"):
        proxies.client_ip("10.0.0.1", hop)


def test_long_values_are_answered_without_being_remembered() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    chain = "203.0.113.7, " + ", ".join(["10.0.0.9"] * 60)  # over 512 characters
    assert len(chain) > 512
    for _ in range(2):
        assert proxies.client_ip("10.0.0.1", chain) == "203.0.113.7"
        with pytest.raises(BadRequest, match="not a list of addresses"):
            proxies.client_ip("10.0.0.1", chain + ", x")


def test_every_hop_trusted_gives_the_peer() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    assert proxies.client_ip("10.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.1"


# ----------------------------------------------------------------------------- the context


def context(**overrides: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {"method": "GET", "scheme": "https", "host": "app.example",
                                 "target": "/x?y=1", "client_ip": "198.51.100.1",
                                 "headers": headers(("user-agent", "UA/1"))}
    values.update(overrides)
    return build_context(**values)  # type: ignore[arg-type]


def test_the_context_carries_what_the_request_said() -> None:
    ctx = context(device_id="dev-1")
    assert (ctx.method, ctx.host, ctx.path, ctx.query) == ("GET", "app.example", "/x", "y=1")
    assert (ctx.scheme, ctx.client_ip, ctx.user_agent, ctx.device_id) == (
        "https", "198.51.100.1", "UA/1", "dev-1")


@pytest.mark.parametrize(("scheme", "expected"), [("https", "https"), ("http", "http"),
                                                  ("HTTPS", "http"), ("ftp", "http"),
                                                  ("", "http")])
def test_the_scheme_is_https_only_when_it_is_exactly_https(scheme: str, expected: str) -> None:
    assert context(scheme=scheme).scheme == expected


def test_no_device_and_no_user_agent_are_empty() -> None:
    ctx = context(headers=headers())
    assert ctx.device_id == "" and ctx.user_agent == ""


def test_the_user_agent_is_cut_at_512_characters() -> None:
    assert context(headers=headers(("user-agent", "a" * 600))).user_agent == "a" * 512
    assert context(headers=headers(("User-Agent", "b"))).user_agent == ""  # names are lower-case


def test_an_empty_target_is_the_root() -> None:
    ctx = context(target="")
    assert (ctx.path, ctx.query) == ("/", "")


def test_overrides_are_refused_unless_honoured() -> None:
    sent = headers(("x-http-method-override", "DELETE"))
    with pytest.raises(BadRequest, match="method overrides"):
        context(method="POST", headers=sent)
    assert context(method="POST", headers=sent, honour_overrides=True).method == "DELETE"
    body = Body([("_method", "PUT")])
    assert context(method="POST", headers=headers(), body=body,
                   honour_overrides=True).method == "PUT"
    with pytest.raises(BadRequest, match="method overrides"):
        context(method="POST", headers=headers(), body=body)


def test_an_ambiguous_override_says_so() -> None:
    with pytest.raises(BadRequest) as refused:
        effective_method("GET", headers=[("x-http-method", "DELETE")], query="", body=None,
                         honour=True)
    assert str(refused.value) == "ambiguous method override: give one, on a POST"


# ----------------------------------------------------------------------------- bodies


def test_a_form_body_with_bad_utf_8_is_read_with_replacements() -> None:
    body = read_body(b"name=caf%C3%A9&x=\xff", "Application/X-WWW-Form-Urlencoded; charset=x")
    assert body.fields == [("name", "café"), ("x", "\ufffd")]
    assert body.form == body.fields


@pytest.mark.parametrize("media", ["application/json", "application/merge-patch+json",
                                   "Application/JSON; charset=utf-8"])
def test_json_bodies_give_top_level_fields_and_the_document(media: str) -> None:
    body = read_body(b'{"a": "x", "n": 5, "o": {"b": "y"}}', media)
    assert body.fields == [("a", "x"), ("n", ""), ("o", "")]
    assert body.form == []
    assert body.document == {"a": "x", "n": 5, "o": {"b": "y"}}


@pytest.mark.parametrize("text", [b"", b"  \n"])
def test_an_empty_json_body_has_no_document(text: bytes) -> None:
    body = read_body(text, "application/json")
    assert (body.fields, body.form, body.document) == ([], [], None)


def test_a_json_body_that_is_not_an_object_has_no_fields() -> None:
    body = read_body(b'["a", "b"]', "application/json")
    assert (body.fields, body.document) == ([], ["a", "b"])


def test_a_media_type_ending_in_json_without_the_plus_is_not_json() -> None:
    assert read_body(b'{"a": "x"}', "application/notjson") == Body()


def test_multipart_fields_are_named_with_empty_values() -> None:
    part = (b'--X\r\nContent-Disposition: form-data; name="caf\xc3\xa9"\r\n\r\nv\r\n'
            b'--X\r\nContent-Disposition: form-data; name="bad\xff"\r\n\r\nw\r\n--X--\r\n')
    body = read_body(part, "multipart/form-data; boundary=X")
    assert body.fields == [("café", ""), ("bad\ufffd", "")]
    assert body.form == []


# ----------------------------------------------------------------------------- route attributes


def test_attributes_from_query_form_and_nested_json() -> None:
    form = read_body(b"amount=100", "application/x-www-form-urlencoded")
    assert route_attributes({"a": "form:amount", "p": "query:payee"}, "payee=bob", form) == {
        "a": "100", "p": "bob"}
    doc = read_body(b'{"transfer": {"amount": 5000}, "to": "x"}', "application/json")
    assert route_attributes({"a": "json:transfer.amount", "t": "json:to", "m": "json:no.pe"},
                            "", doc) == {"a": 5000, "t": "x"}


def test_a_json_attribute_also_given_in_the_query_is_refused() -> None:
    doc = read_body(b'{"transfer": {"amount": 5000}}', "application/json")
    with pytest.raises(BadRequest, match="more than once"):
        route_attributes({"a": "json:transfer.amount"}, "transfer=1", doc)


def test_a_json_attribute_is_not_read_from_the_form() -> None:
    form = read_body(b"amount=100", "application/x-www-form-urlencoded")
    assert route_attributes({"a": "json:amount"}, "", form) == {}


def test_a_field_name_may_hold_a_colon() -> None:
    assert route_attributes({"x": "query:ns:id"}, "ns:id=5", Body()) == {"x": "5"}


@pytest.mark.parametrize(("pairs", "html"), [
    ((("accept", "text/html"),), True),
    ((("accept", "text/html"), ("x-requested-with", "XMLHttpRequest")), False),
    ((("accept", "text/html"), ("authorization", "Bearer abc")), False),
    ((("accept", "text/html"), ("authorization", "Basic abc")), True),
    ((), False),
])
def test_browser_or_api_from_raw_headers(pairs: tuple[tuple[str, str], ...], html: bool) -> None:
    from stepguard.adapters.http_context import wants_html

    assert wants_html(headers(*pairs)) is html
