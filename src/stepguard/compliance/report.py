"""Build the compliance report from a store and a configuration; write HTML, or PDF through
headless Chromium (the same HTML, printed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from stepguard.audit.commands import verify_log
from stepguard.audit.ledger import load_public_key
from stepguard.compliance.controls import CONTROLS, SAMPLES, Control, Finding
from stepguard.compliance.evidence import Evidence, entry_row
from stepguard.config.load import Loaded
from stepguard.storage.audit_stats import AuditStats
from stepguard.storage.audit_store import SqlAuditLog
from stepguard.storage.engine import make_engine

SAMPLE_SIZE = 5
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@dataclass
class Section:
    control: Control
    finding: Finding


def gather(loaded: Loaded, url: str, *, since: float, until: float, now: float,
           public_key_pem: bytes | None = None) -> Evidence:
    """Counts, samples and the chain verdict for [since, until), from the store at `url`."""
    engine = make_engine(url)
    try:
        stats, log = AuditStats(engine), SqlAuditLog(engine)
        named, hidden = stats.pseudonymised(since=since, until=until)
        key = load_public_key(public_key_pem) if public_key_pem else None
        evidence = Evidence(
            config=loaded.config, policy=loaded.policy,
            policy_text=loaded.policy_path.read_text(), since=since, until=until,
            generated=now, tallies=stats.tallies(since=since, until=until),
            chain=verify_log(log, public_key=key), ip_named=named, ip_pseudonymised=hidden)
        for name, (kind, outcome) in SAMPLES.items():
            evidence.samples[name] = list(log.entries(kind=kind, outcome=outcome, since=since,
                                                      until=until, limit=SAMPLE_SIZE))
        return evidence
    finally:
        engine.dispose()


def sections(evidence: Evidence) -> list[Section]:
    return [Section(control, control.assess(evidence)) for control in CONTROLS]


def render_html(evidence: Evidence, *, title: str = "") -> str:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(
        default=True), trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    found = sections(evidence)
    frameworks: dict[str, list[Section]] = {}
    for section in found:
        frameworks.setdefault(section.control.framework, []).append(section)
    totals = {s: sum(1 for x in found if x.finding.status == s) for s in ("met", "gap", "review")}
    return env.get_template("report.html.j2").render(
        e=evidence, frameworks=frameworks, totals=totals, rows=entry_row,
        title=title or evidence.config.portal.title)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_pdf(html: str, out: Path, *, chromium: str | None = None, timeout: float = 60) -> None:
    """Print the HTML to PDF with headless Chromium (A4, the page's own print styles)."""
    binary = chromium or os.environ.get("STEPGUARD_CHROMIUM") or next(
        (found for name in CHROMIUM if (found := shutil.which(name))), None)
    if binary is None:
        raise RuntimeError("PDF output needs Chromium (chromium on PATH or STEPGUARD_CHROMIUM)")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "report.html"
        source.write_text(html)
        profile = Path(folder) / "profile"
        subprocess.run(  # noqa: S603 - a fixed argument list, no shell
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--no-pdf-header-footer",
             f"--print-to-pdf={out.resolve()}", source.as_uri()],
            check=True, timeout=timeout, capture_output=True)
    if not out.exists() or out.read_bytes()[:5] != b"%PDF-":
        raise RuntimeError("Chromium did not write a PDF")
