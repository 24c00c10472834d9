"""The inline step-up (issue 15) in a real Chromium: examples/inline_bank behind Stepguard.

The bank's page sends transfers with `stepUpFetch` from Stepguard's `stepguard.js`. A large
transfer gets the RFC 9470 answer; the dialog (a web component framing Stepguard's step-up page)
asks for a TOTP code, a passkey (CDP virtual authenticator) or a push approval from another
browser; the same request is then sent once more and the page shows the bank's real answer.
Cancelling leaves the transfer unsent. The code is typed only inside the frame: the bank's DOM
never holds an input for it. The same flow runs in reverse-proxy mode and behind the deploy/
nginx (`auth_request`) and Caddy (`forward_auth`) configs.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, FrameLocator, Page, expect

from stepguard.config.load import load_config
from stepguard.service.runtime import build_runtime
from tests.e2e.accessibility import check_page, install_axe
from tests.e2e.conftest import (
    CSP_REPORTER,
    MARK_SUBMIT_HANDLERS,
    TIMEOUT_MS,
    PageProblems,
    answer_push,
)
from tests.support.gateway import Seeded, seed_user
from tests.support.servers import (
    REPO_ROOT,
    Caddy,
    Nginx,
    Process,
    UvicornServer,
    caddyfile,
    free_port,
    nginx_conf,
    python_env,
    require_binaries,
)

pytestmark = pytest.mark.browser

EXAMPLE = REPO_ROOT / "examples" / "inline_bank"
CEREMONY_TIMEOUT_MS = 15_000
VIRTUAL_AUTHENTICATOR = {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                         "hasUserVerification": True, "isUserVerified": True,
                         "automaticPresenceSimulation": True}
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
SECRETS = {"BANK_COOKIE_KEY": secrets.token_urlsafe(32),
           "BANK_TOTP_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}


@dataclass
class Site:
    """The bank as the browser reaches it, and the Stepguard serving it."""

    kind: str
    origin: str
    bank: UvicornServer
    stepguard: Process
    users: dict[str, Seeded]

    def sent(self) -> list[dict[str, object]]:
        """Every transfer the bank executed (read from the bank directly)."""
        return list(httpx.get(f"{self.bank.url}/api/transfers", timeout=5.0).json())


@pytest.fixture(autouse=True)
def _demo_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Replaces tests/e2e/conftest.py's fixture of this name (no demo server here)."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "site" in request.fixturenames:
        site: Site = request.getfixturevalue("site")
        print(f"--- stepguard log (tail) ---\n{site.stepguard.log_tail(60)}")


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    with UvicornServer("examples.inline_bank.app:app", tmp_path_factory.mktemp("bank"),
                       name="inline-bank") as server:
        yield server


def write_example_config(folder: Path, *, port: int, public_port: int,
                         bank_port: int | None) -> Path:
    """examples/inline_bank/stepguard.yaml with ports substituted (reverse-proxy mode), or,
    without a bank port, the same minus its upstream (forward-auth mode behind a proxy)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text((EXAMPLE / "policy.yaml").read_text())
    text = (EXAMPLE / "stepguard.yaml").read_text()
    text = text.replace("port: 9091", f"port: {port}").replace(
        "localhost:9091", f"localhost:{public_port}")
    if bank_port is None:
        text = text.split("upstreams:", 1)[0].replace(
            "public_url:", "trusted_proxies: [127.0.0.1/32], public_url:")
    else:
        text = text.replace("127.0.0.1:8080", f"127.0.0.1:{bank_port}")
    config = folder / "stepguard.yaml"
    config.write_text(text)
    return config


def stepguard_process(config: Path, port: int) -> Process:
    env = python_env(SECRETS)
    return Process([sys.executable, "-m", "stepguard.cli.main", "serve", "--config", str(config),
                    "--host", "127.0.0.1", "--port", str(port)],
                   port=port, workdir=config.parent, name="stepguard", env=env,
                   ready_path="/healthz")


