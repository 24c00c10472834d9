"""WCAG 2.2 AA checks with axe-core, and the narrow/wide layout check, for browser tests.

axe-core comes from npm (tests/e2e/axe/package.json, exact version in its package-lock.json):
`install_axe()` runs `npm ci` there once per lockfile (the test setup installs it, on CI too),
and `check_page()` injects `axe.min.js` into the page and fails on any violation of the WCAG
2.0/2.1/2.2 A and AA rules. Each page is also looked at 390 px (a phone) and 1280 px wide,
screenshotted under test-output/screenshots/pages/, and must not scroll sideways.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.support.servers import REPO_ROOT

AXE_DIR = Path(__file__).parent / "axe"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
STAMP = AXE_DIR / "node_modules" / ".stepguard-installed"
SHOTS = REPO_ROOT / "test-output" / "screenshots" / "pages"
WIDTHS = (390, 1280)
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def install_axe() -> str:
    """The axe-core script text, installed from the lockfile with `npm ci` when needed."""
    lock = hashlib.sha256((AXE_DIR / "package-lock.json").read_bytes()).hexdigest()
    if not (STAMP.exists() and STAMP.read_text() == lock and AXE_SCRIPT.exists()):
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is needed to install axe-core")
        result = subprocess.run([str(npm), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                cwd=AXE_DIR, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-2000:]
            _unavailable(f"`npm ci` in tests/e2e/axe failed\n{output}")
        STAMP.write_text(lock)
    return AXE_SCRIPT.read_text()


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the accessibility checks: {message}")
    pytest.skip(message)


def axe_violations(page: Page, axe: str, *, frame_selector: str | None = None) -> list[str]:
    """axe-core's WCAG A/AA violations on the page (or in one of its frames), as text."""
    target = page
    if frame_selector is not None:
        handle = page.locator(frame_selector).element_handle()
        assert handle is not None
        frame = handle.content_frame()
        assert frame is not None
        target = frame  # type: ignore[assignment]
    if not target.evaluate("() => typeof window.axe === 'object'"):
        # Evaluated, not added as a <script>: the pages' CSP allows only their own scripts.
        target.evaluate(axe + "\n;undefined")
    found = target.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})"
        ".then(r => r.violations.map(v => ({id: v.id, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})))", WCAG_AA)
    return [f"{v['id']}: {v['help']} at {json.dumps(v['nodes'])}" for v in found]


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0 = no sideways scrolling)."""
    return int(page.evaluate(
        "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - window.innerWidth"))


def check_page(page: Page, axe: str, name: str, *, frame_selector: str | None = None) -> None:
    """At 390 and 1280 px: screenshot, no sideways overflow, no axe violation."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size or {"width": 1280, "height": 800}
    try:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 800})
            page.wait_for_timeout(50)  # layout settles (media queries)
            page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
            assert overflow(page) <= 0, f"{name} scrolls sideways at {width} px"
            problems = axe_violations(page, axe, frame_selector=frame_selector)
            assert problems == [], f"{name} at {width} px:\n" + "\n".join(problems)
    finally:
        page.set_viewport_size(original)
