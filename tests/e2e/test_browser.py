"""The portal in a real browser: `stepguard demo` (Acme Bank behind the gateway) and Chromium.

Covers sign-in through the form, a large transfer held for a bound, single-use TOTP step-up and
replayed once, a passkey enrolled on a CDP virtual authenticator and then used for the customer
export (aal3), a push device enrolled in one browser (WebCrypto key in IndexedDB) approving a
transfer started in another, and that the step-up page is readable and free of console errors /
CSP violations. alice and bob each use one TOTP code per 30 s step (the push test uses the next
step's code, which the ±1 step window accepts), so no test trips the code-replay check of another.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, CDPSession, Locator, Page, expect

from tests.e2e.conftest import (
    CSP_REPORTER,
    MARK_SUBMIT_HANDLERS,
    TIMEOUT_MS,
    PageProblems,
    answer_push,
)
from tests.support.demo_server import DemoServer, DemoUser

pytestmark = pytest.mark.browser

Shot = Callable[[Page, str], Path]
CEREMONY_TIMEOUT_MS = 15_000
VIRTUAL_AUTHENTICATOR = {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                         "hasUserVerification": True, "isUserVerified": True,
                         "automaticPresenceSimulation": True}


# --- steps ------------------------------------------------------------------------------------


def sign_in(page: Page, user: DemoUser, shot: Shot) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?rd="))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "login")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#user")).to_have_text(user.username)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    shot(page, "dashboard")


def submit_transfer(page: Page, *, amount: str, payee: str, shot: Shot) -> None:
    page.get_by_role("link", name="Transfer").click()
    expect(page.get_by_role("heading", name="New transfer")).to_be_visible()
    page.get_by_label("Amount").fill(amount)
    page.get_by_label("Payee").fill(payee)
    shot(page, "transfer-form")
    page.get_by_role("button", name="Send").click()
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()


def confirm_with_totp(page: Page, user: DemoUser) -> None:
    code = pyotp.TOTP(user.totp_secret).now()
    page.get_by_label("6-digit code from your authenticator app").fill(code)
    page.get_by_role("button", name="Confirm with code").click()


def bound_values(page: Page) -> dict[str, str]:
    table = page.get_by_role("region", name="You are approving").locator("table")
    return facts(table)


def facts(table: Locator) -> dict[str, str]:
    """A `th: td` table as a dict."""
    rows = [table.locator("tr").nth(i) for i in range(table.locator("tr").count())]
    return {row.locator("th").inner_text().strip(): row.locator("td").inner_text().strip()
            for row in rows}


def add_virtual_authenticator(page: Page) -> tuple[CDPSession, str]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    answer = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": VIRTUAL_AUTHENTICATOR})
    return cdp, answer["authenticatorId"]


# --- tests ------------------------------------------------------------------------------------


def test_sign_in_shows_the_dashboard(page: Page, demo: DemoServer, shot: Shot) -> None:
    sign_in(page, demo.user("alice"), shot)
    expect(page.get_by_text("Balance: 12,345.67")).to_be_visible()
    expect(page.locator("header")).to_contain_text("acr urn:stepguard:aal1")  # password only


def test_step_up_page_is_readable(page: Page, demo: DemoServer, shot: Shot) -> None:
    sign_in(page, demo.user("alice"), shot)
    submit_transfer(page, amount="2500", payee="Carol", shot=shot)
    reason = page.get_by_role("region", name="Why am I asked?").get_by_text(
        "Approve a transfer of 2500 to Carol", exact=True)
    expect(reason).to_be_visible()
    expect(reason).to_be_in_viewport()  # no scrolling needed to read why
    style = reason.evaluate("e => { const s = getComputedStyle(e);"
                            " return {size: parseFloat(s.fontSize), color: s.color,"
                            " background: getComputedStyle(document.body).backgroundColor}; }")
    assert style["size"] >= 14
    assert style["color"] != style["background"]
    assert page.evaluate("document.styleSheets.length") >= 1  # the CSS loaded under the CSP
    expect(page.locator("#sg-alert")).to_be_empty()  # no error shown on a fresh page
    expect(page.get_by_text("Your form submission (POST) is kept.")).to_be_visible()
    assert bound_values(page) == {"Amount": "€2,500.00", "Payee": "Carol"}  # policy labels
    shot(page, "step-up")


def test_large_transfer_is_approved_once_with_totp(page: Page, demo: DemoServer, shot: Shot,
                                                   problems: PageProblems) -> None:
    alice = demo.user("alice")
    sign_in(page, alice, shot)
    page.get_by_role("link", name="Transfer").click()
    page.get_by_label("Amount").fill("50")
    page.get_by_label("Payee").fill("Bob")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#result")).to_have_text("Sent 50 to Bob.")  # small: no step-up
    shot(page, "small-transfer-sent")

    submit_transfer(page, amount="5000", payee="Bob", shot=shot)
    expect(page.get_by_role("region", name="Why am I asked?")).to_contain_text(
        "Approve a transfer of 5000 to Bob")
    assert bound_values(page) == {"Amount": "€5,000.00", "Payee": "Bob"}
    shot(page, "step-up")

    confirm_with_totp(page, alice)
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+/confirm$"))
    expect(page.get_by_role("heading", name="Send your request?")).to_be_visible()
    held = facts(page.get_by_role("table", name="Form fields"))
    assert held == {"amount": "5000", "payee": "Bob"}
    shot(page, "confirm")

    page.get_by_role("button", name="Send the request").click()
    expect(page.locator("#result")).to_have_text("Sent 5000 to Bob.")
    expect(page.locator("header")).to_contain_text("acr urn:stepguard:aal2; amr pwd,otp")
    shot(page, "sent")

    page.go_back()  # the confirmation page again: the held request was taken when it was sent
    problems.expect(r"/confirm: Failed to load resource: .* status of 404")
    expect(page.get_by_role("heading", name="Nothing to send")).to_be_visible()
    expect(page.get_by_role("button", name="Send the request")).to_have_count(0)
    expect(page.locator("#result")).to_have_count(0)
    shot(page, "second-send-refused")


def test_passkey_enrolment_then_customer_export(page: Page, demo: DemoServer, shot: Shot,
                                                problems: PageProblems) -> None:
    bob = demo.user("bob")
    sign_in(page, bob, shot)
    cdp, authenticator = add_virtual_authenticator(page)

    # Adding a passkey needs an aal2 proof from the last 10 minutes: the portal asks for one
    # with a step-up first, then comes back to the passkey form.
    page.goto("/account/passkey")
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    expect(page.get_by_role("region", name="Why am I asked?")).to_contain_text("Confirm it's you")
    shot(page, "passkey-needs-fresh-proof")
    confirm_with_totp(page, bob)
    expect(page).to_have_url(re.compile(r"/account/passkey$"))
    shot(page, "passkey-form")
    page.get_by_label("Name for this passkey").fill("Test laptop")
    page.get_by_role("button", name="Create passkey").click()
    expect(page).to_have_url(re.compile(r"/account\?m=Passkey"), timeout=CEREMONY_TIMEOUT_MS)
    expect(page.get_by_text("Passkey added.")).to_be_visible()
    expect(page.get_by_role("cell", name="Test laptop", exact=True)).to_be_visible()
    shot(page, "account-with-passkey")
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(stored) == 1 and stored[0]["isResidentCredential"]

    page.goto("/customers/export")
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    why = page.get_by_role("region", name="Why am I asked?")
    expect(why).to_contain_text("Exporting customer data")
    use = page.get_by_role("button", name="Use your passkey")
    expect(use).to_be_visible()  # the script un-hid it: WebAuthn is available
    expect(page.get_by_role("button", name="Confirm with code")).to_have_count(0)  # passkey only
    shot(page, "export-step-up")
    with page.expect_download(timeout=CEREMONY_TIMEOUT_MS) as download:
        use.click()
    csv = Path(download.value.path()).read_text()
    assert csv.splitlines()[0] == "id,name,email"
    assert "ada@example.com" in csv
    assert cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})[
        "credentials"][0]["signCount"] >= 1


KEY_IN_INDEXEDDB = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open("stepguard-push", 1);
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const all = open.result.transaction("devices").objectStore("devices").getAll();
    all.onsuccess = () => resolve(all.result.map(d => ({
      id: d.id, type: d.key.type, extractable: d.key.extractable, name: d.key.algorithm.name,
      curve: d.key.algorithm.namedCurve})));
  };
})"""


