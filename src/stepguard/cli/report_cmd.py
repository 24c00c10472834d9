"""`stepguard report compliance --since 90d -o report.html|report.pdf`."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from stepguard.cli.output import console, errors
from stepguard.cli.replay_cmd import moment
from stepguard.cli.server_cmd import CONFIG, load

app = typer.Typer(help="Reports from the audit ledger.", no_args_is_help=True)


@app.command("compliance")
def compliance(
    config: Path = CONFIG,
    since: str = typer.Option("90d", help="period start: a duration (90d) or an ISO time"),
    until: str = typer.Option("", help="period end: a duration ago or an ISO time; default now"),
    output: Path = typer.Option(..., "-o", "--output", help="report.html or report.pdf"),
    public_key: Path | None = typer.Option(None, help="checkpoint public key (pruned ledgers)"),
    title: str = typer.Option("", help="organisation name on the report (default portal.title)"),
) -> None:
    """Evidence from the ledger mapped to PCI DSS v4.0.1, OWASP ASVS 5.0, NIST SP 800-63B rev 4
    and GDPR: per control the features, configuration in force, counts, samples, the chain
    verification result and the tests that prove it."""
    from stepguard.compliance.report import gather, render_html, write_pdf
    from stepguard.service.runtime import store_url

    if output.suffix.lower() not in (".html", ".htm", ".pdf"):
        errors.print("--output: expected a .html or .pdf file")
        raise typer.Exit(2)
    loaded, now = load(config), time.time()
    evidence = gather(loaded, store_url(loaded), since=moment(since, now, "--since"),
                      until=moment(until, now, "--until") if until else now, now=now,
                      public_key_pem=public_key.read_bytes() if public_key else None)
    html = render_html(evidence, title=title)
    if output.suffix.lower() == ".pdf":
        try:
            write_pdf(html, output)
        except (RuntimeError, OSError) as exc:
            errors.print(f"PDF: {exc}")
            raise typer.Exit(1) from exc
    else:
        output.write_text(html)
    console.print(f"wrote {output} (ledger {'intact' if evidence.chain.ok else 'BROKEN'})")
