"""Issue 9 items 2, 6, 7 and 12 through every door in process: forward-auth (Caddy and nginx
strategies), the reverse proxy, the ASGI middleware and its dependency, the decision API.

Where Stepguard and another parser read the same input (a `#` or raw bytes in the target, a
method override, a field given twice), Stepguard either reads it as the upstream will or refuses
it; and no client input gives a 5xx. Raw targets go through the ASGI app directly (`asgi_call`),
as a server that keeps them (h11, granian) hands them over — an HTTP client would drop a `#`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from stepguard.asgi import (
    StepguardMiddleware,
    StepguardState,
    from_form,
    from_json,
    from_query,
    require_step_up,
    step_up_exception_handler,
)
from stepguard.asgi.dependency import StepUpRequired
from stepguard.service.api_keys import ApiKeys
from stepguard.service.runtime import Runtime
from tests.integration.test_asgi_middleware import starlette_app
from tests.integration.test_decision_api import Env, gateway_app, open_session
from tests.integration.test_reverse_proxy import upstream  # noqa: F401 - a fixture
from tests.support.gateway import Clock, make_runtime, seed_user

POLICY = """\
attributes: {amount: number, payee: string}
rules:
  - name: public
    match: {paths: ["/public/**"]}
    allow: true
  - name: delete-items
    match: {methods: [DELETE], paths: ["/items/**"]}
    require: {level: aal2, max_age: 1h, reason: "Deleting an item"}
  - name: vault
    match: {paths: ["/vault/**"]}
    require: {level: aal2, max_age: 1h, reason: "Opening the vault"}
  - name: large-transfer
    match: {paths: ["/transfers", "/api/transfers", "/q/transfers"]}
    when: "amount > 1000"
    require: {level: aal2, max_age: 0s, single_use: true, bind: [amount, payee],
              reason: "Approve a transfer of {amount} to {payee}"}
  - name: large-transfer-action
    match: {actions: [payments.transfer]}
    when: "amount > 1000"
    require: {level: aal2, max_age: 0s, single_use: true, bind: [amount, payee],
              reason: "Approve a transfer of {amount} to {payee}"}
default: {level: aal1}
"""
PEER = ("127.0.0.1", 50000)
HTML = {"Accept": "text/html"}


def make(folder: Path, *, honour: bool = False, upstream_url: str | None = None) -> Env:
    extra = ""
    if upstream_url:
        extra = f"""upstreams:
  - host: "*"
    url: "{upstream_url}"
    routes:
      - paths: ["/transfers"]
        attributes: {{amount: "form:amount", payee: "form:payee"}}
      - paths: ["/api/transfers"]
        attributes: {{amount: "json:transfer.amount", payee: "json:transfer.payee"}}
      - paths: ["/q/transfers"]
        attributes: {{amount: "query:amount", payee: "query:payee"}}
