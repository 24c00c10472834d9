"""The compliance report: evidence from a real ledger mapped to PCI DSS v4.0.1, OWASP ASVS 5.0,
NIST SP 800-63B rev 4 and GDPR; rendered to PNG by headless Chromium and checked; printed to
PDF and read back (issue 14)."""

from __future__ import annotations

import ast
import io
import struct
import zlib
from pathlib import Path

import pytest
from pypdf import PdfReader
from starlette.testclient import TestClient
from typer.testing import CliRunner

from stepguard.cli.main import app as cli
from stepguard.compliance.controls import CONTROLS
from stepguard.compliance.report import gather
from stepguard.config.load import load_config
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import store_url
from tests.integration.test_decision_api import (
    DECIDE_PATH,
    Env,
    gateway_app,
    make_env,
    open_session,
    pass_totp,
)

ROOT = Path(__file__).parents[2]
POLICY = """
levels:
  aal2: {max_session: 24h, idle: 1h}
  aal3: {max_session: 12h, idle: 15m}
rules:
  - {name: cde, match: {paths: ["/cardholder/**"]}, require: {level: aal2, max_age: 15m}}
  - {name: keys, match: {paths: ["/keys/**"]}, require: {level: aal3, methods: [webauthn]}}
  - {name: blocked, match: {paths: ["/blocked/**"]}, deny: "no"}
default: {level: aal1}
"""


def traffic(tmp_path: Path, *, extra: str = "") -> Env:
    env = make_env(tmp_path, policy=POLICY)
    if extra:
        config = tmp_path / "stepguard.yaml"
        config.write_text(config.read_text() + extra)
    token, session = open_session(env)
    with TestClient(gateway_app(env.runtime), base_url="http://localhost:9091") as client:
        client.headers["Authorization"] = f"Bearer {env.api_key}"
        body = {"method": "GET", "host": "app.test", "path": "/cardholder/1",
                "client_ip": "203.0.113.9", "session_token": token}
        answer = client.post(DECIDE_PATH, json=body).json()
        pass_totp(env, answer["challenge_url"], session)
        client.post(DECIDE_PATH, json={**body, "path": "/blocked/x"})
        Accounts(env.runtime).disable_user(env.alice.user.id, by="ops")
        env.runtime.audit.flush(timeout=10)
    return env


def test_every_cited_test_exists() -> None:
    for control in CONTROLS:
        for test in control.tests:
            path, name = test.split("::")
            tree = ast.parse((ROOT / path).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, test


def test_findings_follow_the_configuration_and_the_ledger(tmp_path: Path) -> None:
    env = traffic(tmp_path / "a", extra="audit: {pseudonymise_ips: false}\n")
    loaded = load_config(tmp_path / "a" / "stepguard.yaml")
    now = 2_100_000_000.0  # after the test clock (2030)
    evidence = gather(loaded, store_url(loaded), since=0, until=now, now=now)
    by_id = {c.id: c.assess(evidence) for c in CONTROLS}
    assert evidence.chain.ok and evidence.chain.count > 0
    assert by_id["8.4.1–8.4.3"].status == "met"
    assert ("passed with totp", 1) in by_id["8.4.1–8.4.3"].counts
    assert by_id["10.2.1"].status == "review"  # plain allows summarised
    assert by_id["10.5.1"].status == "met"  # nothing pruned: everything kept
    assert by_id["Art. 5(1)(e)"].status == "gap"  # no retention period
    assert by_id["AAL3 authenticators"].status == "met"
    assert dict(by_id["10.2.1"].counts)["administrative actions"] >= 2
    del env
    traffic(tmp_path / "b", extra="audit: {allows: every_request, retention: 400d, "
                                  "pseudonymise_ips: true}\n")
    config = tmp_path / "b" / "stepguard.yaml"
    config.write_text(config.read_text().replace(
        "totp_current: k1}", 'totp_current: k1, ip_pseudonym_key: "0123456789abcdef0123"}'))
    loaded = load_config(config)
    strict = gather(loaded, store_url(loaded), since=0, until=now, now=now)
    by_id = {c.id: c.assess(strict) for c in CONTROLS}
    assert by_id["10.2.1"].status == by_id["Art. 5(1)(e)"].status == "met"
    assert by_id["Art. 25, 32"].status == "met"
    assert any("clear IPs" in note for note in by_id["Art. 25, 32"].notes)


def test_the_report_renders_to_png_and_pdf_with_its_content(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.support.servers import require_binaries

    require_binaries("chromium")
    traffic(tmp_path)
    config = str(tmp_path / "stepguard.yaml")
    html_path, pdf_path = tmp_path / "report.html", tmp_path / "report.pdf"
    runner = CliRunner()
    for out in (html_path, pdf_path):
        result = runner.invoke(cli, ["report", "compliance", "--config", config, "--since",
                                     "3650d", "--until", "2100-01-01", "-o", str(out),
                                     "--title", "Acme Bank"])
        assert result.exit_code == 0, result.output
        assert "ledger intact" in result.output
    assert runner.invoke(cli, ["report", "compliance", "--config", config, "-o",
                               str(tmp_path / "x.doc")]).exit_code == 2

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 794, "height": 1123})  # A4 at 96 dpi
        page.goto(html_path.as_uri())
        text = page.inner_text("body")
        png = page.screenshot(full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        browser.close()
    out = ROOT / "test-output" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compliance-report.png").write_bytes(png)

    for expected in ("Acme Bank: step-up authentication compliance report", "PCI DSS v4.0.1",
                     "OWASP ASVS 5.0", "NIST SP 800-63B rev 4", "GDPR", "8.4.1–8.4.3",
                     "10.3.1–10.3.4", "Tests that prove it", "intact", "user disabled"[:4]):
        assert expected in text, expected
    assert not overflow
    width, height, pixels = decode_png(png)
    assert width == 794 and height > 3000  # a multi-page document
    colours = set(pixels)
    assert (0x1A, 0x7F, 0x37) in colours  # a "met" badge
    assert (0xCF, 0x22, 0x2E) in colours  # a "gap" badge

    reader = PdfReader(io.BytesIO(pdf_path.read_bytes()))
    assert len(reader.pages) >= 3
    pdf_text = " ".join(page.extract_text() for page in reader.pages)
    for expected in ("PCI DSS v4.0.1", "8.5.1", "GDPR", "Art. 25, 32", "NIST SP 800-63B"):
        assert expected in pdf_text, expected


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB(A) PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = colour = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, _depth, colour = struct.unpack(">IIBB", chunk[:10])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    channels = 4 if colour == 6 else 3
    raw, stride = zlib.decompress(idat), width * channels
    pixels: list[tuple[int, int, int]] = []
    previous = bytearray(stride)
    for row in range(height):
        kind = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            line[i] = (line[i] + (0, left, up, (left + up) // 2, _paeth(left, up, corner))[kind]
                       ) & 0xFF
        pixels.extend((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        previous = line
    return width, height, pixels


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
