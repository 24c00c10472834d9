"""Rules that users rely on, held at the layer where they meet HTTP (issue 16).

Each test here was written against a hand-made mutant that the rest of the suite let through:
forwarded addresses believed from any peer, step-up attempts not throttled, session lifetimes not
enforced by `Guard`, a challenge answered from another session, a factor enrolled after the
challenge started, a recovery code that stays usable. `make mutate` keeps them honest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from stepguard.asgi import StepguardMiddleware
from stepguard.audit.ledger import AuditEntry, pseudonymise_ip
from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from stepguard.core.throttle import ip_key, user_factor_key
from stepguard.factors.recovery import generate_recovery_codes, hash_recovery_code
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime, hash_token
from stepguard.web.app import create_app
from tests.integration.test_gateway import BASE, PEER, caddy_headers, csrf, forward, sign_in
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user, shown

UNTRUSTED = ("198.51.100.9", 4000)  # not in trusted_proxies (127.0.0.1/32 in the test config)
OFFICE_IP = "10.20.0.1"  # inside the example policy's `office` network
DAY = 86400.0


@dataclass
class Gw:
    runtime: Runtime
    clock: Clock
    alice: Seeded

    def client(self, peer: tuple[str, int] = PEER) -> TestClient:
        return TestClient(create_app(self.runtime), base_url=BASE, client=peer,
                          follow_redirects=False)

    def failures(self, key: str) -> int:
        return self.runtime.store.throttle.state(key, now=self.clock.now).consecutive

    def decisions(self) -> list[AuditEntry]:
        self.runtime.audit.flush(timeout=10)
        return list(self.runtime.audit_log.entries(kind="decision"))


@pytest.fixture()
def gw(tmp_path: Path) -> Iterator[Gw]:
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock)
    yield Gw(runtime, clock, seed_user(runtime))
    runtime.close()


def wrong_password(client: TestClient, headers: dict[str, str] | None = None) -> int:
    page = client.get("/login")
    answer = client.post("/login", headers=headers or {}, data={
        "username": "alice", "password": "wrong", "csrf_token": csrf(page.text)})
    return int(shown(client, answer, headers).status_code)


def challenge_page(client: TestClient, path: str = "/admin/audit") -> str:
    """Start a step-up through forward-auth; the portal path of its challenge page."""
    response = forward(client, path)
    assert response.status_code == 302, response.text
    location = response.headers["location"].removeprefix(BASE)
    assert location.startswith("/step-up/"), location
    return location


def submit(client: TestClient, page_url: str, factor: str, code: str) -> Response:
    page = client.get(page_url)
    assert page.status_code == 200, page.text
    return client.post(f"{page_url}/{factor}", data={"code": code, "csrf_token": csrf(page.text)})


# ------------------------------------------------------------ forwarded addresses (SECURITY 1)


def test_portal_counts_failures_against_the_peer_when_it_is_not_a_trusted_proxy(gw: Gw) -> None:
    with gw.client(UNTRUSTED) as client:
        assert wrong_password(client, {"X-Forwarded-For": OFFICE_IP}) == 401
    assert gw.failures(ip_key(UNTRUSTED[0])) == 1
    assert gw.failures(ip_key(OFFICE_IP)) == 0


def test_portal_takes_the_rightmost_untrusted_forwarded_address_from_a_trusted_proxy(
    gw: Gw,
) -> None:
    with gw.client(PEER) as client:  # 127.0.0.1: a trusted proxy
        forged_then_real = {"X-Forwarded-For": f"{OFFICE_IP}, 203.0.113.5, 127.0.0.1"}
        assert wrong_password(client, forged_then_real) == 401
    assert gw.failures(ip_key("203.0.113.5")) == 1
    assert gw.failures(ip_key(OFFICE_IP)) == 0
    assert gw.failures(ip_key(PEER[0])) == 0


def test_forward_auth_records_the_address_the_trusted_proxy_saw(gw: Gw) -> None:
    with gw.client(PEER) as client:
        headers = caddy_headers("/dashboard", ip=f"{OFFICE_IP}, 203.0.113.7")
        assert client.get("/api/authz/forward-auth", headers=headers).status_code == 302
        nginx = client.get("/api/authz/auth-request", headers={
            "X-Original-URL": "https://app.test/dashboard", "X-Original-Method": "GET",
            "X-Forwarded-For": "203.0.113.8", "Accept": "text/html"})
        assert nginx.status_code == 401
    assert [e.request["client_ip"] for e in gw.decisions()] == ["203.0.113.7", "203.0.113.8"]


def _echo(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.mark.parametrize(("peer", "trusted"), [(UNTRUSTED, False), (PEER, True)])
def test_middleware_believes_forwarded_for_only_from_a_trusted_proxy(
    gw: Gw, peer: tuple[str, int], trusted: bool
) -> None:
    """The `office` network waives the second factor for customer records: a forged
    X-Forwarded-For must not put an outside client into the office."""
    app = StepguardMiddleware(Starlette(routes=[Route("/{p:path}", _echo)]), mode="embedded",
                              runtime=gw.runtime)
    with gw.client() as portal, TestClient(app, base_url="http://app.test", client=peer,
                                           follow_redirects=False) as client:
        client.cookies.set("stepguard_session", sign_in(portal, gw.alice))
        response = client.get("/customers/42", headers={
            "X-Forwarded-For": OFFICE_IP, "Accept": "application/json"})
        recorded = gw.decisions()[-1]
    assert response.status_code == (200 if trusted else 401)
    assert recorded.request["client_ip"] == (OFFICE_IP if trusted else peer[0])
    assert recorded.rule == ("default" if trusted else "customer-data-outside-office")


# ------------------------------------------------------------ step-up throttling (SECURITY 7)


def give_recovery_codes(gw: Gw, user: Seeded | None = None) -> list[str]:
    """A fresh set of recovery codes, stored (hashed) as existing before now."""
    codes = generate_recovery_codes()
    gw.runtime.store.factors.replace_recovery_codes(
        (user or gw.alice).user.id, [hash_recovery_code(c) for c in codes], now=gw.clock.now - 1)
    return codes


@pytest.mark.parametrize("factor", ["totp", "recovery"])
def test_a_wrong_step_up_code_backs_off_the_next_attempt_even_a_right_one(
    gw: Gw, factor: str
) -> None:
    codes = give_recovery_codes(gw)
    right = gw.alice.code(gw.clock.now) if factor == "totp" else codes[0]
    with gw.client() as client:
        sign_in(client, gw.alice)
        page_url = challenge_page(client)
        wrong = "000000" if factor == "totp" else generate_recovery_codes()[0]  # not alice's
        assert submit(client, page_url, factor, wrong).status_code == 401
        assert gw.failures(user_factor_key(gw.alice.user.id, factor)) == 1
        assert gw.failures(ip_key(PEER[0])) == 1
        blocked = submit(client, page_url, factor, right)
        assert blocked.status_code == 429 and "Too many attempts" in blocked.text
        gw.clock.advance(2)  # past the one-second back-off
        passed = submit(client, page_url, factor, right)
        assert passed.status_code == 303
        assert passed.headers["location"] == "https://app.test/admin/audit"
        assert gw.failures(user_factor_key(gw.alice.user.id, factor)) == 0


# ------------------------------------------------------------ session lifetimes through HTTP


def test_an_idle_session_cookie_is_refused_by_forward_auth_and_the_portal(gw: Gw) -> None:
    """aal1 sessions end after 30 days without use (the levels' `idle`), cached or not."""
    with gw.client() as client:
        sign_in(client, gw.alice)
        assert forward(client, "/dashboard").status_code == 200  # now in the session cache
        gw.clock.advance(30 * DAY)
        assert forward(client, "/dashboard").status_code == 200  # exactly at the limit
        gw.clock.advance(30 * DAY + 1)
        refused = forward(client, "/dashboard")
        assert refused.status_code == 302
        assert refused.headers["location"].startswith(f"{BASE}/login?rd=")
        assert client.get("/account").headers["location"].startswith("/login")


def test_a_session_in_use_still_ends_at_its_absolute_lifetime(gw: Gw) -> None:
    with gw.client() as client:
        sign_in(client, gw.alice)
        for _ in range(3):  # used every 10 days: never idle
            gw.clock.advance(10 * DAY)
            assert forward(client, "/dashboard").status_code == 200
        gw.clock.advance(1)
        assert forward(client, "/dashboard").headers["location"].startswith(f"{BASE}/login?rd=")
        assert client.get("/account").headers["location"].startswith("/login")


# ------------------------------------------------------------ challenges (SECURITY 10, 13)


def test_a_challenge_cannot_be_answered_from_another_session_of_the_same_user(gw: Gw) -> None:
    with gw.client() as owner, gw.client() as other:
        owner_token = sign_in(owner, gw.alice)
        page_url = challenge_page(owner)
        other_token = sign_in(other, gw.alice)
        assert other.get(page_url).status_code == 410
        account = other.get("/account")
        stolen = other.post(f"{page_url}/totp", data={
            "code": gw.alice.code(gw.clock.now), "csrf_token": csrf(account.text)})
        assert stolen.status_code == 410
        assert other.cookies["stepguard_session"] == other_token  # no rotation: nothing passed
        assert forward(other, "/admin/audit").status_code == 302
        passed = submit(owner, page_url, "totp", gw.alice.code(gw.clock.now))
        assert passed.status_code == 303
        assert owner.cookies["stepguard_session"] != owner_token
        assert forward(owner, "/admin/audit").status_code == 200


def test_a_totp_enrolled_after_the_challenge_started_cannot_answer_it(gw: Gw) -> None:
    with gw.client() as client:
        sign_in(client, gw.alice)
        page_url = challenge_page(client)
        assert 'id="method-totp"' in client.get(page_url).text  # alice's own, older TOTP
        gw.clock.advance(30)
        planted = pyotp.random_base32(32)
        Accounts(gw.runtime).add_totp_secret(gw.alice.user, planted, label="attacker's phone")
        refused = submit(client, page_url, "totp", pyotp.TOTP(planted).at(gw.clock.now))
        assert refused.status_code == 401
        gw.clock.advance(2)
        assert submit(client, page_url, "totp", gw.alice.code(gw.clock.now)).status_code == 303


def test_a_first_second_factor_enrolled_after_the_challenge_started_is_not_offered(
    gw: Gw,
) -> None:
    bob = seed_user(gw.runtime, "bob", with_totp=False)
    codes = give_recovery_codes(gw, bob)
    with gw.client() as client:
        sign_in(client, bob)
        page_url = challenge_page(client)
        gw.clock.advance(30)
        planted = pyotp.random_base32(32)
        Accounts(gw.runtime).add_totp_secret(bob.user, planted)
        assert 'id="method-totp"' not in client.get(page_url).text
        refused = submit(client, page_url, "totp", pyotp.TOTP(planted).at(gw.clock.now))
        assert refused.status_code == 401
        assert submit(client, page_url, "recovery", codes[0]).status_code == 303


# ------------------------------------------------------------ recovery codes (SECURITY 8)


def test_a_recovery_code_works_once_through_the_portal(gw: Gw) -> None:
    codes = give_recovery_codes(gw)
    with gw.client() as client:
        sign_in(client, gw.alice)
        first = challenge_page(client)
        passed = submit(client, first, "recovery", f" {codes[0].upper()} ")
        assert passed.status_code == 303, passed.text
        assert passed.headers["location"] == "https://app.test/admin/audit"
        assert forward(client, "/admin/audit").status_code == 200
        gw.clock.advance(3601)  # admin-pages wants a proof from the last hour: ask again
        second = challenge_page(client)
        assert second != first
        again = submit(client, second, "recovery", codes[0])
        assert again.status_code == 401
        assert forward(client, "/admin/audit").status_code == 302
        gw.clock.advance(2)
        assert submit(client, second, "recovery", codes[1]).status_code == 303
    used = [c for c in gw.runtime.store.factors.recovery_codes(gw.alice.user.id) if c.used_at]
    assert len(used) == 2


# ------------------------------------------------------------ found by `make mutate`


def test_an_authenticator_whose_enrolment_was_never_confirmed_cannot_answer(gw: Gw) -> None:
    """`begin_totp` stores the new seed unconfirmed; until a code confirms it, it is no factor."""
    bob = seed_user(gw.runtime, "bob", with_totp=False)
    codes = give_recovery_codes(gw, bob)
    with gw.client() as client:
        token = sign_in(client, bob)
        record = gw.runtime.store.sessions.by_token_hash(hash_token(token))
        assert record is not None
        enrolment = Accounts(gw.runtime).begin_totp(record, bob.user)  # fresh password sign-in
        gw.clock.advance(5)
        page_url = challenge_page(client)
        assert 'id="method-totp"' not in client.get(page_url).text
        refused = submit(client, page_url, "totp", pyotp.TOTP(enrolment.secret).at(gw.clock.now))
        assert refused.status_code == 401
        gw.clock.advance(2)
        assert submit(client, page_url, "recovery", codes[0]).status_code == 303


def test_every_audit_entry_of_a_step_up_keeps_only_the_pseudonymised_address(gw: Gw) -> None:
    """With `audit.pseudonymise_ips`, no entry keeps the raw address: not the decision, the
    challenge, nor the sign-in (which did, before this test) or a failed password."""
    gw.runtime.ip_key = b"k" * 32
    with gw.client() as client:
        assert wrong_password(client) == 401
        gw.clock.advance(2)
        sign_in(client, gw.alice)
        page_url = challenge_page(client)
        assert submit(client, page_url, "totp", gw.alice.code(gw.clock.now)).status_code == 303
        gw.runtime.audit.flush(timeout=10)
        entries = list(gw.runtime.audit_log.entries())
    kinds = {e.kind for e in entries if e.request}
    assert {"decision", "challenge", "session", "verification"} <= kinds
    addresses = {e.request.get("client_ip", "") for e in entries} - {""}
    assert addresses == {pseudonymise_ip("203.0.113.7", key=b"k" * 32),
                         pseudonymise_ip(PEER[0], key=b"k" * 32)}


def test_an_unconfirmed_enrolment_beside_a_confirmed_authenticator_cannot_answer(gw: Gw) -> None:
    with gw.client() as client:
        token = sign_in(client, gw.alice)
        record = gw.runtime.store.sessions.by_token_hash(hash_token(token))
        assert record is not None
        gw.runtime.store.sessions.add_event(  # as if alice had just proved her TOTP
            record.id, AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=gw.clock.now))
        record = gw.runtime.store.sessions.by_token_hash(hash_token(token))
        assert record is not None
        enrolment = Accounts(gw.runtime).begin_totp(record, gw.alice.user)
        gw.clock.advance(3700)  # the aal2 proof is too old for admin-pages now
        page_url = challenge_page(client)
        refused = submit(client, page_url, "totp", pyotp.TOTP(enrolment.secret).at(gw.clock.now))
        assert refused.status_code == 401
        gw.clock.advance(2)
        assert submit(client, page_url, "totp", gw.alice.code(gw.clock.now)).status_code == 303


RISK_POLICY = """\
rules:
  - name: moved
    when: "risk.score >= 25"
    require: {level: aal2, max_age: 15m, reason: "{risk.reasons}"}
default: {level: aal1}
"""


def test_forward_auth_judges_the_risk_of_the_session_it_loads(tmp_path: Path) -> None:
    """A session signed in from one network and used from another steps up (the Guard feeds
    the session, its history and the address into the risk engine, cached or not)."""
    clock = Clock()
    runtime = make_runtime(tmp_path, clock=clock, policy=RISK_POLICY)
    alice = seed_user(runtime)
    with TestClient(create_app(runtime), base_url=BASE, client=PEER,
                    follow_redirects=False) as client:
        page = client.get("/login")
        signed_in = client.post("/login", headers={"X-Forwarded-For": "203.0.113.7"}, data={
            "username": "alice", "password": alice.password, "csrf_token": csrf(page.text)})
        assert signed_in.status_code == 303
        for _ in range(2):  # the second time from the session cache
            assert forward(client, "/dashboard", ip="203.0.113.8").status_code == 200
        moved = forward(client, "/dashboard", ip="198.51.100.20")
        assert moved.status_code == 302 and "/step-up/" in moved.headers["location"]
    runtime.close()