def seed(config: Path) -> dict[str, Seeded]:
    os.environ.update(SECRETS)  # the example's config reads its secrets from the environment
    runtime = build_runtime(load_config(config))
    try:
        return {name: seed_user(runtime, name, groups=()) for name in USERS}
    finally:
        runtime.close()


@pytest.fixture(scope="module", params=["reverse-proxy", "nginx", "caddy"])
def site(request: pytest.FixtureRequest, bank: UvicornServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    kind: str = request.param
    workdir = tmp_path_factory.mktemp(f"inline-{kind}")
    port = free_port()
    if kind == "reverse-proxy":
        config = write_example_config(workdir / "stepguard", port=port, public_port=port,
                                      bank_port=bank.port)
        users = seed(config)
        with stepguard_process(config, port) as stepguard:
            yield Site(kind, f"http://localhost:{port}", bank, stepguard, users)
        return
    require_binaries(kind)
    public = free_port()
    config = write_example_config(workdir / "stepguard", port=port, public_port=public,
                                  bank_port=None)
    users = seed(config)
    ports = {"listen_port": public, "stepguard_port": port, "upstream_port": bank.port}
    proxy: Nginx | Caddy = (
        Nginx(nginx_conf(**ports, server_name="localhost"), workdir / "nginx")
        if kind == "nginx" else Caddy(caddyfile(**ports, site_name="localhost"), workdir / "caddy"))
    with stepguard_process(config, port) as stepguard, proxy:
        yield Site(kind, f"http://localhost:{public}", bank, stepguard, users)


def new_page(browser: Browser, site: Site, problems: PageProblems,
             width: int = 1100) -> tuple[BrowserContext, Page]:
    context = browser.new_context(base_url=site.origin, viewport={"width": width, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    return context, page


@pytest.fixture
def page(browser: Browser, site: Site, problems: PageProblems) -> Iterator[Page]:
    # The step-up answer itself is a 401, which Chromium logs; it is expected here.
    problems.expect(r"Failed to load resource: the server responded with a status of 401")
    context, page = new_page(browser, site, problems)
    yield page
    context.close()
    unexpected = problems.unexpected()
    assert unexpected == [], "the browser reported problems:\n" + "\n".join(unexpected)


# --- steps ------------------------------------------------------------------------------------


def sign_in(page: Page, user: Seeded) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?rd="))
    page.get_by_label("Username").fill(user.user.username)
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#user")).to_have_text(user.user.username)


def send_transfer(page: Page, amount: str, payee: str) -> FrameLocator:
    """Send a transfer from the bank's page; the step-up dialog opens: its frame."""
    page.get_by_label("Amount (EUR)").fill(amount)
    page.get_by_label("Payee").fill(payee)
    page.get_by_role("button", name="Send").click()
    dialog = page.get_by_role("dialog", name="Confirm it's you")
    expect(dialog).to_be_visible()
    return page.frame_locator("stepguard-step-up iframe")


def frame_script_ready(page: Page) -> None:
    """Until the framed step-up page's own script runs (it handles Escape there, then says
    "ready" and its height): the dialog opens, and the frame's fields appear, before that."""
    expect(page.locator("stepguard-step-up iframe")).to_have_attribute(
        "style", re.compile(r"height"))


def code_for(user: Seeded, *, step: int = 0) -> str:
    return pyotp.TOTP(user.totp_secret).at(time.time() + 30 * step)


def confirm_with_code(frame: FrameLocator, code: str) -> None:
    frame.get_by_label("6-digit code from your authenticator app").fill(code)
    frame.get_by_role("button", name="Confirm with code").click()


def add_virtual_authenticator(page: Page) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": VIRTUAL_AUTHENTICATOR})


def fresh_proof_then(page: Page, path: str, user: Seeded, *, step: int = 0) -> None:
    """Open an enrolment page: it asks for a fresh proof first (TOTP on the full page)."""
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    page.get_by_label("6-digit code from your authenticator app").fill(code_for(user, step=step))
    page.get_by_role("button", name="Confirm with code").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


# --- tests ------------------------------------------------------------------------------------


def test_totp_in_the_dialog_then_the_fetch_is_retried_once(page: Page, site: Site) -> None:
    alice = site.users["alice"]
    sign_in(page, alice)
    before = len(site.sent())
    frame = send_transfer(page, "2500", "Carol")
    if site.kind == "reverse-proxy":  # forward-auth never sees the body: no values to bind
        expect(frame.get_by_role("region", name="Why am I asked?")).to_contain_text(
            "Approve a transfer of 2500 to Carol")
        expect(frame.get_by_role("region", name="You are approving")).to_contain_text("Carol")
    # The secret is typed on Stepguard's page only: nothing in the bank's DOM can hold it.
    expect(frame.get_by_label("6-digit code from your authenticator app")).to_be_visible()
    assert page.locator("input[name=code], input[autocomplete=one-time-code]").count() == 0
    confirm_with_code(frame, code_for(alice))
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator("#result")).to_have_text(
        re.compile(r"^Sent 2500(\.0)? EUR to Carol \(t-\d+\)\.$"))
    sent = site.sent()[before:]
    assert [(t["amount"], t["payee"], t["by"]) for t in sent] == [(2500.0, "Carol", "alice")]
    expect(page.get_by_role("button", name="Send")).to_be_focused()  # back where it was


def test_a_declined_step_up_sends_nothing(page: Page, site: Site) -> None:
    bob = site.users["bob"]
    sign_in(page, bob)
    before = len(site.sent())
    frame = send_transfer(page, "4000", "Mallory")
    expect(frame.get_by_role("button", name="Confirm with code")).to_be_visible()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator("#result")).to_have_text("Not confirmed: the transfer was not sent.")
    # Escape declines too (from inside the frame).
    frame = send_transfer(page, "4001", "Mallory")
    frame_script_ready(page)  # Escape in the frame is the frame's script's to hand on
    frame.get_by_label("6-digit code from your authenticator app").press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator("#result")).to_have_text("Not confirmed: the transfer was not sent.")
    assert len(site.sent()) == before


