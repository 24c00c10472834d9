"""Three instances on one PostgreSQL and one Redis behave as one (SECURITY.md cases 12 and 13,
across instances): a step-up on one is honoured by the others, a revocation on one takes
effect on the others' very next request, a single-use grant raced across instances is spent
once, and throttling counts failures made on any instance."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from stepguard.core.throttle import user_factor_key
from tests.fleet.harness import TEST_BASE_DELAY, Browser, Fleet, decision_paths
from tests.support.gateway import Seeded

pytestmark = [pytest.mark.postgres, pytest.mark.proxy]


@pytest.fixture()
def browser(fleet: Fleet) -> Browser:
    b = Browser(fleet)
    yield b  # type: ignore[misc]
    b.close()


def signed_in(browser: Browser, fleet: Fleet, user: Seeded, on: int = 0) -> None:
    answer = browser.sign_in(fleet.instances[on].url, user.user.username, user.password)
    assert answer.status_code == 303, answer.text
    assert browser.token


def test_a_step_up_on_one_instance_is_honoured_by_every_other(fleet: Fleet, browser: Browser,
                                                             user: Seeded) -> None:
    a, b, c = (i.url for i in fleet.instances)
    signed_in(browser, fleet, user, on=0)
    for base in (a, b, c):  # fill every instance's cache with the pre-step-up session
        assert browser.forward(base, "/orders").status_code == 200
    challenged = browser.forward(b, "/admin/users")
    assert challenged.status_code == 302
    assert challenged.headers["location"].startswith(fleet.public_url + "/step-up/")
    before = browser.token
    passed = browser.step_up_totp(a, challenged.headers["location"], user.totp_secret)
    assert passed.status_code == 303, passed.text
    assert browser.token != before  # rotated on A
    for base in (c, b, a):
        allowed = browser.forward(base, "/admin/users")
        assert allowed.status_code == 200, base
        assert allowed.headers["stepguard-acr"] == "urn:stepguard:aal2"
    browser.cookies["stepguard_session"] = before  # the old token is dead everywhere
    assert {browser.forward(base, "/orders").status_code for base in (a, b, c)} == {302}


def test_a_revocation_on_one_instance_takes_effect_on_the_next_request_of_every_other(
        fleet: Fleet, browser: Browser, user: Seeded) -> None:
    a, b, c = (i.url for i in fleet.instances)
    for round_number in range(3):
        signed_in(browser, fleet, user, on=round_number % 3)
        for base in (a, b, c):
            assert browser.forward(base, "/orders").status_code == 200  # cached everywhere
        token = browser.token
        assert browser.sign_out(a).status_code == 303
        browser.cookies["stepguard_session"] = token  # a copy of the cookie survives
        assert browser.forward(b, "/orders").status_code == 302
        assert browser.forward(c, "/orders").status_code == 302
        assert browser.forward(a, "/orders").status_code == 302


def test_disabling_a_user_from_the_cli_ends_their_sessions_on_every_instance(
        fleet: Fleet, browser: Browser, user: Seeded) -> None:
    signed_in(browser, fleet, user, on=1)
    for member in fleet.instances:
        assert browser.forward(member.url, "/orders").status_code == 200
    done = fleet.stepguard("users", "disable", user.user.username, "--yes")
    assert done.returncode == 0, done.stderr
    for member in fleet.instances:
        assert browser.forward(member.url, "/orders").status_code == 302


def test_a_single_use_grant_raced_across_instances_is_spent_exactly_once(
        fleet: Fleet, browser: Browser, user: Seeded) -> None:
    signed_in(browser, fleet, user, on=2)
    challenged = browser.forward(fleet.instances[0].url, "/approve", "POST")
    assert challenged.status_code == 303
    assert browser.step_up_totp(fleet.instances[1].url, challenged.headers["location"],
                                user.totp_secret).status_code == 303
    head = fleet.head()
    racers = [fleet.instances[i % 3].url for i in range(24)]
    warm = Browser(fleet)
    warm.cookies = dict(browser.cookies)

    def spend(base: str) -> int:
        return warm.http.get(base + "/api/authz/forward-auth", headers={
            "X-Forwarded-Method": "POST", "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "app.test", "X-Forwarded-Uri": "/approve",
            "Accept": "application/json", "X-Forwarded-For": browser.ip,
            "Cookie": f"stepguard_session={browser.token}",
        }).status_code

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(spend, racers))
    warm.close()
    assert answers.count(200) == 1, answers
    assert answers.count(401) == len(racers) - 1  # everyone else is asked to step up again
    entries = fleet.wait_for_entries(head, lambda e: decision_paths(e, "/approve")["/approve"]
                                     >= len(racers))
    decisions = [e for e in entries if e.kind == "decision" and e.rule == "approve-payment"]
    assert len(decisions) == len(racers)
    assert sum(1 for e in decisions if e.decision == "allow") == 1
    assert sum(1 for e in decisions if e.detail.get("consumed")) == 1
    fleet.verify_ledger()


def test_failed_sign_ins_are_counted_across_instances(fleet: Fleet, browser: Browser,
                                                      user: Seeded) -> None:
    a, b, c = (i.url for i in fleet.instances)
    name = user.user.username
    # Failure 1 locks TEST_BASE_DELAY (3 s): B's attempt, after A hashed the wrong password
    # and answered, lands inside it even on a slow machine.
    assert browser.sign_in(a, name, "wrong").status_code == 401
    assert browser.sign_in(b, name, user.password).status_code == 429  # B sees A's lock
    counters = redis.Redis.from_url(fleet.redis.redis_url, decode_responses=True)
    key = "stepguard:throttle:" + user_factor_key(user.user.id, "password")
    assert counters.hget(key, "consecutive") == "1"
    import time

    time.sleep(TEST_BASE_DELAY + 0.1)  # the lock began before A answered
    assert browser.sign_in(c, name, "wrong").status_code == 401  # failure 2 on C (locks 2x)
    assert counters.hget(key, "consecutive") == "2"
    assert browser.sign_in(a, name, user.password).status_code == 429
    time.sleep(2 * TEST_BASE_DELAY + 0.1)
    assert browser.sign_in(b, name, user.password).status_code == 303
    assert counters.hget(key, "consecutive") is None  # a success resets the shared count
