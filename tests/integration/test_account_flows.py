"""Account flows found broken by a new user (issue 9 items 9, 10 and 11), through the portal.

- A new user adds a first authenticator app (the unconfirmed one is no second factor yet).
- The step-up page and the ledger give the true reason for a scoped rule.
- Successful actions record their amount; a verified factor's "last used" moves; the first
  sign-in of a browser already records it as a known device.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from starlette.testclient import TestClient

from stepguard.adapters.forward_auth import DEVICE_COOKIE
from stepguard.core.context import RequestContext
from stepguard.service.guard import Guard
from stepguard.service.runtime import Runtime, unsign
from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user

BASE = "http://localhost:9091"
PEER = ("127.0.0.1", 50000)
SCOPED = textwrap.dedent("""\
    attributes: {amount: number}
    rules:
      - name: billing
        match: {paths: ["/billing/**"]}
        require: {level: aal2, max_age: 1h, scope: billing, reason: "Opening billing"}
      - name: admin
        match: {paths: ["/admin-area/**"]}
        require: {level: aal2, max_age: 1h, scope: admin, reason: "Opening the admin area"}
    default: {level: aal1}
    """)


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def runtime(tmp_path: Path, clock: Clock) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, clock=clock, policy=SCOPED)
    yield rt
    rt.close()


@pytest.fixture()
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), base_url=BASE, client=PEER,
                    follow_redirects=False) as c:
        yield c


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(client: TestClient, user: Seeded) -> None:
    page = client.get("/login")
    done = client.post("/login", data={"username": user.user.username, "password": user.password,
                                       "csrf_token": csrf(page.text)})
    assert done.status_code == 303, done.text


def forward(client: TestClient, path: str):  # type: ignore[no-untyped-def]
    return client.get("/api/authz/forward-auth", headers={
        "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.test",
        "X-Forwarded-Uri": path, "X-Forwarded-For": "203.0.113.7", "Accept": "text/html"})


def step_up_totp(client: TestClient, user: Seeded, clock: Clock, path: str) -> str:
    """Step up for `path` with a TOTP code; the page text shown before."""
    page_url = forward(client, path).headers["location"].removeprefix(BASE)
    page = client.get(page_url)
    done = client.post(page_url + "/totp", data={"code": user.code(clock.now),
                                                 "csrf_token": csrf(page.text)})
    assert done.status_code == 303, done.text
    return page.text


# --------------------------------------------------------------------------- item 9


def test_a_new_user_adds_a_first_authenticator_app(client: TestClient, runtime: Runtime,
                                                   clock: Clock) -> None:
    newcomer = seed_user(runtime, "newcomer", groups=(), with_totp=False)
    sign_in(client, newcomer)
    page = client.get("/account/totp")
    assert page.status_code == 200, page.text
    secret = re.search(r"[A-Z2-7]{32}", page.text)
    assert secret, "the set-up page shows the secret"
    action = re.search(r'action="(/account/totp\?f=[^"]+)"', page.text)
    assert action
    done = client.post(action.group(1).replace("&amp;", "&"), data={
        "code": pyotp.TOTP(secret.group(0)).at(clock.now), "csrf_token": csrf(page.text)})
    assert done.status_code == 303, done.text
    assert "Authenticator%20app%20added" in done.headers["location"]
    factors = runtime.store.factors.for_user(newcomer.user.id, kind="totp")
    assert len(factors) == 1 and factors[0].data.get("confirmed", True)


# --------------------------------------------------------------------------- item 10


def test_a_scoped_rule_states_its_true_reason_on_the_page_and_in_the_ledger(
        client: TestClient, runtime: Runtime, clock: Clock) -> None:
    alice = seed_user(runtime)
    sign_in(client, alice)
    step_up_totp(client, alice, clock, "/billing/invoices")
    clock.advance(5)  # seconds after a step-up at aal2
    assert forward(client, "/billing/invoices").status_code == 200
    page_url = forward(client, "/admin-area/users").headers["location"].removeprefix(BASE)
    page = client.get(page_url).text
    true_reason = ("This action needs a confirmation of its own (admin); an earlier confirmation "
                   "does not cover it.")
    assert true_reason in page and "older than" not in page
    runtime.audit.flush(5)
    started = [e for e in runtime.audit_log.entries(subject=alice.user.id, kind="challenge")
               if e.rule == "admin"]
    assert started and true_reason in started[-1].reasons
    assert not any("older than" in r for r in started[-1].reasons)


# --------------------------------------------------------------------------- item 11


def test_allowed_actions_record_their_amount_and_feed_the_baseline(
        client: TestClient, runtime: Runtime, clock: Clock) -> None:
    alice = seed_user(runtime)
    sign_in(client, alice)
    guard = Guard(runtime)
    token = client.cookies["stepguard_session"]
    for amount in (100, 120, 90, 110, 105):
        context = RequestContext(method="POST", host="app.test", path="/pay",
                                 attributes={"amount": amount})
        assert guard.check(context, token).decision.allowed
    assert runtime.store.history.load(alice.user.id).amounts == (100, 120, 90, 110, 105)
    big = RequestContext(method="POST", host="app.test", path="/pay",
                         attributes={"amount": 5000})
    assert "unusual_amount" in guard.check(big, token).risk.names


def test_the_event_loop_path_leaves_an_amount_to_the_recording_path(
        client: TestClient, runtime: Runtime) -> None:
    alice = seed_user(runtime)
    sign_in(client, alice)
    guard, token = Guard(runtime), client.cookies["stepguard_session"]
    plain = RequestContext(method="GET", host="app.test", path="/home")
    guard.check(plain, token)  # fills the cache
    assert guard.check_cached(plain, token) is not None
    paying = RequestContext(method="POST", host="app.test", path="/pay", attributes={"amount": 7})
    assert guard.check_cached(paying, token) is None  # the thread path records the amount


def test_a_verified_factor_shows_when_it_was_last_used(client: TestClient, runtime: Runtime,
                                                       clock: Clock) -> None:
    alice = seed_user(runtime)
    sign_in(client, alice)
    (totp,) = runtime.store.factors.for_user(alice.user.id, kind="totp")
    assert totp.last_used is None
    step_up_totp(client, alice, clock, "/billing/x")
    (totp,) = runtime.store.factors.for_user(alice.user.id, kind="totp")
    assert totp.last_used == clock.now
    account = client.get("/account").text
    assert "never" not in account.split("Authenticator app", 1)[1].split("</tr>", 1)[0]


def test_the_first_sign_in_of_a_browser_records_its_device(client: TestClient,
                                                           runtime: Runtime) -> None:
    alice = seed_user(runtime)
    assert DEVICE_COOKIE not in client.cookies
    sign_in(client, alice)
    device = unsign(runtime.cookie_key, client.cookies[DEVICE_COOKIE])
    assert device and device in runtime.store.history.load(alice.user.id).known_devices
    (session,) = runtime.store.sessions.list_for_user(alice.user.id)
    assert session.device_id == device