"""
    clock = Clock()
    runtime = make_runtime(folder, clock=clock, policy=POLICY, extra=extra)
    if honour:
        runtime = _with_override(runtime, folder, clock)
    alice = seed_user(runtime)
    return Env(runtime, clock, alice, ApiKeys(runtime).create("test").key)


def _with_override(runtime: Runtime, folder: Path, clock: Clock) -> Runtime:
    """The same config with `server.method_override: honour`."""
    runtime.close()
    config = folder / "stepguard.yaml"
    text = config.read_text().replace("trusted_proxies: [127.0.0.1/32]",
                                      "trusted_proxies: [127.0.0.1/32], method_override: honour")
    config.write_text(text)
    from stepguard.config.load import load_config
    from stepguard.service.runtime import build_runtime

    return build_runtime(load_config(config), clock=clock)


@dataclass
class Door:
    env: Env
    client: TestClient
    token: str

    def call(self, method: str, raw_path: bytes, *, query: bytes = b"",
             headers: list[tuple[bytes, bytes]] | None = None,
             body: bytes = b"") -> tuple[int, bytes]:
        """One request with its raw target handed to the app as a server that keeps it would."""
        cookie = f"stepguard_session={self.token}".encode()
        given = {name.lower() for name, _ in headers or []}
        defaults = [(b"host", b"app.test"), (b"accept", b"text/html"), (b"cookie", cookie)]
        sent = [*(h for h in defaults if h[0] not in given), *(headers or [])]
        app = self.client.app
        return self.client.portal.call(asgi_call, app, method, raw_path, query, sent, body)


async def asgi_call(app: ASGIApp, method: str, raw_path: bytes, query: bytes,
                    headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "root_path": "",
             "path": raw_path.decode("latin-1"), "raw_path": raw_path, "query_string": query,
             "headers": [(k.lower(), v) for k, v in headers], "client": PEER,
             "server": ("127.0.0.1", 9091), "state": {}}
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[Door]:
    env = make(tmp_path)
    with TestClient(gateway_app(env.runtime), base_url="http://localhost:9091", client=PEER,
                    follow_redirects=False) as client:
        yield Door(env, client, open_session(env)[0])
    env.runtime.close()


def caddy(uri: str | bytes, method: str = "GET", **extra: str | bytes) -> list[tuple[bytes, bytes]]:
    uri = uri.encode("latin-1") if isinstance(uri, str) else uri
    headers = {b"x-forwarded-method": method.encode(), b"x-forwarded-proto": b"https",
               b"x-forwarded-host": b"app.test", b"x-forwarded-uri": uri,
               b"x-forwarded-for": b"203.0.113.7"}
    for name, value in extra.items():
        headers[name.replace("_", "-").lower().encode()] = (
            value.encode("latin-1") if isinstance(value, str) else value)
    return list(headers.items())


def nginx(url: str | bytes, method: str = "GET", **extra: str | bytes) -> list[tuple[bytes, bytes]]:
    url = url.encode("latin-1") if isinstance(url, str) else url
    headers = [(b"x-original-url", url), (b"x-original-method", method.encode()),
               (b"x-forwarded-for", b"203.0.113.7")]
    return headers + [(k.replace("_", "-").lower().encode(),
                       v.encode("latin-1") if isinstance(v, str) else v) for k, v in extra.items()]


FORWARD_AUTH = "/api/authz/forward-auth"
AUTH_REQUEST = "/api/authz/auth-request"


# --- item 2: what routers read differently in a target ---------------------------------------

FRAGMENT_TRICKS = ["/public/x#/../../vault/keys", "/public/x#", "/public#/../vault/keys",
                   "/public/x?a=1#/../../vault"]


@pytest.mark.parametrize("uri", FRAGMENT_TRICKS)
def test_forward_auth_refuses_a_fragment_in_the_original_target(gateway: Door, uri: str) -> None:
    """Go's net/http keeps the `#…` in the path and path.Clean turns it into /vault/keys:
    deciding the shorter /public/x allowed an anonymous request into the vault."""
    caddy_status, _ = gateway.call("GET", FORWARD_AUTH.encode(), headers=caddy(uri))
    nginx_status, _ = gateway.call("GET", AUTH_REQUEST.encode(),
                                   headers=nginx(f"http://app.test{uri}"))
    assert caddy_status == 400
    assert nginx_status == 403  # nginx turns any auth answer but 2xx/401/403 into a 500


@pytest.mark.parametrize("raw", [b"/public/\xff", b"/public/caf\xc3\xa9", b"/public/a b",
                                 b"/public/\x85", b"/public/a\tb"])
def test_forward_auth_refuses_raw_bytes_outside_ascii(gateway: Door, raw: bytes) -> None:
    """Item 12: invalid UTF-8 (and any raw non-ASCII byte) was decoded as latin-1 and allowed."""
    caddy_status, _ = gateway.call("GET", FORWARD_AUTH.encode(), headers=caddy(raw))
    nginx_status, _ = gateway.call("GET", AUTH_REQUEST.encode(),
                                   headers=nginx(b"http://app.test" + raw))
    assert (caddy_status, nginx_status) == (400, 403)


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/x", "http://app.test:99999/x",
                                 "http://a b/x", "http:///x", "https://u@app.test/", "/x", ""])
def test_nginx_malformed_original_url_is_refused_not_a_500(gateway: Door, url: str) -> None:
    status, _ = gateway.call("GET", AUTH_REQUEST.encode(), headers=nginx(url))
    assert status == 403


@pytest.mark.parametrize("host", ["[::1", "a b", "app.test:x", "\xff", "[fe80::1%eth0]"])
def test_caddy_malformed_forwarded_host_is_refused(gateway: Door, host: str) -> None:
    status, _ = gateway.call("GET", FORWARD_AUTH.encode(),
                             headers=caddy("/public/x", x_forwarded_host=host))
    assert status == 400


# --- item 6: method overrides in forward-auth ------------------------------------------------

OVERRIDE_NAMES = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]


@pytest.mark.parametrize("name", OVERRIDE_NAMES)
def test_forward_auth_refuses_an_override_header_by_default(gateway: Door, name: str) -> None:
    """POST + `X-HTTP-Method-Override: DELETE` was judged as POST (allowed at aal1) while Rails,
    Laravel or Express executed a DELETE, which needs aal2."""
    plain, _ = gateway.call("GET", FORWARD_AUTH.encode(), headers=caddy("/items/1", "POST"))
    caddy_status, _ = gateway.call("GET", FORWARD_AUTH.encode(),
                                   headers=caddy("/items/1", "POST", **{name: "DELETE"}))
    nginx_status, _ = gateway.call("GET", AUTH_REQUEST.encode(), headers=nginx(
        "http://app.test/items/1", "POST", **{name: "DELETE"}))
    assert plain == 200
    assert (caddy_status, nginx_status) == (400, 403)


def test_forward_auth_refuses_method_in_the_query(gateway: Door) -> None:
    caddy_status, _ = gateway.call("GET", FORWARD_AUTH.encode(),
                                   headers=caddy("/items/1?_method=DELETE", "POST"))
    nginx_status, _ = gateway.call("GET", AUTH_REQUEST.encode(), headers=nginx(
        "http://app.test/items/1?_method=DELETE", "POST"))
    assert (caddy_status, nginx_status) == (400, 403)


def test_forward_auth_decides_on_an_honoured_override(tmp_path: Path) -> None:
    env = make(tmp_path, honour=True)
    with TestClient(gateway_app(env.runtime), base_url="http://localhost:9091", client=PEER,
                    follow_redirects=False) as client:
        door = Door(env, client, open_session(env)[0])
        caddy_status, _ = door.call("GET", FORWARD_AUTH.encode(), headers=caddy(
            "/items/1", "POST", x_http_method_override="DELETE"))
        nginx_status, _ = door.call("GET", AUTH_REQUEST.encode(), headers=nginx(
            "http://app.test/items/1", "POST", x_http_method_override="delete"))
        put, _ = door.call("GET", FORWARD_AUTH.encode(), headers=caddy(
            "/items/1", "POST", x_http_method_override="PUT"))
        query, _ = door.call("GET", FORWARD_AUTH.encode(), headers=caddy(
            "/items/1?_method=PUT", "POST"))
    env.runtime.close()
    assert (caddy_status, nginx_status) == (303, 401)  # the DELETE rule's step-up
    assert put == 200
    assert query == 400  # the body may say otherwise: never decided on the query


# --- items 2, 6, 7: the reverse proxy ---------------------------------------------------------


@pytest.fixture()
def proxy(tmp_path: Path, upstream: str) -> Iterator[Door]:  # noqa: F811
    env = make(tmp_path, upstream_url=upstream)
    with TestClient(gateway_app(env.runtime), base_url="http://app.test", client=PEER,
                    follow_redirects=False) as client:
        yield Door(env, client, open_session(env)[0])
    env.runtime.close()


@pytest.mark.parametrize("raw", [b"/public/x#/../../vault/keys", b"/public/\xff",
                                 b"/public/a b", b"/public/caf\xc3\xa9"])
def test_reverse_proxy_refuses_what_the_upstream_could_route_elsewhere(
        proxy: Door, raw: bytes) -> None:
    status, body = proxy.call("GET", raw)
    assert status == 400, body
    assert b'"headers"' not in body


FORM = [(b"content-type", b"application/x-www-form-urlencoded")]
JSON_TYPE = [(b"content-type", b"application/json")]


@pytest.mark.parametrize(
    ("path", "query", "headers", "body"),
    [("/transfers", b"", FORM, b"amount=5000&payee=Bob&amount=100"),
     ("/transfers", b"", FORM, b"amount=100&payee=Bob&Amount=5000"),
     ("/transfers", b"", FORM, b"amount=100&payee=Bob&amount[]=5000"),
     ("/transfers", b"amount=5000", FORM, b"amount=100&payee=Bob"),  # Rails: query wins
     ("/q/transfers", b"amount=5000&payee=Bob&amount=100", [], b""),
     ("/q/transfers", b"amount=100&payee=Bob", FORM, b"amount=5000"),  # PHP $_REQUEST: body
     ("/api/transfers", b"", JSON_TYPE,
      b'{"transfer": {"amount": 5000, "payee": "Bob", "amount": 100}}'),
     ("/api/transfers", b"", JSON_TYPE,
      b'{"transfer": {"amount": 5000, "payee": "Bob"}, "transfer": {"amount": 1}}'),
     ("/api/transfers", b"", JSON_TYPE, b'{"transfer": {"amount": 100, "AMOUNT": 5000}}'),
     ("/api/transfers", b"", JSON_TYPE, b'{"transfer": {"amount": 100, "x": {"a": 1, "a": 2}}}'),
     ("/api/transfers", b"", JSON_TYPE, b'{"transfer": {"amount": 100'),  # cut: no guess
     # PHP drops a name's leading spaces and stops at a NUL: `amount` twice, the last wins.
     ("/transfers", b"", FORM, b"amount=100&payee=Bob&%20amount=5000"),
     ("/transfers", b"", FORM, b"amount=100&payee=Bob&amount%00=5000"),
     ])
def test_reverse_proxy_refuses_a_bound_field_given_twice(
        proxy: Door, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
        body: bytes) -> None:
    """`amount=5000&payee=x&amount=100` was judged by the last value (100: no step-up) while
    many frameworks read the first (5000)."""
    status, answer = proxy.call("POST", path.encode(), query=query, headers=headers, body=body)
    assert status == 400, answer
    assert b"more than once" in answer or b"JSON" in answer


def test_reverse_proxy_single_fields_are_decided_as_before(proxy: Door) -> None:
    small, _ = proxy.call("POST", b"/transfers", headers=FORM, body=b"amount=100&payee=Bob")
    large, _ = proxy.call("POST", b"/transfers", headers=FORM, body=b"amount=5000&payee=Bob")
    unrelated, _ = proxy.call("POST", b"/transfers", headers=FORM,
                              body=b"amount=100&payee=Bob&tag=a&tag=b")
    api, _ = proxy.call("POST", b"/api/transfers", headers=JSON_TYPE,
                        body=b'{"transfer": {"amount": 5000, "payee": "Bob"}}')
    assert (small, large, unrelated, api) == (200, 303, 200, 303)


@pytest.mark.parametrize(
    ("headers", "query", "body"),
    [([(b"x-http-method-override", b"DELETE")], b"", b""),
     ([(b"x-method-override", b"DELETE")], b"", b""),
     ([(b"x_http_method", b"DELETE")], b"", b""),
     ([], b"_method=DELETE", b""),
     (FORM, b"", b"_method=DELETE&a=1"),
     (JSON_TYPE, b"", b'{"_method": "DELETE"}'),  # Laravel reads JSON bodies too
     ([(b"content-type", b"multipart/form-data; boundary=X")], b"",
      b'--X\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--X--\r\n')])
def test_reverse_proxy_refuses_overrides_by_default(
        proxy: Door, headers: list[tuple[bytes, bytes]], query: bytes, body: bytes) -> None:
    status, answer = proxy.call("POST", b"/items/1", query=query, headers=headers, body=body)
    assert status == 400, answer
    assert b'"headers"' not in answer


def test_reverse_proxy_sends_the_honoured_method_and_no_override(
        tmp_path: Path, upstream: str) -> None:  # noqa: F811
    env = make(tmp_path, honour=True, upstream_url=upstream)
    with TestClient(gateway_app(env.runtime), base_url="http://app.test", client=PEER,
                    follow_redirects=False) as client:
        door = Door(env, client, open_session(env)[0])
        put_status, put = door.call("POST", b"/items/1",
                                    headers=[(b"X-HTTP-Method-Override", b"put")])
        delete, _ = door.call("POST", b"/items/1", headers=[(b"X-Method-Override", b"DELETE")])
        form_delete, _ = door.call("POST", b"/items/1", headers=FORM, body=b"_method=DELETE")
        query, _ = door.call("POST", b"/items/1", query=b"_method=DELETE")
    env.runtime.close()
    assert put_status == 200, put
    echoed = json.loads(put)
    assert echoed["method"] == "PUT"
    assert not [name for name, _ in echoed["headers"] if "override" in name.lower()]
    assert (delete, form_delete, query) == (303, 303, 400)


# --- the ASGI middleware and its dependency ----------------------------------------------------


@pytest.fixture()
def embedded(tmp_path: Path) -> Iterator[Door]:
    env = make(tmp_path)
    app = FastAPI()
    app.add_exception_handler(StepUpRequired, step_up_exception_handler)
    transfer = require_step_up("payments.transfer", amount=from_json("amount"),
                               payee=from_json("payee"))
    form_transfer = require_step_up("payments.transfer", amount=from_form("amount"),
                                    payee=from_form("payee"))
    query_transfer = require_step_up("payments.transfer", amount=from_query("amount"),
                                     payee=from_query("payee"))

    @app.post("/j")
    async def j(state: StepguardState = Depends(transfer)) -> dict[str, str]:
        return {"ok": "j"}

    @app.post("/f")
    async def f(state: StepguardState = Depends(form_transfer)) -> dict[str, str]:
        return {"ok": "f"}

    @app.post("/q")
    async def q(state: StepguardState = Depends(query_transfer)) -> dict[str, str]:
        return {"ok": "q"}

    app.mount("/", starlette_app())
    wrapped = StepguardMiddleware(app, mode="embedded", runtime=env.runtime)
    with TestClient(wrapped, base_url="http://app.test", follow_redirects=False) as client:
        yield Door(env, client, open_session(env)[0])
    env.runtime.close()


@pytest.mark.parametrize("raw", [b"/public/x#/../../vault/keys", b"/public/\xff",
                                 b"/public/a b"])
def test_middleware_refuses_raw_targets_its_app_could_read_otherwise(
        embedded: Door, raw: bytes) -> None:
    status, _ = embedded.call("GET", raw)
    assert status == 400


@pytest.mark.parametrize(
    ("headers", "query"),
    [([(b"x-http-method-override", b"DELETE")], b""), ([(b"X-HTTP-Method", b"DELETE")], b""),
     ([], b"_method=DELETE")])
def test_middleware_refuses_overrides_by_default(
        embedded: Door, headers: list[tuple[bytes, bytes]], query: bytes) -> None:
    plain, _ = embedded.call("POST", b"/items/1")
    status, _ = embedded.call("POST", b"/items/1", query=query, headers=headers)
    assert (plain, status) == (200, 400)


@pytest.mark.parametrize(
    ("path", "query", "headers", "body"),
    [("/j", b"", JSON_TYPE, b'{"amount": 5000, "payee": "Bob", "amount": 100}'),
     ("/j", b"", JSON_TYPE, b'{"amount": 100, "payee": "Bob", "Amount": 5000}'),
     ("/f", b"", FORM, b"amount=5000&payee=Bob&amount=100"),
     ("/f", b"", FORM, b"amount=100&payee=Bob&+amount=5000"),
     ("/q", b"amount=100&payee=Bob&amount=5000", [], b"")])
def test_dependency_refuses_a_bound_field_given_twice(
        embedded: Door, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
        body: bytes) -> None:
    status, answer = embedded.call("POST", path.encode(), query=query,
                                   headers=[*headers, (b"accept", b"application/json")],
                                   body=body)
    assert status == 400, answer
    assert b"more than once" in answer


def test_dependency_single_fields_are_decided_as_before(embedded: Door) -> None:
    small, _ = embedded.call("POST", b"/f", headers=FORM, body=b"amount=100&payee=Bob")
    large, _ = embedded.call("POST", b"/j", headers=JSON_TYPE,
                             body=b'{"amount": 5000, "payee": "Bob"}')
    assert (small, large) == (200, 303)


# --- the decision API ---------------------------------------------------------------------------


def test_decision_api_refuses_duplicate_json_keys(gateway: Door) -> None:
    body = (b'{"method": "POST", "host": "app.test", "path": "/x", "action": '
            b'"payments.transfer", "attributes": {"amount": 5000, "payee": "Bob", '
            b'"amount": 100}, "session_token": "' + gateway.token.encode() + b'"}')
    headers = [(b"authorization", f"Bearer {gateway.env.api_key}".encode()), *JSON_TYPE]
    status, answer = gateway.call("POST", b"/api/v1/decide", headers=headers, body=body)
    assert status == 400, answer
    assert b"more than once" in answer
    fragment = body.replace(b'"/x"', b'"/public/x#/../../vault"').replace(b', "amount": 100', b"")
    assert gateway.call("POST", b"/api/v1/decide", headers=headers, body=fragment)[0] == 400


# --- item 12: no client input gives a 5xx -------------------------------------------------------

GARBAGE = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet=st.sampled_from("/#?%;\\.:@[]&=_ \t\x00\x7fé\u2028ffABC019"), max_size=40)
    .map(lambda text: text.encode("utf-8")),
    st.sampled_from([b"http://[::1", b"http://[::1/x", b"https://", b"//x", b"*", b"%", b"%zz",
                     b"/%ff", b"/%c0%af", b"/\xc0\xaf", b"/a/../../b", b"http://u@h/",
                     b"http://h:99999/", b"/vault/%2e%2e/public"]),
)
HEADER_VALUE = GARBAGE.map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=GARBAGE, host=HEADER_VALUE, cookie=HEADER_VALUE, override=HEADER_VALUE,
       method=st.sampled_from(["GET", "POST", "DELETE", "G ET", ""]))
def test_garbage_never_gives_a_5xx(gateway: Door, target: bytes, host: bytes, cookie: bytes,
                                   override: bytes, method: str) -> None:
    headers = [(b"cookie", cookie), (b"x-http-method-override", override)]
    caddy_status, _ = gateway.call("GET", FORWARD_AUTH.encode(), headers=[
        *caddy(target, method or "GET", x_forwarded_host=host), *headers])
    nginx_status, _ = gateway.call("GET", AUTH_REQUEST.encode(), headers=[
        *nginx(b"http://" + host + target, method or "GET"), *headers])
    assert caddy_status < 500 and nginx_status < 500


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=GARBAGE, host=HEADER_VALUE, cookie=HEADER_VALUE, query=GARBAGE,
       body=st.one_of(GARBAGE, st.just(b'{"transfer": {"amount": 1, "amount": 2}}')),
       content_type=st.sampled_from([b"application/json", b"application/x-www-form-urlencoded",
                                     b"multipart/form-data", b"text/plain"]))
def test_garbage_through_the_reverse_proxy_never_gives_a_5xx(
        proxy: Door, target: bytes, host: bytes, cookie: bytes, query: bytes, body: bytes,
        content_type: bytes) -> None:
    raw = target if target.startswith(b"/") else b"/transfers"
    status, answer = proxy.call("POST", raw, query=query, body=body, headers=[
        (b"host", host), (b"cookie", cookie), (b"content-type", content_type)])
    assert status < 500 or answer.startswith(b"the upstream"), (status, answer[:200])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=GARBAGE, host=HEADER_VALUE, cookie=HEADER_VALUE, query=GARBAGE)
def test_garbage_through_the_middleware_never_gives_a_5xx(
        embedded: Door, target: bytes, host: bytes, cookie: bytes, query: bytes) -> None:
    raw = target if target.startswith(b"/") else b"/" + target
    status, answer = embedded.call("POST", raw, query=query, headers=[
        (b"host", host), (b"cookie", cookie), *JSON_TYPE], body=b'{"amount": 1}')
    assert status < 500, (status, answer[:200])
