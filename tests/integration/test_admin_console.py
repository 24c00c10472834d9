"""The admin console (issue 14): every admin route walked as every role, confirmations, the
audit view served page by page from indexes, the policy version and diff, the dashboard readable
at 390 px (headless Chromium)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import event, text
from starlette.testclient import TestClient

from stepguard.config.load import load_config
from stepguard.core.context import AuthEvent
from stepguard.core.levels import Level
from stepguard.service.runtime import Runtime, build_runtime, hash_token, new_id, new_token
from stepguard.storage.records import SessionRecord
from stepguard.web.admin import RANK, AdminConsole
from stepguard.web.app import create_app
from tests.support.gateway import Clock, Seeded, seed_user, write_config

BASE = "http://localhost:9091"
POLICY = """
rules:
  - name: console
    match: {paths: ["/admin/**"]}
    require: {level: aal2, max_age: 1h, reason: "Opening the admin console"}
  - name: preview
    mode: report
    match: {paths: ["/reports/**"]}
    require: {level: aal3}
default: {level: aal1}
"""
ROLES = ("anonymous", "nobody", "auditor", "operator", "admin")
GROUPS = {"nobody": (), "auditor": ("auditors",), "operator": ("operators",),
          "admin": ("admins",)}


@dataclass
class Console:
    runtime: Runtime
    clock: Clock
    users: dict[str, Seeded]
    target: Seeded

    def client(self, role: str) -> TestClient:
        client = TestClient(create_app(self.runtime), base_url=BASE, follow_redirects=False)
        if role != "anonymous":
            client.cookies.set("stepguard_session", self.session(self.users[role]))
        return client

    def session(self, user: Seeded) -> str:
        token, now = new_token(), self.clock.now
        events = (AuthEvent(factor="password", amr=("pwd",), level=Level.AAL1, at=now),
                  AuthEvent(factor="totp", amr=("otp",), level=Level.AAL2, at=now))
        self.runtime.store.sessions.add(SessionRecord(
            id=new_id(), token_hash=hash_token(token), user_id=user.user.id, created=now,
            last_seen=now, ip="203.0.113.5", events=events))
        return token


@pytest.fixture()
def console(tmp_path: Path) -> Iterator[Console]:
    clock = Clock()
    runtime = build_runtime(load_config(write_config(tmp_path, policy=POLICY)), clock=clock)
    users = {role: seed_user(runtime, role, groups=groups) for role, groups in GROUPS.items()}
    target = seed_user(runtime, "target", groups=())
    yield Console(runtime, clock, users, target)
    runtime.close()


def csrf_of(client: TestClient) -> str:
    page = client.get("/account")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.status_code
    return match.group(1)


def form_for(path: str, c: Console, token: str) -> dict[str, str]:
    target_session = c.runtime.store.sessions.list_for_user(c.target.user.id)
    return {"csrf_token": token, "user_id": c.target.user.id, "username": "newcomer",
            "session_id": target_session[0].id if target_session else "x"}


def expected(role: str, needed: str, method: str, path: str) -> int:
    if role == "anonymous":
        return 303  # to the sign-in page
    if role == "nobody" or RANK[role] < RANK[needed]:
        return 403
    if method == "GET":
        return 200
    return 303 if path == "/admin/chain/verify" else 200  # a confirmation page first


def test_every_admin_route_is_in_the_role_table(console: Console) -> None:
    app = create_app(console.runtime)
    served = {(r.path, m) for r in app.router.routes if getattr(r, "path", "").startswith(
        "/admin") for m in (r.methods or ()) if m != "HEAD"}
    table = {(path, method) for path, method, _, _ in AdminConsole.__new__(AdminConsole).table()}
    assert served == table and len(table) >= 12


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_its_routes(console: Console, role: str) -> None:
    console.session(console.target)  # the target has a session to revoke
    table = AdminConsole.__new__(AdminConsole).table()
    with console.client(role) as client:
        token = csrf_of(client) if role != "anonymous" else ""
        for path, method, needed, _ in table:
            if method == "GET":
                response = client.get(path)
            else:
                response = client.post(path, data=form_for(path, console, token),
                                       headers={"Origin": BASE})
            want = expected(role, needed, method, path)
            assert response.status_code == want, (role, method, path, response.text[:300])
            if want == 303 and role == "anonymous":
                assert response.headers["location"].startswith("/login")


@pytest.mark.parametrize(("role", "path"), [("auditor", "/admin/users/disable"),
                                            ("auditor", "/admin/sessions/revoke"),
                                            ("operator", "/admin/users/reset-factors"),
                                            ("operator", "/admin/users/create")])
def test_a_role_below_the_route_changes_nothing_even_when_confirming(
        console: Console, role: str, path: str) -> None:
    console.session(console.target)
    before = (console.runtime.store.users.get(console.target.user.id),
              console.runtime.store.factors.for_user(console.target.user.id),
              console.runtime.store.sessions.list_for_user(console.target.user.id))
    with console.client(role) as client:
        data = {**form_for(path, console, csrf_of(client)), "confirm": "yes"}
        assert client.post(path, data=data, headers={"Origin": BASE}).status_code == 403
    after = (console.runtime.store.users.get(console.target.user.id),
             console.runtime.store.factors.for_user(console.target.user.id),
             console.runtime.store.sessions.list_for_user(console.target.user.id))
    assert before == after
    assert console.runtime.store.users.by_username("newcomer") is None


def test_actions_need_confirmation_csrf_and_are_audited(console: Console) -> None:
    console.session(console.target)
    with console.client("admin") as client:
        token = csrf_of(client)
        data = {"user_id": console.target.user.id, "csrf_token": token}
        assert client.post("/admin/users/reset-factors", data={**data, "confirm": "yes"},
                           headers={"Origin": "https://evil.example"}).status_code == 403
        assert client.post("/admin/users/reset-factors", data={
            "user_id": console.target.user.id, "confirm": "yes"}).status_code == 403  # no token
        asked = client.post("/admin/users/reset-factors", data=data, headers={"Origin": BASE})
        assert asked.status_code == 200 and "Confirm" in asked.text
        assert console.runtime.store.factors.for_user(console.target.user.id, kind="totp")
        done = client.post("/admin/users/reset-factors", data={**data, "confirm": "yes"},
                           headers={"Origin": BASE})
        assert done.status_code == 303
        assert not console.runtime.store.factors.for_user(console.target.user.id, kind="totp")
        mine = {"user_id": console.users["admin"].user.id, "csrf_token": token,
                "confirm": "yes"}
        assert client.post("/admin/users/disable", data=mine, headers={"Origin": BASE}
                           ).status_code == 409  # never on oneself
        created = client.post("/admin/users/create", headers={"Origin": BASE}, data={
            "csrf_token": token, "username": "newcomer", "groups": "auditors",
            "email": "new@example.com", "confirm": "yes"})
        assert created.status_code == 200
        password = re.search(r"<code>([^<]+)</code>", created.text.split("one-time")[1])
        assert password and len(password.group(1)) >= 20
        assert created.headers["cache-control"] == "no-store"
    console.runtime.audit.flush(timeout=10)
    outcomes = [e.outcome for e in console.runtime.audit_log.entries(kind="admin")]
    assert "factors_reset" in outcomes and outcomes[-1] == "user_added"
    assert password.group(1) not in repr(list(console.runtime.audit_log.entries()))


def test_the_audit_view_pages_through_indexes_with_real_filters(console: Console) -> None:
    rt = console.runtime
    for n in range(130):
        rt.record(kind="admin", subject=console.target.user.id if n % 2 else "",
                  outcome="probe" if n % 3 else "other", rule=f"r{n % 4}")
        console.clock.advance(1)
    rt.audit.flush(timeout=10)
    statements: list[str] = []
    engine = rt.store.engine  # type: ignore[attr-defined]
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listen)
    try:
        with console.client("auditor") as client:
            first = client.get("/admin/audit", params={"user": "target", "outcome": "probe"})
            seqs = [int(s) for s in re.findall(r"<tr>\s*<td[^>]*>(\d+)</td>", first.text)]
            assert len(seqs) == 43 and seqs == sorted(seqs, reverse=True)
            assert "Older entries" not in first.text
            every = client.get("/admin/audit", params={"kind": "admin"})
            page1 = [int(s) for s in re.findall(r"<tr>\s*<td[^>]*>(\d+)</td>", every.text)]
            assert len(page1) == 50
            older = re.search(r'href="(/admin/audit\?[^"]+)" rel="next"', every.text)
            assert older
            page2 = client.get(older.group(1).replace("&amp;", "&"))
            seqs2 = [int(s) for s in re.findall(r"<tr>\s*<td[^>]*>(\d+)</td>", page2.text)]
            assert len(seqs2) == 50 and max(seqs2) < min(page1)
            ruled = client.get("/admin/audit", params={"rule": "r1", "from": "2030-03-17",
                                                       "to": "2030-03-18"})
            assert ruled.status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    audit_reads = [s for s in statements if "FROM audit_entries" in s and "ORDER BY" in s]
    assert audit_reads
    with engine.connect() as connection:
        for statement in audit_reads:
            plan = " ".join(str(row[-1]) for row in connection.execute(
                text("EXPLAIN QUERY PLAN " + statement.replace("?", "NULL"))))
            assert "USING INDEX" in plan or "USING INTEGER PRIMARY KEY" in plan or \
                "USING PRIMARY KEY" in plan or "sqlite_autoindex" in plan, plan
            assert "TEMP B-TREE" not in plan, plan


def test_the_policy_page_shows_the_version_in_force_and_its_diff(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy=POLICY)
    first = build_runtime(load_config(config), clock=Clock())
    first.close()
    (tmp_path / "policy.yaml").write_text(POLICY.replace("max_age: 1h", "max_age: 30m"))
    runtime = build_runtime(load_config(config), clock=Clock())
    try:
        admin = seed_user(runtime, "boss", groups=("auditors",))
        c = Console(runtime, Clock(), {"auditor": admin}, admin)
        with c.client("auditor") as client:
            page = client.get("/admin/policy")
            overview = client.get("/admin")
    finally:
        runtime.close()
    assert page.status_code == 200 and "Version <strong>2</strong>" in page.text
    assert "-    require: {level: aal2, max_age: 1h" in page.text
    assert "+    require: {level: aal2, max_age: 30m" in page.text
    assert "preview" in page.text and "report" in page.text
    assert "version 2" in overview.text and "mode <strong>enforce</strong>" in overview.text


def seed_activity(c: Console) -> None:
    rt = c.runtime
    for n in range(40):
        rt.record(kind="decision", subject=c.target.user.id, decision=("allow", "step_up",
                  "deny")[n % 3], outcome="x", rule=("console", "a-rather-long-rule-name-for-"
                  "customer-exports", "critical-risk")[n % 3],
                  detail={"signals": ["new_device", "impossible_travel"][: n % 3]})
        if n % 4 == 0:
            rt.record(kind="challenge", subject=c.target.user.id, rule="console",
                      outcome="started")
            rt.record(kind="verification", subject=c.target.user.id, factor="totp",
                      outcome="passed")
        c.clock.advance(3600)
    rt.record(kind="verification", subject=c.target.user.id, outcome="locked")
    rt.audit.flush(timeout=10)


@pytest.mark.browser
def test_the_dashboard_is_readable_at_phone_width(console: Console) -> None:
    from playwright.sync_api import Route as PwRoute
    from playwright.sync_api import sync_playwright

    from tests.support.servers import require_binaries

    require_binaries("chromium")
    seed_activity(console)
    client = console.client("auditor")
    html = client.get("/admin/dashboard", params={"period": "7d"})
    assert html.status_code == 200, html.text[:300]
    for name in ("Decisions over time", "Step-ups started and passed", "Top rules",
                 "Top risk signals", "Lockouts", "new_device", "critical-risk"):
        assert name in html.text, name
    assert "<script" not in html.text.split("<main", 1)[1]  # server-side charts, no script

    def serve(route: PwRoute) -> None:  # every request answered by the app in process
        url = route.request.url.removeprefix(BASE)
        answer = client.get(url)
        route.fulfill(status=answer.status_code, body=answer.content,
                      headers={k: v for k, v in answer.headers.items()
                               if k.lower() not in ("content-length", "content-encoding")})

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
        csp_errors: list[str] = []
        page.on("console", lambda m: csp_errors.append(m.text) if m.type == "error" else None)
        page.route(f"{BASE}/**", serve)
        page.goto(f"{BASE}/admin/dashboard?period=7d")
        overflow = page.evaluate("document.documentElement.scrollWidth")
        charts = page.evaluate("""() => [...document.querySelectorAll('svg.chart')].map(svg => {
            const box = svg.getBoundingClientRect();
            const scale = svg.getScreenCTM().a;
            const sizes = [...svg.querySelectorAll('text')].map(
                t => parseFloat(getComputedStyle(t).fontSize) * scale);
            const clipped = [...svg.querySelectorAll('text')].filter(t => {
                const r = t.getBoundingClientRect();
                return r.right > box.right + 1 || r.left < box.left - 1; }).length;
            return {left: box.left, right: box.right, smallest: Math.min(...sizes), clipped,
                    label: svg.getAttribute('aria-labelledby')}; })""")
        (Path(__file__).parents[2] / "test-output" / "screenshots").mkdir(parents=True,
                                                                            exist_ok=True)
        page.screenshot(path=str(Path(__file__).parents[2] / "test-output" / "screenshots"
                                 / "admin-dashboard-390.png"), full_page=True)
        browser.close()
    client.close()
    assert overflow <= 390, overflow
    assert len(charts) == 5
    for chart in charts:
        assert chart["left"] >= 0 and chart["right"] <= 390, chart
        assert chart["smallest"] >= 11, chart  # readable text at phone width
        assert chart["clipped"] == 0, chart
    assert not [e for e in csp_errors if "Content Security Policy" in e], csp_errors


@pytest.mark.parametrize(("fields", "words"), [
    ({"username": "admin"}, "That username is taken."),
    ({"username": "fresh", "groups": "ok, not ok!"}, "Groups are up to 20 names"),
    ({"username": "fresh", "groups": ",".join(f"g{i}" for i in range(21))},
     "Groups are up to 20 names"),
])
def test_a_user_is_not_created_with_a_taken_name_or_bad_groups(
        console: Console, fields: dict[str, str], words: str) -> None:
    with console.client("admin") as client:
        token = csrf_of(client)
        refused = client.post("/admin/users/create", headers={"Origin": BASE},
                              data={"csrf_token": token, "confirm": "yes", **fields})
    assert refused.status_code == 400 and words in refused.text
    assert console.runtime.store.users.by_username("fresh") is None


def test_actions_without_a_form_token_change_nothing(console: Console) -> None:
    console.session(console.target)
    target = console.runtime.store.sessions.list_for_user(console.target.user.id)[0]
    with console.client("admin") as client:
        for path, data in (("/admin/chain/verify", {}),
                           ("/admin/sessions/revoke", {"session_id": target.id}),
                           ("/admin/users/create", {"username": "sneaky"})):
            refused = client.post(path, data={**data, "confirm": "yes"},
                                  headers={"Origin": BASE})
            assert refused.status_code == 403, path
    assert console.runtime.store.sessions.get(target.id).revoked_at is None  # type: ignore[union-attr]
    assert console.runtime.store.users.by_username("sneaky") is None


def test_revoking_a_session_that_is_gone_says_so(console: Console) -> None:
    with console.client("operator") as client:
        token = csrf_of(client)
        gone = client.post("/admin/sessions/revoke", headers={"Origin": BASE},
                           data={"csrf_token": token, "session_id": "no-such", "confirm": "yes"})
    assert gone.status_code == 404 and "No such session" in gone.text


def test_the_dashboard_shows_the_last_ledger_check(console: Console) -> None:
    with console.client("auditor") as client:
        token = csrf_of(client)
        before = client.get("/admin")
        assert "Not verified since this instance started." in before.text
        checked = client.post("/admin/chain/verify", headers={"Origin": BASE},
                              data={"csrf_token": token})
        assert checked.status_code == 303 and "Ledger+intact" in checked.headers["location"]
        page = client.get("/admin")
    assert page.status_code == 200 and "<strong>intact</strong>" in page.text
    assert "Not verified since" not in page.text
