"""An agent's tool call approved with a passkey in real Chromium, then run exactly once.

The official `mcp` SDK client (the agent) calls `export_customers` on the bank MCP server
(examples/mcp_bank) through a real `stepguard serve`; the policy wants aal3 by passkey for that
call. alice enrols a passkey on a CDP virtual authenticator, then approves on the step-up page,
which shows the agent, server, tool and arguments. Both ways an agent can wait are covered:

- URL elicitation: the SDK client's elicitation callback hands the link to the browser and the
  call, held on the door's stream, runs once when the passkey assertion is accepted;
- no elicitation: the call is refused with -32042 and its link; after the passkey approval the
  agent's retry runs once.

The bank counts executions in its ledger. The page's `navigator.credentials.get` is observed:
the challenge the passkey signed commits to the call's digest (`nonce ‖ SHA-256(domain ‖ nonce
‖ digest)`), so the signature covers what alice saw. A second run of the same call needs a new
approval (single use).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError
from playwright.sync_api import Page, expect

from stepguard.factors.webauthn import BIND_DOMAIN, NONCE_BYTES
from tests.e2e.test_browser import add_virtual_authenticator
from tests.integration import test_mcp_door
from tests.integration.test_mcp_door import Door, approval_url, call, connect

door = test_mcp_door.door  # the same fixture: the bank behind a real `stepguard serve`

pytestmark = pytest.mark.browser
CEREMONY_TIMEOUT_MS = 15_000
EXPORT = {"table": "customers"}
# Hands the challenge of every WebAuthn assertion the page asks for (base64) to the test.
OBSERVE_ASSERTIONS = """(() => {
  const get = navigator.credentials.get.bind(navigator.credentials);
  navigator.credentials.get = (options) => {
    const bytes = new Uint8Array(options.publicKey.challenge);
    window.sgAssertionChallenge(btoa(String.fromCharCode(...bytes)));
    return get(options);
  };
})();"""


@dataclass
class Site:
    """What the e2e fixtures need of the server under test (`demo` in tests/e2e/conftest)."""

    door: Door

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.door.server.port}"

    def log_tail(self, lines: int = 40) -> str:
        return self.door.server.log_tail(lines)


@pytest.fixture(scope="module")
def demo(door: Door) -> Iterator[Site]:
    yield Site(door)  # the e2e fixtures' server (`page`'s base URL, logs on failure)


def agent_call(served: Door, **kw: Any) -> Any:
    """One `export_customers` call by the agent (in its own thread: Playwright's sync API holds
    this one's event loop); raises the call's MCPError."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = asyncio.run(call(served, "export_customers", EXPORT, **kw))
        except MCPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def exports(served: Door) -> int:
    return sum(1 for e in served.executed() if e["kind"] == "export" and e["table"] == "customers")


def sign_in_and_enrol_a_passkey(page: Page, served: Door) -> list[str]:
    """The challenges the page's passkey signs from now on, as they come."""
    signed: list[str] = []
    page.expose_function("sgAssertionChallenge", lambda challenge: signed.append(challenge))
    page.add_init_script(OBSERVE_ASSERTIONS)
    page.goto("/login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(served.password)
    page.get_by_role("button", name="Sign in").click()
    page.goto("/account/passkey")  # needs a fresh aal2 proof first: a TOTP code
    expect(page).to_have_url(re.compile(r"/step-up/[^/]+$"))
    page.get_by_label("6-digit code from your authenticator app").fill(
        pyotp.TOTP(served.totp).now())
    page.get_by_role("button", name="Confirm with code").click()
    expect(page).to_have_url(re.compile(r"/account/passkey$"))
    page.get_by_label("Name for this passkey").fill("Laptop")
    page.get_by_role("button", name="Create passkey").click()
    expect(page.get_by_text("Passkey added.")).to_be_visible(timeout=CEREMONY_TIMEOUT_MS)
    return signed


def approve_with_passkey(page: Page, url: str, signed: list[str],
                         shot: Callable[[Page, str], Path] | None = None) -> str:
    """Open the step-up link, check what it shows, approve with the passkey; the challenge the
    passkey signed (raw bytes, base64)."""
    page.goto(url.replace("http://127.0.0.1", "http://localhost"))
    agent = page.get_by_role("region", name="Your AI agent asks to run a tool")
    expect(agent).to_contain_text("export_customers")
    expect(agent).to_contain_text("Export a customer table as CSV.")
    expect(page.get_by_text("Requested:")).to_have_count(0)  # no return URL for an agent call
    expect(agent.locator("tr.bound")).to_contain_text("customers")  # the bound value
    expect(page.get_by_role("button", name="Confirm with code")).to_have_count(0)  # passkey only
    if shot is not None:
        shot(page, "agent-call-step-up")
    before = len(signed)
    page.get_by_role("button", name="Use your passkey").click()
    expect(page).not_to_have_url(re.compile(r"/step-up/"), timeout=CEREMONY_TIMEOUT_MS)
    assert len(signed) == before + 1
    return signed[-1]


def call_digest_of(served: Door, challenge_url: str) -> str:
    """The digest the challenge was bound to, read from the store (the challenge's binding)."""
    from stepguard.config.load import load_config
    from stepguard.service.runtime import build_runtime

    runtime = build_runtime(load_config(served.workdir / "stepguard.yaml"))
    try:
        challenge = runtime.store.challenges.get(challenge_url.rsplit("/", 1)[1])
        assert challenge is not None
        return challenge.binding
    finally:
        runtime.close()


def assert_signed_over(challenge_b64: str, digest: str) -> None:
    raw = base64.b64decode(challenge_b64)
    nonce = raw[:NONCE_BYTES]
    assert len(digest) == 64
    assert raw[NONCE_BYTES:] == hashlib.sha256(BIND_DOMAIN + nonce + bytes.fromhex(digest)).digest()


def test_a_held_call_runs_once_after_a_passkey_approval(page: Page, door: Door,
                                                        shot: Callable[[Page, str], Path]) -> None:
    add_virtual_authenticator(page)
    signed = sign_in_and_enrol_a_passkey(page, door)
    before = exports(door)

    # 1. URL elicitation: the agent's call waits while alice approves in the browser.
    links: queue.Queue[str] = queue.Queue()
    approved = threading.Event()

    async def elicit(context: Any, params: Any) -> Any:
        links.put(params.url)
        await asyncio.to_thread(approved.wait, 60)
        return types.ElicitResult(action="accept")

    async def agent() -> Any:
        async with connect(door, elicitation=elicit) as client:
            return await client.call_tool("export_customers", EXPORT)

    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=asyncio.run(agent())))
    thread.start()
    try:
        url = links.get(timeout=30)
        assert exports(door) == before  # held, not run
        challenge = approve_with_passkey(page, url, signed, shot)
    finally:
        approved.set()
        thread.join(60)
    result = outcome["result"]
    assert not result.is_error, result
    assert "Ada" in result.content[0].text
    assert exports(door) == before + 1
    assert_signed_over(challenge, call_digest_of(door, url))

    # 2. No elicitation: -32042, the passkey approval, the retry runs once.
    with pytest.raises(MCPError) as held:
        agent_call(door)
    url = approval_url(held.value)
    assert exports(door) == before + 1
    challenge = approve_with_passkey(page, url, signed)
    assert_signed_over(challenge, call_digest_of(door, url))
    assert not agent_call(door).is_error
    assert exports(door) == before + 2

    # Single use: the same call again is held for a new approval.
    with pytest.raises(MCPError) as again:
        agent_call(door)
    approval_url(again.value)
    assert exports(door) == before + 2
