"""The database door in a real browser: `stepguard demo` (which starts a private PostgreSQL and
the postgres door), Chromium and `psql`.

alice signs in, issues a database token on the account page (the page asks for a fresh proof
first), runs `psql` with the connection string the page shows, and a `DELETE` is held: psql
prints the step-up link, the browser opens it and confirms with a TOTP code, and the statement
runs once.
"""

from __future__ import annotations

import html
import re
import subprocess
import threading
import time

import psycopg
import pyotp
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_browser import Shot, sign_in
from tests.support.demo_server import DemoServer

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


def _code(secret: str, *, ahead: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * ahead)


def test_a_held_delete_is_approved_in_the_browser_and_runs_once(page: Page, demo: DemoServer,
                                                                shot: Shot) -> None:
    if demo.postgres_port is None:
        pytest.skip("the demo found no PostgreSQL server binaries")
    alice = demo.user("alice")
    sign_in(page, alice, shot)
    page.goto("/account")
    page.get_by_role("link", name="Database access").click()
    page.get_by_role("button", name="Issue a database token").click()
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))  # a fresh proof first
    page.get_by_label("6-digit code from your authenticator app").fill(_code(alice.totp_secret))
    page.get_by_role("button", name="Confirm with code").click()
    expect(page.get_by_role("heading", name="Database access")).to_be_visible()
    page.get_by_role("button", name="Issue a database token").click()
    shown = page.locator("pre code").inner_text()
    url = html.unescape(shown.split('"')[1]).replace("localhost:", "127.0.0.1:")
    url = url.replace("sslmode=prefer", "sslmode=disable")
    shot(page, "token")

    psql = subprocess.Popen(["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-c",
                             "DELETE FROM customers WHERE id = 7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(psql.stderr.readline, "")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while not any("/step-up/" in line for line in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    link = re.search(r"(http://\S+/step-up/\S+)", "".join(lines))
    assert link is not None
    page.goto(link.group(1))
    expect(page.get_by_text("Deleting customers needs a fresh proof.")).to_be_visible()
    expect(page.get_by_text("DELETE FROM customers WHERE id = 7")).to_be_visible()
    shot(page, "statement-step-up")
    page.get_by_label("6-digit code from your authenticator app").fill(
        _code(alice.totp_secret, ahead=1))  # the next step: this step's code was just used
    page.get_by_role("button", name="Confirm with code").click()
    out, _ = psql.communicate(timeout=30)
    assert psql.returncode == 0 and "DELETE 1" in out
    direct = f"postgresql://postgres@127.0.0.1:{_upstream_port(demo)}/acme"
    with psycopg.connect(direct) as connection:
        assert connection.execute("SELECT count(*) FROM customers WHERE id = 7").fetchone() \
            == (0,)


def _upstream_port(demo: DemoServer) -> int:
    text = (demo.data / "stepguard.yaml").read_text()
    found = re.search(r'upstream: "127\.0\.0\.1:(\d+)"', text)
    assert found is not None
    return int(found.group(1))