def test_a_small_transfer_needs_no_dialog(page: Page, site: Site) -> None:
    if site.kind != "reverse-proxy":
        pytest.skip("forward-auth cannot read the amount in the body: every transfer steps up")
    sign_in(page, site.users["carol"])
    page.get_by_label("Amount (EUR)").fill("50")
    page.get_by_label("Payee").fill("Bob")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#result")).to_have_text(re.compile(r"^Sent 50(\.0)? EUR to Bob"))
    expect(page.get_by_role("dialog")).to_have_count(0)


def test_passkey_in_the_dialog(page: Page, site: Site) -> None:
    if site.kind != "reverse-proxy":
        pytest.skip("one passkey run is enough; the frame is the same page behind a proxy")
    dave = site.users["dave"]
    sign_in(page, dave)
    add_virtual_authenticator(page)
    fresh_proof_then(page, "/account/passkey", dave)
    page.get_by_label("Name for this passkey").fill("Laptop")
    page.get_by_role("button", name="Create passkey").click()
    expect(page).to_have_url(re.compile(r"/account\?m=Passkey"), timeout=CEREMONY_TIMEOUT_MS)
    page.goto("/")
    before = len(site.sent())
    frame = send_transfer(page, "3000", "Frank")
    frame.get_by_role("button", name="Use your passkey").click()
    expect(page.get_by_role("dialog")).to_have_count(0, timeout=CEREMONY_TIMEOUT_MS)
    expect(page.locator("#result")).to_have_text(re.compile(r"^Sent 3000(\.0)? EUR to Frank"))
    assert [t["payee"] for t in site.sent()[before:]] == ["Frank"]


