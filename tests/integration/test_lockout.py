"""Throttling slows attackers, not the owner (issue 9 item 4; SECURITY.md case 7).

Reserve, then verify: every attempt is counted before its secret is checked, so parallel guesses
cannot all pass the throttle. The owner's known device is not locked out by an attacker's
address; a lock always has an operator path (CLI, admin page, set-password); and the answer to
a throttled attempt never tells whether the username exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from stepguard.cli.main import app as cli
from stepguard.config.load import load_config
from stepguard.core.context import RequestContext
from stepguard.core.decision import Decision, Outcome, Requirement
from stepguard.core.errors import Throttled, VerificationFailed
from stepguard.core.levels import Level
from stepguard.core.throttle import user_factor_key
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.service.stepup import StepUp
from stepguard.web.app import create_app
from tests.contract import build
from tests.support.gateway import Clock, Seeded, seed_user, shown, write_config

BASE = "http://localhost:9091"
PEER = ("127.0.0.1", 50000)  # a trusted proxy: X-Forwarded-For names the client
ATTACKER = "203.0.113.66"
OWNER = "198.51.100.20"
STRANGER = "192.0.2.99"  # an address the owner never used


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture()
def runtime(config_path: Path, clock: Clock) -> Iterator[Runtime]:
    rt = build_runtime(load_config(config_path), clock=clock)
    yield rt
    rt.close()


@pytest.fixture()
def alice(runtime: Runtime) -> Seeded:
    return seed_user(runtime)


def browser(runtime: Runtime) -> TestClient:
    return TestClient(create_app(runtime), base_url=BASE, client=PEER, follow_redirects=False)


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client: TestClient, username: str, password: str, ip: str):  # type: ignore[no-untyped-def]
    page = client.get("/login", headers={"X-Forwarded-For": ip})
    answer = client.post("/login", headers={"X-Forwarded-For": ip},
                         data={"username": username, "password": password,
                               "csrf_token": csrf(page.text)})
    return shown(client, answer, {"X-Forwarded-For": ip})


def context(ip: str, device: str = "") -> RequestContext:
    return RequestContext(method="POST", host="localhost", path="/login", client_ip=ip,
                          device_id=device)


def race_sign_ins(runtime: Runtime, username: str, count: int, ip: str) -> list[str]:
    """`count` parallel wrong passwords from one address: what each one was told."""
    accounts = Accounts(runtime)

    def attempt(i: int) -> str:
        try:
            accounts.sign_in(username, f"wrong-{i}", context(ip))
        except Throttled:
            return "throttled"
        except VerificationFailed:
            return "verified"
        return "signed_in"

    return build.race(count, attempt)


def owner_device(runtime: Runtime, alice: Seeded) -> TestClient:
    """The owner's browser, signed in once before (its device cookie is known), signed out."""
    client = browser(runtime)
    assert login(client, "alice", alice.password, OWNER).status_code == 303
    client.cookies.delete("stepguard_session")
    return client


def test_parallel_wrong_passwords_are_counted_before_they_are_verified(
        runtime: Runtime, alice: Seeded) -> None:
    outcomes = race_sign_ins(runtime, "alice", 60, ATTACKER)
    assert outcomes.count("verified") == 1, outcomes  # one guess checked, 59 refused unchecked
    assert runtime.store.throttle.state(user_factor_key(alice.user.id, "password"),
                                        now=runtime.now()).consecutive == 1


def test_the_owner_signs_in_at_once_after_a_burst_from_another_address(
        runtime: Runtime, alice: Seeded, clock: Clock) -> None:
    known = owner_device(runtime, alice)
    race_sign_ins(runtime, "alice", 40, ATTACKER)
    assert login(known, "alice", alice.password, OWNER).status_code == 303  # known device
    fresh = browser(runtime)  # a new browser at another address: not slowed by the burst
    assert login(fresh, "alice", alice.password, "192.0.2.50").status_code == 303


def test_the_known_device_is_never_locked_by_the_attackers_lock(
        runtime: Runtime, alice: Seeded, clock: Clock) -> None:
    known = owner_device(runtime, alice)
    lock_alice(runtime, alice, clock)  # a patient attacker reached the hard limit
    refused = login(browser(runtime), "alice", alice.password, STRANGER)
    assert refused.status_code == 429 and "locked" in refused.text  # the limit holds for them
    assert login(known, "alice", alice.password, ATTACKER).status_code == 303  # not for her


