"""Acme Bank with the inline step-up: the transfer is confirmed in a dialog on the bank's own page.

The bank trusts the identity headers Stepguard adds (`Remote-User`), like any app behind
Stepguard's reverse proxy or behind nginx / Caddy forward-auth. Its page loads Stepguard's
`stepguard.js` module (from `/static/inline/stepguard.js`, which every deployment routes to
Stepguard) and sends the transfer with `stepUpFetch`: a large transfer gets Stepguard's RFC 9470
answer, the dialog asks for the passkey / code / push approval on Stepguard's origin, and the
same request is sent once more and answered by the bank.

Run: `python -m uvicorn examples.inline_bank.app:app --port 8080` (see README.md).
"""

from __future__ import annotations

import itertools
import json
from html import escape
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

HERE = Path(__file__).parent
# The bank's own pages: no inline script, scripts only from this origin (Stepguard's module
# comes from the same host in every deployment in README.md); no framing of the bank.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; frame-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_ids = itertools.count(1)
sent: list[dict[str, object]] = []  # every transfer executed, in order (tests read it)


def _page(request: Request) -> HTMLResponse:
    who = escape(request.headers.get("remote-user", "") or "nobody")
    html = (HERE / "index.html").read_text().replace("{{user}}", who)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP})


async def index(request: Request) -> Response:
    return _page(request)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ("bank.js", "bank.css"):
        return Response(status_code=404)
    return FileResponse(HERE / name, headers={"Cache-Control": "no-cache"})


async def transfer(request: Request) -> Response:
    """Execute a transfer; Stepguard has already decided this exact request may go through."""
    try:
        data = json.loads(await request.body() or b"{}")
        amount, payee = float(data["amount"]), str(data["payee"]).strip()
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "amount and payee are needed"}, 400)
    if not payee or amount <= 0:
        return JSONResponse({"error": "amount and payee are needed"}, 400)
    done = {"id": f"t-{next(_ids)}", "amount": amount, "payee": payee,
            "by": request.headers.get("remote-user", "")}
    sent.append(done)
    return JSONResponse(done, 201)


async def transfers(request: Request) -> Response:
    return JSONResponse(sent)


app = Starlette(routes=[
    Route("/", index),
    Route("/assets/{name}", asset),
    Route("/api/transfers", transfer, methods=["POST"]),
    Route("/api/transfers", transfers, methods=["GET"]),
])