def test_push_approval_in_the_dialog(browser: Browser, page: Page, site: Site,
                                     problems: PageProblems) -> None:
    if site.kind != "reverse-proxy":
        pytest.skip("one push run is enough; the frame is the same page behind a proxy")
    erin = site.users["erin"]
    phone_context, phone = new_page(browser, site, problems)
    try:
        sign_in(phone, erin)
        fresh_proof_then(phone, "/account/push-device", erin)
        phone.get_by_label("Name for this device").fill("Erin's phone")
        phone.get_by_role("button", name="Add this browser").click()
        expect(phone).to_have_url(re.compile(r"/account\?m=Device"), timeout=CEREMONY_TIMEOUT_MS)

        sign_in(page, erin)
        before = len(site.sent())
        frame = send_transfer(page, "7000", "Grace")
        frame.get_by_role("button", name="Send a push to my registered device").click()
        number = frame.locator(".push-number").inner_text().strip()

        phone.add_init_script(MARK_SUBMIT_HANDLERS)
        phone.goto("/account")
        phone.get_by_role("link", name="Review the request from another browser").click()
        expect(phone.locator("dl.details")).to_contain_text("Approve a transfer of 7000 to Grace")
        answer_push(phone, number)
        expect(phone).to_have_url(re.compile(r"/account\?m=Approved"))

        expect(page.get_by_role("dialog")).to_have_count(0, timeout=CEREMONY_TIMEOUT_MS)
        expect(page.locator("#result")).to_have_text(re.compile(r"^Sent 7000(\.0)? EUR to Grace"))
        assert [t["payee"] for t in site.sent()[before:]] == ["Grace"]
    finally:
        phone_context.close()


def test_a_forged_passed_message_is_ignored(page: Page, site: Site) -> None:
    """Only the frame's own window, on Stepguard's origin, for this challenge, can end the
    dialog: a "passed" message posted by the page itself (same origin here) changes nothing."""
    if site.kind != "reverse-proxy":
        pytest.skip("the component's check does not depend on the proxy")
    sign_in(page, site.users["carol"])
    before = len(site.sent())
    frame = send_transfer(page, "5000", "Mallory")
    expect(frame.get_by_role("button", name="Confirm with code")).to_be_visible()
    src = page.locator("stepguard-step-up iframe").get_attribute("src") or ""
    cid = re.search(r"/step-up/([^/]+)/inline", src).group(1)  # type: ignore[union-attr]
    page.evaluate("""cid => window.postMessage(
        {source: "stepguard", version: 1, type: "passed", challenge: cid}, "*")""", cid)
    page.wait_for_timeout(500)
    expect(page.get_by_role("dialog", name="Confirm it's you")).to_be_visible()
    assert len(site.sent()) == before
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("#result")).to_have_text("Not confirmed: the transfer was not sent.")


def test_the_dialog_passes_axe_and_works_with_the_keyboard_only(page: Page, site: Site) -> None:
    if site.kind != "reverse-proxy":
        pytest.skip("the dialog and its frame are the same behind a proxy")
    axe = install_axe()
    frank = site.users["frank"]
    sign_in(page, frank)
    before = len(site.sent())
    # Enter submits only once bank.js has enabled the Send button (it starts disabled).
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    page.get_by_label("Amount (EUR)").focus()
    page.keyboard.type("1500")
    page.keyboard.press("Tab")
    page.keyboard.type("Heidi")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Confirm it's you")).to_be_visible()
    frame = page.frame_locator("stepguard-step-up iframe")
    expect(frame.get_by_label("6-digit code from your authenticator app")).to_be_visible()
    check_page(page, axe, "inline-dialog")
    check_page(page, axe, "inline-dialog-frame", frame_selector="stepguard-step-up iframe")
    for _ in range(20):  # Tab from the dialog into the frame, to the code field
        if frame.get_by_label("6-digit code from your authenticator app").evaluate(
                "e => e === document.activeElement && document.hasFocus()"):
            break
        page.keyboard.press("Tab")
    else:
        raise AssertionError("the code field is not reachable with Tab")
    page.keyboard.type(code_for(frank))
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator("#result")).to_have_text(re.compile(r"^Sent 1500(\.0)? EUR to Heidi"))
    assert [t["payee"] for t in site.sent()[before:]] == ["Heidi"]