def test_parallel_wrong_totp_codes_then_the_owner_steps_up_at_once(
        runtime: Runtime, alice: Seeded, clock: Clock) -> None:
    accounts, stepup = Accounts(runtime), StepUp(runtime)
    thief = accounts.sign_in("alice", alice.password, context(ATTACKER, "thief-device"))
    owner = accounts.sign_in("alice", alice.password, context(OWNER, "owner-device"))
    clock.advance(1)
    decision = Decision(outcome=Outcome.STEP_UP, rule="admin-pages",
                        reasons=("Opening the admin console",),
                        requirement=Requirement(level=Level.AAL2, max_age=3600), scope="admin")
    attack = stepup.start(decision, context(ATTACKER), thief.session, return_url="/admin")
    mine = stepup.start(decision, context(OWNER), owner.session, return_url="/admin")
    good = alice.code(clock.now)
    wrong = [c for c in (f"{n:06d}" for n in range(100)) if c != good]

    def guess(i: int) -> str:
        try:
            stepup.verify_totp(attack.id, thief.session, wrong[i], client_ip=ATTACKER)
        except Throttled:
            return "throttled"
        except VerificationFailed:
            return "verified"
        return "passed"

    outcomes = build.race(100, guess)
    assert outcomes.count("verified") == 1 and "passed" not in outcomes  # case 7
    with pytest.raises(Throttled):  # a correct code during the lock fails too
        stepup.verify_totp(attack.id, thief.session, good, client_ip=ATTACKER)
    passed = stepup.verify_totp(mine.id, owner.session, good, client_ip=OWNER)
    assert passed.token and passed.challenge.id == mine.id


# --------------------------------------------------------------------------- operator paths


def lock_alice(runtime: Runtime, alice: Seeded, clock: Clock) -> None:
    for _ in range(100):
        clock.advance(1000)
        runtime.store.throttle.record_failure(
            user_factor_key(alice.user.id, "password"), now=clock.now)
    assert login(browser(runtime), "alice", alice.password, STRANGER).status_code == 429


def test_users_unlock_lifts_the_lock(runtime: Runtime, alice: Seeded, clock: Clock,
                                     config_path: Path) -> None:
    lock_alice(runtime, alice, clock)
    result = CliRunner().invoke(cli, ["users", "unlock", "alice", "--config", str(config_path),
                                        "--yes"])
    assert result.exit_code == 0, result.output
    assert "unlocked" in result.output
    assert login(browser(runtime), "alice", alice.password, STRANGER).status_code == 303


def test_set_password_clears_the_lock(runtime: Runtime, alice: Seeded, clock: Clock) -> None:
    lock_alice(runtime, alice, clock)
    Accounts(runtime).set_password(alice.user.id, "a new long password")
    assert login(browser(runtime), "alice", "a new long password", STRANGER).status_code == 303


def admin_session(runtime: Runtime, clock: Clock) -> TestClient:
    admin = seed_user(runtime, "root")
    client = browser(runtime)
    assert login(client, "root", admin.password, OWNER).status_code == 303
    step = client.get("/admin")
    assert step.status_code == 303
    page = client.get(step.headers["location"])
    done = client.post(step.headers["location"] + "/totp",
                       data={"code": admin.code(clock.now), "csrf_token": csrf(page.text)})
    assert done.status_code == 303
    return client


def test_the_admin_page_unlocks_after_a_confirmation(runtime: Runtime, alice: Seeded,
                                                     clock: Clock) -> None:
    lock_alice(runtime, alice, clock)
    admin = admin_session(runtime, clock)
    page = admin.get("/admin")
    assert page.status_code == 200 and "/admin/users/unlock" in page.text
    token = csrf(page.text)
    refused = admin.post("/admin/users/unlock", data={"user_id": alice.user.id})
    assert refused.status_code == 403  # no CSRF token
    asked = admin.post("/admin/users/unlock", data={"user_id": alice.user.id, "csrf_token": token})
    assert asked.status_code == 200 and "alice" in asked.text and 'name="confirm"' in asked.text
    assert login(browser(runtime), "alice", alice.password, STRANGER).status_code == 429
    done = admin.post("/admin/users/unlock",
                      data={"user_id": alice.user.id, "csrf_token": csrf(asked.text),
                            "confirm": "yes"})
    assert done.status_code == 303
    assert login(browser(runtime), "alice", alice.password, STRANGER).status_code == 303


# --------------------------------------------------------------------------- no enumeration


def _answer(response) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return response.status_code, re.sub(r'(value|content)="[^"]+"', r'\1=""', response.text)


def test_a_throttled_answer_does_not_tell_whether_the_username_exists(
        runtime: Runtime, alice: Seeded, clock: Clock) -> None:
    answers: dict[str, list[tuple[int, str]]] = {"alice": [], "nobody": []}
    for name in answers:
        for i in range(14):  # from many addresses, a few seconds apart
            clock.advance(3)
            answers[name].append(_answer(login(browser(runtime), name, "wrong", f"192.0.2.{i}")))
        clock.advance(100_000)
    assert answers["alice"] == answers["nobody"]
    assert {status for status, _ in answers["alice"]} == {401, 429}


def test_parallel_bursts_answer_alike_for_known_and_unknown_users(
        runtime: Runtime, alice: Seeded) -> None:
    known = race_sign_ins(runtime, "alice", 30, ATTACKER)
    unknown = race_sign_ins(runtime, "nobody", 30, "203.0.113.67")
    assert sorted(known) == sorted(unknown)
