"""Browser fixtures: one `stepguard demo` server and one headless Chromium per module.

Each test gets a fresh browser context (its own cookies) opened on `http://localhost:PORT` (the
WebAuthn RP id is `localhost`; Chromium maps it to 127.0.0.1, where the demo listens). `page`
collects console errors, uncaught exceptions and CSP violations; every test ends by asserting
there were none. `shot(page, name)` saves a full-page screenshot under test-output/screenshots/.
Follows /work/shared/TOOLING.md: Debian's /usr/bin/chromium, never `playwright install`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect, sync_playwright

from tests.support.demo_server import CHROMIUM_HOST_RULES, DemoServer
from tests.support.servers import REPO_ROOT, require_binaries

SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 CHROMIUM_HOST_RULES]
TIMEOUT_MS = 10_000
# `context.set_default_timeout` covers actions only; assertions keep Playwright's 5 s unless set.
expect.set_options(timeout=TIMEOUT_MS)
# Reports CSP violations to the console, where the error collector sees them.
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + e.blockedURI);
});"""
# Marks every form that got a submit listener (data-test-submit-handler), so that a test can wait
# until a deferred or asynchronous script handles a form before it clicks its button.
MARK_SUBMIT_HANDLERS = """(() => {
  const add = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (type === "submit" && this instanceof HTMLFormElement) {
      this.setAttribute("data-test-submit-handler", "");
    }
    return add.call(this, type, listener, options);
  };
})();"""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with DemoServer(tmp_path_factory.mktemp("demo")) as server:
        yield server


@pytest.fixture(autouse=True)
def _demo_log_on_failure(request: pytest.FixtureRequest, demo: DemoServer) -> Iterator[None]:
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"--- stepguard demo output (tail) ---\n{demo.log_tail(60)}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_binaries("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems:
    """Console errors, uncaught page errors and CSP violations seen by one page."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    def expect(self, pattern: str) -> None:
        """A problem this test causes on purpose (e.g. a refused request's 403) is not one."""
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [item for item in self.items if not any(p.search(item) for p in self.expected)]

    def console(self, message: ConsoleMessage) -> None:
        url = str(message.location.get("url", ""))
        if url.endswith("/favicon.ico"):
            return  # the demo bank (upstream, not the portal) has no icon: the browser's probe 404s
        if message.type == "error":
            self.items.append(f"console error on {url}: {message.text}")

    def page_error(self, error: Error) -> None:
        self.items.append(f"uncaught exception: {error}")


@pytest.fixture
def problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def page(browser: Browser, demo: DemoServer, problems: PageProblems) -> Iterator[Page]:
    context = browser.new_context(base_url=demo.base_url, viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    yield page
    context.close()
    unexpected = problems.unexpected()
    assert unexpected == [], "the browser reported problems:\n" + "\n".join(unexpected)


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """`shot(page, "step-up")` -> test-output/screenshots/<test>-<nn>-step-up.png (full page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower()).strip("-")
    for old in SCREENSHOTS.glob(f"{test}-[0-9][0-9]-*.png"):
        old.unlink()  # a previous run's pictures of this test
    taken: list[Path] = []

    def take(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{test}-{len(taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)
        return path

    return take


def answer_push(page: Page, number: str) -> None:
    """Pick `number` on the push approval page (opened after `page.add_init_script(
    MARK_SUBMIT_HANDLERS)`). Its answer forms are plain forms until stepguard.js has found this
    browser's key in IndexedDB (asynchronously) and handles their submit by signing the answer:
    a click before that would post the form unsigned. Wait for the handlers first."""
    expect(page.locator("form[data-push-answer]")).not_to_have_count(0)
    expect(page.locator("form[data-push-answer]:not([data-test-submit-handler])")).to_have_count(0)
    page.get_by_role("button", name=number, exact=True).click()