def test_a_push_device_approves_a_transfer_from_another_browser(
    page: Page, browser: Browser, demo: DemoServer, shot: Shot, problems: PageProblems
) -> None:
    alice = demo.user("alice")
    # The phone: enrol this browser as a push device, behind a fresh step-up.
    sign_in(page, alice, shot)
    page.goto("/account/push-device")
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    code = pyotp.TOTP(alice.totp_secret).at(time.time() + 30)  # the next step: still accepted
    page.get_by_label("6-digit code from your authenticator app").fill(code)
    page.get_by_role("button", name="Confirm with code").click()
    expect(page).to_have_url(re.compile(r"/account/push-device$"))
    page.get_by_label("Name for this device").fill("Alice's phone")
    shot(page, "push-device-form")
    page.get_by_role("button", name="Add this browser").click()
    expect(page).to_have_url(re.compile(r"/account\?m=Device"), timeout=CEREMONY_TIMEOUT_MS)
    devices = page.get_by_role("region", name="Devices that approve requests")
    expect(devices.get_by_role("cell", name="Alice's phone", exact=True)).to_be_visible()
    keys = page.evaluate(KEY_IN_INDEXEDDB)
    assert len(keys) == 1
    assert keys[0] | {"id": ""} == {"id": "", "type": "private", "extractable": False,
                                    "name": "ECDSA", "curve": "P-256"}
    shot(page, "push-device-added")

    # The laptop (another browser): a large transfer, confirmed with a push.
    laptop_context = browser.new_context(base_url=demo.base_url,
                                         viewport={"width": 1100, "height": 800})
    laptop_context.set_default_timeout(TIMEOUT_MS)
    laptop_context.add_init_script(CSP_REPORTER)
    laptop = laptop_context.new_page()
    laptop.on("console", problems.console)
    laptop.on("pageerror", problems.page_error)
    try:
        sign_in(laptop, alice, shot)
        submit_transfer(laptop, amount="7000", payee="Dave", shot=shot)
        laptop.get_by_role("button", name="Send a push to my registered device").click()
        number = laptop.locator(".push-number").inner_text().strip()
        shot(laptop, "push-sent")

        # The phone sees where the request comes from and what it is for, and picks the number.
        page.add_init_script(MARK_SUBMIT_HANDLERS)
        page.goto("/account")
        page.get_by_role("link", name="Review the request from another browser").click()
        expect(page.get_by_role("heading", name="Is this you?")).to_be_visible()
        details = page.locator("dl.details")
        expect(details).to_contain_text("127.0.0.1")
        expect(details).to_contain_text(re.compile(r"Chrom\w* \d+ on Linux"))
        expect(details).to_contain_text("Approve a transfer of 7000 to Dave")
        assert facts(page.locator("table.facts")) == {"Amount": "€7,000.00", "Payee": "Dave"}
        shot(page, "push-approve")
        answer_push(page, number)
        expect(page).to_have_url(re.compile(r"/account\?m=Approved"))

        # The laptop's page notices the approval and goes on to the held transfer.
        expect(laptop).to_have_url(re.compile(r"/step-up/[^/]+/confirm$"),
                                   timeout=CEREMONY_TIMEOUT_MS)
        laptop.get_by_role("button", name="Send the request").click()
        expect(laptop.locator("#result")).to_have_text("Sent 7000 to Dave.")
        expect(laptop.locator("header")).to_contain_text("acr urn:stepguard:aal2; amr pwd,mca")
        shot(laptop, "push-approved-sent")
    finally:
        laptop_context.close()
