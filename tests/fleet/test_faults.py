"""Faults under load (SECURITY.md case 16, and "nothing lost"): an instance stopped with SIGTERM,
PostgreSQL restarted, Redis stopped, and a SIGTERM while PostgreSQL is down.

Load goes through nginx (auth_request to the balanced instances, then the protected app); each
request has a unique path, so every answer can be matched with its audit entry. A store outage
makes Stepguard answer 503, which nginx turns into 500 for the client: never the app's 200.
After each fault, every 200 has exactly one decision entry, no other request has one, and
`stepguard audit verify` passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import httpx
import pytest

from tests.fleet.harness import (
    Answer,
    Browser,
    Fleet,
    cookie_header,
    decision_paths,
    run_load,
    statuses,
    wait_until,
)
from tests.support.gateway import Seeded

pytestmark = [pytest.mark.postgres, pytest.mark.proxy]


@pytest.fixture()
def session(fleet: Fleet, user: Seeded) -> Iterator[Browser]:
    browser = Browser(fleet)
    answer = browser.sign_in(fleet.instances[0].url, user.user.username, user.password)
    assert answer.status_code == 303
    yield browser
    browser.close()


def assert_ledger_matches(fleet: Fleet, head: int, answers: Sequence[Answer], prefix: str) -> int:
    """Every 200 has exactly one decision entry, nothing else has one; the chain verifies."""
    allowed = {a.path for a in answers if a.status == 200}
    entries = fleet.wait_for_entries(
        head, lambda found: sum(decision_paths(found, prefix).values()) >= len(allowed))
    decided = decision_paths(entries, prefix)
    assert set(decided) == allowed, (
        f"decided without a 200: {sorted(set(decided) - allowed)[:5]}, "
        f"200 without an entry: {sorted(allowed - set(decided))[:5]}")
    assert max(decided.values(), default=1) == 1, decided.most_common(3)
    fleet.verify_ledger()
    return len(allowed)


def test_an_instance_stopped_under_load_loses_no_audit_entry_and_clients_keep_going(
        fleet: Fleet, session: Browser) -> None:
    victim = fleet.instances[1]
    head = fleet.head()
    _, collect = run_load(fleet.nginx_url, cookie_header(session.cookies), tag="kill")
    try:
        time.sleep(1.0)
        stopping = time.monotonic()
        victim.stop()  # SIGTERM: finish in-flight requests, write the audit queue, exit
        stopped = time.monotonic()
        time.sleep(1.0)
        answers = collect()
    finally:
        victim.start()
    assert statuses(answers)[200] > 50, statuses(answers)
    assert {a.status for a in answers} == {200}, statuses(answers)  # nginx moved on, no errors
    assert any(a.sent > stopped for a in answers)
    count = assert_ledger_matches(fleet, head, answers, "/orders/kill-")
    print(f"\nkill: {count} requests, all 200, victim stopped in {stopped - stopping:.2f} s; "
          f"{count} decision entries")


def test_postgres_restarted_under_load_never_allows_while_down_and_service_resumes(
        fleet: Fleet, session: Browser) -> None:
    head = fleet.head()
    _, collect = run_load(fleet.nginx_url, cookie_header(session.cookies), tag="pg")
    try:
        time.sleep(0.8)
        fleet.stop_postgres()
        down = time.monotonic()
        time.sleep(1.5)
        restarting = time.monotonic()
    finally:
        fleet.start_postgres()
    fleet.wait_ready(timeout=30)
    resumed = time.monotonic()
    time.sleep(1.0)
    answers = collect()
    during = [a for a in answers if a.sent >= down and a.received <= restarting]
    assert during, "no request was made while PostgreSQL was down"
    assert 200 not in {a.status for a in during}, statuses(during)
    after = [a for a in answers if a.sent > resumed + 0.2]
    assert after and {a.status for a in after} == {200}, statuses(after)
    count = assert_ledger_matches(fleet, head, answers, "/orders/pg-")
    print(f"\npostgres: {len(during)} requests while down → {dict(statuses(during))}; "
          f"ready again {resumed - restarting:.2f} s after start; {count} allowed, each audited")


def test_redis_down_fails_closed_on_every_instance_and_service_resumes(
        fleet: Fleet, session: Browser, user: Seeded) -> None:
    head = fleet.head()
    for member in fleet.instances:
        assert session.forward(member.url, "/orders/redis-warm").status_code == 200
    fleet.redis.stop()
    try:
        refused = [session.forward(m.url, f"/orders/redis-down-{n}-{m.name}").status_code
                   for n in range(10) for m in fleet.instances]
        assert set(refused) == {503}, refused
        through_nginx = httpx.get(fleet.nginx_url + "/orders/redis-down-nginx", headers={
            "Host": "app.test", "Accept": "application/json",
            "Cookie": cookie_header(session.cookies)})
        assert through_nginx.status_code == 500  # auth_request: 503 → 500, never the app
        other = Browser(fleet)
        assert other.sign_in(fleet.instances[2].url, user.user.username,
                             user.password).status_code == 503  # no throttle, no sign-in
        other.close()
        for member in fleet.instances:
            ready = httpx.get(member.url + "/readyz")
            assert ready.status_code == 503
            assert ready.json()["redis"] == "unavailable" and ready.json()["store"] == "ok"
    finally:
        fleet.redis.start()
    assert wait_until(lambda: all(
        session.forward(m.url, "/orders/redis-back").status_code == 200
        for m in fleet.instances), timeout=10)
    fleet.wait_ready()
    entries = fleet.wait_for_entries(
        head, lambda found: decision_paths(found, "/orders/redis-")["/orders/redis-back"] >= 3)
    decided = decision_paths(entries, "/orders/redis-")
    assert not [p for p in decided if "redis-down" in p]  # refused requests decided nothing
    assert decided["/orders/redis-warm"] == 3
    fleet.verify_ledger()


def test_sigterm_while_postgres_is_down_spills_the_audit_queue_and_the_next_start_writes_it(
        fleet: Fleet) -> None:
    victim = fleet.instances[2]
    spill_dir = fleet.config.parent / "audit-spill"
    head = fleet.head()
    anonymous = Browser(fleet)
    fleet.stop_postgres()
    try:
        for n in range(5):  # anonymous requests are decided without the store: login needed
            answer = anonymous.forward(victim.url, f"/spill-{n}", html=False)
            assert answer.status_code == 401
        victim.stop()  # the queue cannot be written: after audit.shutdown_timeout it is spilled
        spilled = list(spill_dir.glob("unwritten-*.jsonl"))
        assert len(spilled) == 1
        assert len(spilled[0].read_text().splitlines()) == 5
    finally:
        anonymous.close()
        fleet.start_postgres()
        victim.start()  # claims the file and writes its entries
    entries = fleet.wait_for_entries(head, lambda found: len(decision_paths(found, "/spill-")) == 5)
    assert decision_paths(entries, "/spill-") == {f"/spill-{n}": 1 for n in range(5)}
    assert wait_until(lambda: not list(spill_dir.glob("unwritten-*")), timeout=10)
    fleet.wait_ready()
    fleet.verify_ledger()


def test_the_first_request_after_a_postgres_restart_is_served_on_every_instance(
        fleet: Fleet, session: Browser) -> None:
    """Connections left over from before the restart are replaced, not answered with 503."""
    for member in fleet.instances:
        assert session.forward(member.url, "/orders/restart-warm").status_code == 200
    fleet.stop_postgres()  # no request while it is down: every open connection goes stale
    fleet.start_postgres()
    fleet.wait_ready()
    assert [session.forward(m.url, "/orders/restart-first").status_code
            for m in fleet.instances] == [200, 200, 200]
