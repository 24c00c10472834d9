"""Acme Bank: a small upstream app that trusts the identity headers Stepguard adds."""

from __future__ import annotations

from html import escape

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route


def _page(request: Request, title: str, body: str) -> HTMLResponse:
    who = escape(request.headers.get("remote-user", "") or "nobody")
    acr = escape(request.headers.get("stepguard-acr", ""))
    amr = escape(request.headers.get("stepguard-amr", ""))
    return HTMLResponse(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{escape(title)} · Acme Bank</title></head><body>
<header><strong>Acme Bank</strong> — signed in as <span id="user">{who}</span>
(acr {acr}; amr {amr}) · <a href="/account">account</a></header>
<nav><a href="/">Dashboard</a> · <a href="/transfers">Transfer</a> ·
<a href="/customers/export">Export customers</a> · <a href="/admin/audit">Admin audit</a></nav>
<main><h1>{escape(title)}</h1>{body}</main></body></html>""")


async def dashboard(request: Request) -> Response:
    return _page(request, "Dashboard", "<p>Balance: 12,345.67</p>")


async def transfer_form(request: Request) -> Response:
    return _page(
        request,
        "New transfer",
        """<form method="post" action="/transfers">
<label>Amount <input name="amount" inputmode="decimal"></label>
<label>Payee <input name="payee"></label><button>Send</button></form>
<p>Transfers above 1000 need a one-time approval bound to the amount and payee.</p>""",
    )


async def transfer(request: Request) -> Response:
    form = await request.form()
    amount, payee = escape(str(form.get("amount", ""))), escape(str(form.get("payee", "")))
    return _page(request, "Transfer sent", f'<p id="result">Sent {amount} to {payee}.</p>')


async def roles(request: Request) -> Response:
    user = escape(request.path_params["user"])
    return _page(request, "Roles changed", f'<p id="result">Roles of {user} updated.</p>')


async def export(request: Request) -> Response:
    return Response(
        "id,name,email\n1,Ada,ada@example.com\n2,Alan,alan@example.com\n", media_type="text/csv"
    )


async def audit(request: Request) -> Response:
    return _page(
        request, "Admin audit", "<p>See the full ledger at <a href='/admin'>/admin</a>.</p>"
    )


def create_bank() -> Starlette:
    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/transfers", transfer_form, methods=["GET"]),
            Route("/transfers", transfer, methods=["POST"]),
            Route("/admin/users/{user}/roles", roles, methods=["POST"]),
            Route("/customers/export", export),
            Route("/admin/audit", audit),
        ]
    )
