"""Every portal page in Chromium, as users reach it in `stepguard demo` (issue 15).

Each page (the admin console's in English and German too) is checked at 390 px and 1280 px: a
full-page screenshot (test-output/screenshots/pages/), no sideways scrolling, and no axe-core
violation of WCAG 2.2 A/AA. Sign-in and step-up
are also done with the keyboard alone. A failed sign-in or step-up code answers with a fresh page
(refresh does not send the password or code again) that starts on the error; sign-in keeps the
username.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.accessibility import check_page, install_axe
from tests.e2e.conftest import (
    CSP_REPORTER,
    MARK_SUBMIT_HANDLERS,
    TIMEOUT_MS,
    PageProblems,
    answer_push,
)
from tests.support.demo_server import DemoServer, DemoUser

pytestmark = pytest.mark.browser
CEREMONY_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def axe() -> str:
    return install_axe()


def new_page(browser: Browser, demo: DemoServer, problems: PageProblems) -> Page:
    context = browser.new_context(base_url=demo.base_url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    return page


@pytest.fixture
def second(browser: Browser, demo: DemoServer, problems: PageProblems) -> Iterator[Page]:
    page = new_page(browser, demo, problems)
    yield page
    page.context.close()


def code(user: DemoUser, step: int = 0) -> str:
    return pyotp.TOTP(user.totp_secret).at(time.time() + 30 * step)


def sign_in(page: Page, user: DemoUser, rd: str = "/account") -> None:
    page.goto(f"/login?rd={rd}")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/login"))


def confirm_with_code(page: Page, value: str) -> None:
    page.get_by_label("6-digit code from your authenticator app").fill(value)
    page.get_by_role("button", name="Confirm with code").click()


def test_every_portal_page_reads_well_and_passes_axe(page: Page, second: Page, demo: DemoServer,
                                                    axe: str, problems: PageProblems) -> None:
    alice, bob = demo.user("alice"), demo.user("bob")
    page.goto("/login?rd=/account")
    check_page(page, axe, "login")

    # A wrong password: a fresh GET that starts on the error and keeps the username.
    problems.expect(r"status of 401")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not her password")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/login\?rd="))
    expect(page.locator("#sg-alert")).to_have_text("The username or password is not right.")
    expect(page.locator("#sg-alert")).to_be_focused()
    expect(page.get_by_label("Username")).to_have_value("alice")
    check_page(page, axe, "login-error")
    with page.expect_navigation() as reload:
        page.reload()  # a GET again: nothing is re-sent, the error was shown once
    assert reload.value is not None and reload.value.request.method == "GET"
    expect(page.locator("#sg-alert")).to_be_empty()
    time.sleep(1.5)  # past the back-off of one failure (a fast machine gets here within it)

    sign_in(page, alice, rd="/admin")
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))  # the admin console steps up
    check_page(page, axe, "step-up-admin")
    # A wrong code: post/redirect/get as on sign-in — the same page, the error focused, 401.
    step_up_url = page.url
    with page.expect_navigation() as refused:
        confirm_with_code(page, "000000")
    assert refused.value is not None and refused.value.status == 401
    assert refused.value.request.method == "GET" and page.url == step_up_url
    expect(page.locator("#sg-alert")).to_contain_text("That code is not right.")
    expect(page.locator("#sg-alert")).to_be_focused()
    check_page(page, axe, "step-up-error")
    with page.expect_navigation() as reload:
        page.reload()  # a GET again: no code is re-sent, the error was shown once
    assert reload.value is not None and reload.value.request.method == "GET"
    expect(page.locator("#sg-alert")).to_be_empty()
    time.sleep(1.5)  # past the back-off of one failure
    confirm_with_code(page, code(alice))
    expect(page).to_have_url(re.compile(r"/admin$"))
    check_page(page, axe, "admin")
    page.get_by_role("button", name="Unlock bob").click()
    expect(page.get_by_role("heading", name="Unlock bob?")).to_be_visible()
    expect(page.get_by_role("button", name="Confirm")).to_be_visible()
    check_page(page, axe, "admin-unlock")
    admin_pages(page, axe)


    page.goto("/account")
    check_page(page, axe, "account")
    page.goto("/account/totp")  # the admin step-up above is a fresh proof: no second one
    expect(page).to_have_url(re.compile(r"/account/totp$"))
    check_page(page, axe, "enrol-totp")
    page.goto("/account/passkey")
    check_page(page, axe, "enrol-passkey")
    page.goto("/account/agents")
    check_page(page, axe, "agents")
    page.goto("/account/push-device")
    check_page(page, axe, "enrol-push")
    page.get_by_label("Name for this device").fill("Alice's phone")
    page.get_by_role("button", name="Add this browser").click()
    expect(page).to_have_url(re.compile(r"/account\?m=Device"), timeout=CEREMONY_TIMEOUT_MS)
    page.get_by_role("button", name="Make new recovery codes").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    expect(page.get_by_role("button", name="Download the codes")).to_be_visible()
    check_page(page, axe, "recovery-codes")

    # A transfer from another browser, approved on this one (the push device).
    sign_in(second, alice, rd="/transfers")
    second.get_by_label("Amount").fill("5000")
    second.get_by_label("Payee").fill("Bob")
    second.get_by_role("button", name="Send").click()
    expect(second).to_have_url(re.compile(r"/step-up/[^/]+$"))
    check_page(second, axe, "step-up-transfer")
    second.get_by_role("button", name="Send a push to my registered device").click()
    expect(second.locator(".push-number")).to_be_visible()
    check_page(second, axe, "step-up-push-sent")
    page.add_init_script(MARK_SUBMIT_HANDLERS)
    page.goto("/account")
    check_page(page, axe, "account-pending-push")
    page.get_by_role("link", name="Review the request from another browser").click()
    check_page(page, axe, "push-approve")
    number = second.locator(".push-number").inner_text().strip()
    answer_push(page, number)
    expect(second).to_have_url(re.compile(r"/confirm$"), timeout=CEREMONY_TIMEOUT_MS)
    check_page(second, axe, "confirm")

    problems.expect(r"status of 404")
    page.goto("/step-up/nothing-here/confirm")
    check_page(page, axe, "message")

    sign_in(page, bob, rd="/account")
    check_page(page, axe, "account-fresh")
    # Known from the very first sign-in: this browser is listed as a known device.
    expect(page.get_by_role("region", name="Known devices")).to_contain_text("This browser")


ADMIN_PAGES = ("dashboard", "audit", "policy", "notifications")


def admin_pages(page: Page, axe: str) -> None:
    """The admin console's other pages, creating a user (its confirmation and the one-time
    password page), then the console in German (the switch, remembered, then switched back)."""
    for name in ADMIN_PAGES:
        page.goto(f"/admin/{name}")
        check_page(page, axe, f"admin-{name}")
    page.goto("/admin")
    page.get_by_text("Create a user").click()
    page.get_by_label("Username", exact=True).fill("carol")
    page.get_by_role("button", name="Create…").click()
    expect(page.get_by_role("heading", name="Create carol?")).to_be_visible()
    check_page(page, axe, "admin-create-confirm")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", name="carol created")).to_be_visible()
    check_page(page, axe, "admin-created")
    page.goto("/admin?lang=de")
    expect(page.get_by_role("heading", name="Verwaltung")).to_be_visible()
    check_page(page, axe, "admin-de")
    for name in ADMIN_PAGES:
        page.goto(f"/admin/{name}")
        expect(page.locator("html")).to_have_attribute("lang", "de")
        check_page(page, axe, f"admin-{name}-de")
    page.goto("/admin?lang=en")


def test_sign_in_and_step_up_with_the_keyboard_only(page: Page, demo: DemoServer) -> None:
    user = demo.user("alice")  # her next TOTP step (the first test used this one)
    page.goto("/transfers")
    expect(page).to_have_url(re.compile(r"/login"))
    page.keyboard.press("Tab")  # the skip link comes first
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    tab_to(page, page.get_by_label("Username"))
    page.keyboard.type(user.username)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(user.password)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New transfer")).to_be_visible()

    page.get_by_label("Amount").focus()
    page.keyboard.type("2500")
    page.keyboard.press("Tab")
    page.keyboard.type("Carol")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    tab_to(page, page.get_by_label("6-digit code from your authenticator app"))
    page.keyboard.type(code(user, step=1))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/confirm$"))
    tab_to(page, page.get_by_role("button", name="Send the request"))
    page.keyboard.press("Enter")
    expect(page.locator("#result")).to_have_text("Sent 2500 to Carol.")


def tab_to(page: Page, target, limit: int = 30) -> None:  # type: ignore[no-untyped-def]
    """Press Tab until `target` has focus (every control on the way is reachable by keyboard)."""
    for _ in range(limit):
        if target.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{target} is not reachable with Tab")


def test_passkey_first_sign_in(page: Page, demo: DemoServer, problems: PageProblems) -> None:
    """A passkey (discoverable, user-verified) signs in with no username or password: from the
    button and from conditional UI; the password can then be dropped for good."""
    bob = demo.user("bob")
    sign_in(page, bob, rd="/account")
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})["authenticatorId"]
    page.goto("/account/passkey")
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    confirm_with_code(page, code(bob))
    page.get_by_label("Name for this passkey").fill("Bob's laptop")
    page.get_by_role("button", name="Create passkey").click()
    expect(page).to_have_url(re.compile(r"/account\?m=Passkey"), timeout=CEREMONY_TIMEOUT_MS)
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    assert stored["credentials"][0]["isResidentCredential"]  # discoverable

    page.get_by_role("button", name="Stop using a password").click()
    expect(page.get_by_text("You now sign in with your passkey")).to_be_visible()
    page.get_by_role("button", name="Sign out", exact=True).click()

    # Conditional UI: the login page asks for a passkey in the background (mediation
    # "conditional"); the virtual authenticator answers at once, as a user picking it from
    # the username field's autofill: signed in without typing anything. The answer can come
    # before the login page's "load": wait for the navigation's commit only, or the redirect
    # to /account interrupts the goto.
    page.goto("/login?rd=/account", wait_until="commit")
    expect(page).to_have_url(re.compile(r"/account$"), timeout=CEREMONY_TIMEOUT_MS)
    expect(page.locator(".signed-in")).to_contain_text("Bob")

    # The button, where the browser offers no autofill: told before signing out, so that the
    # login page the sign-out lands on starts no background ceremony of its own (one that
    # ended after the next page loaded replaced that page's pre-session cookie: its CSRF
    # token then no longer matched, "The page expired").
    page.add_init_script("PublicKeyCredential.isConditionalMediationAvailable ="
                         " async () => false;")
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto("/login?rd=/account")
    expect(page.get_by_label("Username")).to_be_visible()
    page.get_by_role("button", name="Use a passkey").click()
    expect(page).to_have_url(re.compile(r"/account$"), timeout=CEREMONY_TIMEOUT_MS)
    expect(page.locator(".signed-in")).to_contain_text("Bob")


def test_a_passwordless_account_refuses_its_old_password(browser: Browser, demo: DemoServer,
                                                         problems: PageProblems) -> None:
    """(After test_passkey_first_sign_in dropped bob's password.) Another browser, no passkey."""
    page = new_page(browser, demo, problems)
    problems.expect(r"status of 401")
    try:
        page.goto("/login?rd=/account")
        page.get_by_label("Username").fill("bob")
        page.get_by_label("Password").fill(demo.user("bob").password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#sg-alert")).to_have_text("The username or password is not right.")
    finally:
        page.context.close()


def test_pages_in_german(browser: Browser, demo: DemoServer, axe: str,
                         problems: PageProblems) -> None:
    """A German browser gets German pages (Accept-Language), clean for axe at both widths."""
    context = browser.new_context(base_url=demo.base_url, locale="de-DE",
                                  viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    try:
        alice = demo.user("alice")
        page.goto("/login?rd=/account")
        expect(page.locator("html")).to_have_attribute("lang", "de")
        check_page(page, axe, "login-de")
        page.get_by_label("Benutzername").fill(alice.username)
        page.get_by_label("Passwort").fill(alice.password)
        page.get_by_role("button", name="Anmelden").click()
        expect(page.get_by_role("heading", name="Ihr Konto")).to_be_visible()
        check_page(page, axe, "account-de")
        page.goto("/transfers")
        page.get_by_label("Amount").fill("3000")
        page.get_by_label("Payee").fill("Ada")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("heading", name="Bestätigen Sie, dass Sie es sind")).to_be_visible()
        expect(page.get_by_role("region", name="Sie geben frei")).to_contain_text("3.000,00\u00a0€")
        expect(page.get_by_role("region", name="Sie geben frei")).to_contain_text("Betrag")
        check_page(page, axe, "step-up-de")
        page.get_by_role("link", name="English").click()
        expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    finally:
        context.close()
