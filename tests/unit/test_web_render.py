"""Portal templates, the renderer's filters, and the static JavaScript (run under Node).

Every template is rendered with representative context full of hostile text and parsed with
html.parser: CSRF field in every POST form, no inline script/style/handlers (strict CSP), one
<h1>, one alert region, a label for every field, unique ids, autoescaping. The JavaScript is run
in Node against a fake DOM and real py_webauthn options / soft-authenticator responses, and the
credential JSON it posts is verified by py_webauthn.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jinja2 import UndefinedError
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.structs import PublicKeyCredentialDescriptor

from stepguard.web import charts
from stepguard.web.render import (
    STATIC_DIR,
    TEMPLATES_DIR,
    Renderer,
    as_text,
    duration_text,
    group_by_four,
    level_words,
)
from tests.support.soft_authenticator import SoftAuthenticator

TOKEN = "csrf-token-value_123"
EVIL = "<script>alert('x')</script>&\""
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;"
QR = '<svg width="180" height="180" class="segno"><title>QR</title><path d="M4 4.5h7"/></svg>'
USER = {"name": EVIL, "email": "alice@example.com"}


def _challenge(**overrides: Any) -> dict[str, Any]:
    challenge = {
        "id": "c1",
        "reasons": [EVIL, "You are on a new device"],
        "bound_values": [("amount", "1,500.00 EUR"), ("payee", EVIL)],
        "level_label": "aal2",
        "methods": ["webauthn", "push", "totp", "recovery"],
        "expires_in": 300,
        "held_method": "POST",
        "return_url": "https://app.example.com/transfer?x=" + EVIL,
    }
    challenge.update(overrides)
    return challenge


STEP_UP_URLS = {
    "totp_url": "/step-up/c1/totp",
    "recovery_url": "/step-up/c1/recovery",
    "webauthn_begin_url": "/step-up/c1/webauthn/begin",
    "webauthn_finish_url": "/step-up/c1/webauthn/finish",
    "push_start_url": "/step-up/c1/push",
    "push_status_url": "/step-up/c1/push/status",
    "account_url": "/account",
}

PAGES: dict[str, dict[str, Any]] = {
    "login.html": {
        "action_url": "/login",
        "error": EVIL,
        "challenge_id": "c1",
        "reasons": ["Sign in to continue.", EVIL],
    },
    "step_up.html": {
        "challenge": _challenge(not_set_up=["webauthn"]),
        "user": USER,
        "error": EVIL,
        "push": None,
        **STEP_UP_URLS,
    },
    "agents.html": {
        "agents": [{"id": "a1", "name": EVIL, "live": True, "expires": 1.9e9, "last_used": None},
                   {"id": "a2", "name": "old", "live": False, "expires": 1.8e9,
                    "last_used": 1.7e9}],
        "new_token": "sga_0123456789abcdef_" + "x" * 43,
        "create_url": "/account/agents", "revoke_url": "/account/agents/revoke",
        "mcp_url": "https://sg.example.com/mcp/<server>",
        "user": USER,
    },
    "confirm.html": {
        "held": {
            "method": "post",
            "url": "https://app.example.com/transfer?" + EVIL,
            "fields": [("amount", "1500"), ("note", EVIL)],
            "size": 2048,
        },
        "confirm_url": "/step-up/c1/confirm",
        "cancel_url": "/account",
        "user": USER,
    },
    "push_approve.html": {
        "push": {
            "id": "p1",
            "options": [17, 42, 86],
            "requested_at": "Today 14:02 UTC",
            "expires_in": 100,
            "ip": "203.0.113.7",
            "location": "Berlin, " + EVIL,
            "browser": EVIL,
            "reasons": [EVIL],
            "bound_values": [("amount", "5000"), ("payee", EVIL)],
            "nonce": "nonce-1",
            "digest": "ab" * 32,
        },
        "devices": ["d1", "d2"],
        "answer_url": "/account/push/p1",
        "user": USER,
    },
    "account.html": {
        "user": USER,
        "flash": EVIL,
        "factors": [
            {
                "id": "f1",
                "kind": "webauthn",
                "label": EVIL,
                "created_text": "1 May",
                "last_used_text": "today",
            },
            {
                "id": "f2",
                "kind": "totp",
                "label": "Phone",
                "created_text": "2 May",
                "last_used_text": None,
            },
        ],
        "sessions": [
            {
                "id": "s1",
                "current": True,
                "ip": "203.0.113.7",
                "user_agent": "Firefox",
                "created_text": "today",
                "last_seen_text": "now",
            },
            {
                "id": "s2",
                "current": False,
                "ip": "198.51.100.2",
                "user_agent": EVIL,
                "created_text": "yesterday",
                "last_seen_text": "1 hour ago",
            },
        ],
        "devices": [{"browser": EVIL, "last_seen_text": "now", "current": False},
                    {"browser": "Firefox 128 on Linux", "last_seen_text": "now", "current": True}],
        "events": [{"at_text": "14:02", "text": "Signed in", "detail": [EVIL]}],
        "pending_pushes": [{"id": "p1", "url": "/account/push/p1"}],
        "push_devices": [
            {"id": "d1", "label": EVIL, "browser": "Chrome 126 on Android",
             "created_text": "1 May", "last_used_text": "never"},
        ],
        "revoke_url": "/account/sessions/revoke",
        "end_all_url": "/account/sessions/end-all",
        "remove_factor_url": "/account/factors/remove",
        "enrol_totp_url": "/account/totp",
        "enrol_passkey_url": "/account/passkey",
        "enrol_push_url": "/account/push-device",
        "recovery_url": "/account/recovery",
        "logout_url": "/logout",
        "db_tokens_url": "/account/db-tokens",
    },
    "db_tokens.html": {
        "tokens": [{"id": "0123456789abcdef", "level": "aal2", "current": True,
                    "expires_in": "480 min"},
                   {"id": EVIL, "level": "aal1", "current": False, "expires_in": "3 min"}],
        "databases": ["app", EVIL],
        "issued_url": "postgresql://alice.0123456789abcdef:" + EVIL + "@db:6432/app",
        "issue_url": "/account/db-tokens", "revoke_url": "/account/db-tokens/revoke",
        "user": USER,
    },
    "enrol_totp.html": {
        "qr_svg": QR,
        "secret": "JBSWY3DPEHPK3PXP" + EVIL,
        "otpauth_uri": "otpauth://totp/Stepguard:alice?secret=JBSWY3DPEHPK3PXP&issuer=Stepguard",
        "confirm_url": "/account/totp",
        "error": EVIL,
        "user": USER,
    },
    "enrol_passkey.html": {
        "begin_url": "/account/passkey/begin",
        "finish_url": "/account/passkey/finish",
        "error": EVIL,
        "user": USER,
    },
    "enrol_push.html": {
        "begin_url": "/account/push-device/begin",
        "finish_url": "/account/push-device/finish",
        "error": EVIL,
        "user": USER,
    },
    "recovery_codes.html": {
        "codes": ["ABCDE-FGHJK-MNPQR", EVIL],
        "done_url": "/account",
        "user": USER,
    },
    "admin.html": {
        "user": USER,
        "role": "admin",
        "may": {"auditor": True, "operator": True, "admin": True},
        "users": [
            {"id": "u1", "username": "alice", "display_name": EVIL, "groups": ["admins", "ops"],
             "disabled": False, "role": "admin", "factor_count": 2, "source": "local"},
            {"id": "u2", "username": "bob", "display_name": "Bob", "groups": [],
             "disabled": True, "role": "", "factor_count": 0, "source": "corp-idp"},
        ],
        "sessions": [{"id": "s9", "user": "alice", "ip": "203.0.113.7", "last_seen_text": "now"}],
        "chain": {"head": 7, "hash": "0123456789abcdef", "count": 7, "checkpoint": 0,
                  "verified": {"at": "now", "ok": True, "text": "ok"}},
        "policy": {"version": 3, "digest": "abcdef0123456789", "loaded": "today",
                   "mode": "enforce", "report_rules": [EVIL]},
        "shadow": [{"rule": EVIL, "allow": 5, "would_step_up": 2}],
        "dead_letters": 1,
    },
    "admin_confirm.html": {
        "user": USER, "heading": "Disable alice?", "text": EVIL,
        "action": "/admin/users/disable", "fields": {"user_id": "u1"},
    },
    "admin_created.html": {"user": USER, "role": "admin", "username": EVIL, "password": "pw"},
    "admin_audit.html": {
        "user": USER, "role": "auditor",
        "filters": {"user": EVIL, "rule": "", "outcome": "", "kind": "decision", "from": "",
                    "to": ""},
        "entries": [{"seq": 7, "at_text": "14:02", "kind": "decision", "subject": "alice",
                     "request": "GET app.test/x", "rule": "large-transfer",
                     "decision": "step_up", "outcome": "step_up", "factor": "",
                     "reasons": [EVIL, "new device"]}],
        "next_url": "/admin/audit?before=7", "first_url": "/admin/audit",
    },
    "admin_policy.html": {
        "user": USER, "role": "auditor",
        "current": {"version": 2, "digest": "ab" * 32, "loaded": "today", "source": "p.yaml",
                    "text": EVIL},
        "previous": {"version": 1, "loaded": "yesterday"}, "diff": "-a\n+b\n",
        "versions": [{"version": 2, "digest": "abab", "loaded": "today"}],
        "rules": [{"name": "r", "mode": "report", "description": EVIL}],
    },
    "admin_notifications.html": {
        "user": USER, "role": "auditor",
        "letters": [{"at": "now", "target": "hooks.example", "event": "lockout",
                     "attempts": 6, "error": EVIL}],
    },
    "admin_dashboard.html": {
        "user": USER, "role": "auditor", "period": "7d", "periods": ["24h", "7d", "30d"],
        "charts": [(EVIL, charts.bars(EVIL, [(EVIL, 3)], ident="c1")),
                   ("Over time", charts.stacked("t", ["a", "b"], {"allow": [1, 2]},
                                                ident="c2")),
                   ("Pairs", charts.paired("p", [("totp", 2, 1)], ("started", "passed"),
                                           ident="c3"))],
        "tables": [("Rules", [(EVIL, 3)], ["rule", "count"])],
    },
    "inline_done.html": {"embedded": True, "parent_origin": EVIL,
                          "inline_challenge": "c1"},
    "message.html": {
        "heading": "Request denied",
        "message": EVIL,
        "link": {"href": "/account", "text": "Back to your account"},
    },
}


class Page(HTMLParser):
    """The parts of a rendered page the tests look at."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.forms: list[dict[str, Any]] = []
        self.scripts: list[dict[str, Any]] = []
        self.labels: set[str] = set()
        self._form: dict[str, Any] | None = None
        self._script: dict[str, Any] | None = None
        self._element: list[dict[str, Any]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "form":
            method = (attributes.get("method") or "get").lower()
            self._form = {"method": method, "action": attributes.get("action"), "fields": []}
            self.forms.append(self._form)
        elif tag in {"input", "button", "select", "textarea"} and self._form is not None:
            self._form["fields"].append({"tag": tag, **attributes})
        elif tag == "label" and attributes.get("for"):
            self.labels.add(str(attributes["for"]))
        elif tag == "script":
            self._script = {"attrs": attributes, "text": ""}
            self.scripts.append(self._script)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script["text"] += data

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attributes for name, attributes in self.tags if name == tag]

    def with_attr(self, name: str, value: str | None = None) -> list[dict[str, str | None]]:
        return [a for _, a in self.tags if name in a and (value is None or a[name] == value)]


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def render(renderer: Renderer, name: str, **overrides: Any) -> str:
    return renderer.render(name, csrf_token=TOKEN, **{**PAGES[name], **overrides})


# --- every page ------------------------------------------------------------------------------


def test_every_template_has_a_representative_context() -> None:
    templates = {p.name for p in TEMPLATES_DIR.glob("*.html")
                 if not p.name.startswith("_")} - {"base.html"}  # partials are included
    assert templates == set(PAGES)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_post_forms_carry_the_csrf_token(renderer: Renderer, name: str) -> None:
    page = Page(render(renderer, name))
    for form in page.forms:
        tokens = [f for f in form["fields"] if f.get("name") == "csrf_token"]
        if form["method"] == "post":
            assert tokens == [
                {"tag": "input", "type": "hidden", "name": "csrf_token", "value": TOKEN}
            ]
            assert form["action"], f"a POST form without action in {name}"
        else:
            assert tokens == [], "a GET form must not leak the token into the URL"
    assert page.with_attr("name", "csrf-token") == [{"name": "csrf-token", "content": TOKEN}]


@pytest.mark.parametrize("name", sorted(PAGES))
def test_pages_fit_a_strict_content_security_policy(renderer: Renderer, name: str) -> None:
    html = render(renderer, name)
    page = Page(html)
    assert page.all("style") == []
    for tag, attributes in page.tags:
        assert "style" not in attributes, f"inline style on <{tag}> in {name}"
        assert not [a for a in attributes if a.startswith("on")], f"handler on <{tag}> in {name}"
        for attr in ("href", "src", "action"):
            value = (attributes.get(attr) or "").strip().lower()
            assert not value.startswith(("javascript:", "data:", "http:", "https:", "//")), value
    for script in page.scripts:
        assert script["text"].strip() == ""
        assert script["attrs"] == {"src": "/static/stepguard.js", "defer": None}
    assert page.with_attr("rel", "stylesheet") == [
        {"rel": "stylesheet", "href": "/static/stepguard.css"}
    ]


@pytest.mark.parametrize("name", sorted(PAGES))
def test_pages_are_accessible(renderer: Renderer, name: str) -> None:
    page = Page(render(renderer, name))
    assert len(page.all("h1")) == 1
    assert len(page.all("main")) == 1
    assert len(page.with_attr("role", "alert")) == 1
    assert page.all("html")[0]["lang"] == "en"
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert len(ids) == len(set(ids)), f"duplicate ids in {name}"
    for _, attributes in [t for t in page.tags if t[0] in {"input", "select", "textarea"}]:
        if attributes.get("type") in {"hidden", "submit", "button"}:
            continue
        assert attributes.get("id") in page.labels or attributes.get("aria-label"), attributes


@pytest.mark.parametrize("name", sorted(PAGES))
def test_hostile_text_is_escaped(renderer: Renderer, name: str) -> None:
    html = render(renderer, name)
    assert "<script>alert" not in html
    assert ESCAPED in html or "&lt;script&gt;" in html


@pytest.mark.parametrize("name", sorted(PAGES))
def test_missing_context_raises(renderer: Renderer, name: str) -> None:
    required = [
        k
        for k in PAGES[name]
        if k not in {"error", "user", "flash", "push", "link", "challenge_id", "reasons",
                     "embedded", "parent_origin", "inline_challenge"}
    ]
    for key in required:
        context = {k: v for k, v in PAGES[name].items() if k != key}
        with pytest.raises(UndefinedError):
            renderer.render(name, csrf_token=TOKEN, **context)


def test_csrf_token_is_required(renderer: Renderer) -> None:
    with pytest.raises(UndefinedError):
        renderer.render("message.html", heading="x", message="y")


def test_error_goes_to_the_alert_region_and_flash_to_a_status(renderer: Renderer) -> None:
    html = render(renderer, "account.html", error="Wrong code, try again.")
    assert (
        '<div class="alert" id="sg-alert" role="alert" tabindex="-1">Wrong code, try again.</div>'
        in html
    )
    assert f'<p class="flash" role="status">{ESCAPED}</p>' in html


def test_title_user_and_static_prefix(renderer: Renderer) -> None:
    custom = Renderer(title="Acme Login", static_prefix="/assets")
    html = custom.render("message.html", csrf_token="", heading="Gone", message="m", user=USER)
    assert "<title>Gone · Acme Login</title>" in html
    assert 'href="/assets/stepguard.css"' in html and 'src="/assets/stepguard.js"' in html
    assert f"Signed in as <strong>{ESCAPED}</strong>" in html
    assert "Signed in" not in render(renderer, "login.html")


def test_static_assets_exist() -> None:
    assert (STATIC_DIR / "stepguard.js").is_file()
    css = (STATIC_DIR / "stepguard.css").read_text()
    assert "prefers-color-scheme: dark" in css and ":focus-visible" in css
    assert "@import" not in css and "url(" not in css  # no external assets


# --- login -----------------------------------------------------------------------------------


def test_login_form(renderer: Renderer) -> None:
    page = Page(render(renderer, "login.html"))
    (form,) = page.forms
    assert form["action"] == "/login" and form["method"] == "post"
    names = {f.get("name"): f for f in form["fields"]}
    assert names["challenge_id"]["value"] == "c1" and names["challenge_id"]["type"] == "hidden"
    assert names["username"]["autocomplete"] == "username webauthn"  # passkey autofill
    assert names["password"]["type"] == "password"
    assert names["password"]["autocomplete"] == "current-password"


def test_login_without_optional_context(renderer: Renderer) -> None:
    html = renderer.render("login.html", csrf_token=TOKEN, action_url="/login")
    assert "challenge_id" not in html and 'class="reasons"' not in html
    assert "Sign in to continue." in render(renderer, "login.html")


# --- step-up ---------------------------------------------------------------------------------


def _sections(html: str) -> list[str]:
    return [str(a["id"]) for a in Page(html).all("h3")]


def test_step_up_shows_why_and_what(renderer: Renderer) -> None:
    html = render(renderer, "step_up.html")
    assert "Why am I asked?" in html and "You are approving" in html
    assert f"<li>{ESCAPED}</li>" in html
    assert '<tr><th scope="row">amount</th><td>1,500.00 EUR</td></tr>' in html
    assert f'<tr><th scope="row">payee</th><td>{ESCAPED}</td></tr>' in html
    assert level_words("aal2") in html and "aal2" not in html.split("<main", 1)[1]  # plain words
    assert "expires in 5 minutes" in html
    assert "Your form submission (POST) is kept" in html


def test_step_up_without_bound_values_or_held_body(renderer: Renderer) -> None:
    challenge = _challenge(bound_values=[], held_method=None, reasons=[])
    html = render(renderer, "step_up.html", challenge=challenge)
    assert "You are approving" not in html and "is kept" not in html
    assert "needs a fresh proof" in html


def test_step_up_offers_exactly_the_allowed_methods_in_order(renderer: Renderer) -> None:
    html = render(renderer, "step_up.html", challenge=_challenge(methods=["totp", "webauthn"]))
    assert _sections(html) == ["method-totp", "method-webauthn"]
    assert "push" not in [f["action"] for f in Page(html).forms]
    html = render(renderer, "step_up.html", challenge=_challenge(methods=[]))
    assert _sections(html) == [] and "None of the ways allowed" in html


def test_step_up_lists_methods_not_set_up(renderer: Renderer) -> None:
    challenge = _challenge(methods=["totp"], not_set_up=["webauthn", "push"])
    page = Page(html := render(renderer, "step_up.html", challenge=challenge))
    assert "Passkey or security key: not set up." in html
    assert "Approval on another device: not set up." in html
    assert len(page.with_attr("href", "/account")) == 3  # two "set it up" links + manage link


def test_step_up_totp_and_recovery_inputs(renderer: Renderer) -> None:
    page = Page(render(renderer, "step_up.html"))
    forms = {f["action"]: f for f in page.forms}
    (totp,) = [f for f in forms["/step-up/c1/totp"]["fields"] if f.get("name") == "code"]
    assert totp["inputmode"] == "numeric" and totp["autocomplete"] == "one-time-code"
    assert totp["pattern"] == "[0-9 ]{6,10}" and "required" in totp
    (recovery,) = [f for f in forms["/step-up/c1/recovery"]["fields"] if f.get("name") == "code"]
    assert recovery["autocomplete"] == "off" and recovery["spellcheck"] == "false"


def test_step_up_passkey_button_is_wired_by_data_attributes(renderer: Renderer) -> None:
    page = Page(render(renderer, "step_up.html"))
    (button,) = page.with_attr("data-webauthn")
    assert button["data-webauthn"] == "authenticate"
    assert button["data-begin-url"] == "/step-up/c1/webauthn/begin"
    assert button["data-finish-url"] == "/step-up/c1/webauthn/finish"
    assert "hidden" in button and button["type"] == "button"
    assert len(page.all("noscript")) == 1


def test_step_up_push_before_and_after_sending(renderer: Renderer) -> None:
    before = Page(render(renderer, "step_up.html"))
    assert "/step-up/c1/push" in [f["action"] for f in before.forms]
    assert before.with_attr("data-push-status-url") == []

    html = render(renderer, "step_up.html", push={"number": 42, "expires_in": 120})
    after = Page(html)
    assert "/step-up/c1/push" not in [f["action"] for f in after.forms]
    assert '<p class="push-number">42</p>' in html
    (status,) = after.with_attr("data-push-status-url")
    assert status["data-push-status-url"] == "/step-up/c1/push/status"
    assert status["data-push-expires-in"] == "120" and status["role"] == "status"


# --- other pages -----------------------------------------------------------------------------


def test_confirm_shows_the_held_request(renderer: Renderer) -> None:
    html = render(renderer, "confirm.html")
    page = Page(html)
    (form,) = page.forms
    assert form["action"] == "/step-up/c1/confirm"
    assert [f for f in form["fields"] if f["tag"] == "button"][0]["type"] == "submit"
    assert "Send the request" in html and "2.0 kB" in html and "<td>POST</td>" in html
    assert f'<tr><th scope="row">note</th><td>{ESCAPED}</td></tr>' in html
    assert page.with_attr("href", "/account")[0]["class"] == "button-link"


def test_push_approve_has_one_form_per_number_and_a_refusal(renderer: Renderer) -> None:
    page = Page(render(renderer, "push_approve.html"))
    picks = [
        next(f["value"] for f in form["fields"] if f.get("name") == "picked") for form in page.forms
    ]
    assert picks == ["17", "42", "86", "0"]
    assert {form["action"] for form in page.forms} == {"/account/push/p1"}
    for form in page.forms:  # stepguard.js fills in the device and its signature
        names = [f.get("name") for f in form["fields"]]
        assert "device_id" in names and "signature" in names
    (box,) = page.with_attr("data-push-approve")
    assert box["data-push-id"] == "p1" and box["data-push-nonce"] == "nonce-1"
    assert box["data-push-digest"] == "ab" * 32 and box["data-push-devices"] == "d1 d2"


def test_push_approve_says_where_and_what(renderer: Renderer) -> None:
    html = render(renderer, "push_approve.html")
    assert "203.0.113.7" in html and "Berlin, " + ESCAPED in html
    assert f"<dt>Browser</dt><dd>{ESCAPED}</dd>" in html
    assert f'<tr><th scope="row">payee</th><td>{ESCAPED}</td></tr>' in html
    unknown = render(renderer, "push_approve.html",
                     push={**PAGES["push_approve.html"]["push"], "location": ""})
    assert "Not known" in unknown


def test_account_forms(renderer: Renderer) -> None:
    page = Page(render(renderer, "account.html"))
    by_action: dict[str, list[dict[str, Any]]] = {}
    for form in page.forms:
        by_action.setdefault(form["action"], []).append(form)
    revoked = [
        f.get("value")
        for form in by_action["/account/sessions/revoke"]
        for f in form["fields"]
        if f.get("name") == "session_id"
    ]
    assert revoked == ["s2"]  # never the current session
    removed = [
        f.get("value")
        for form in by_action["/account/factors/remove"]
        for f in form["fields"]
        if f.get("name") == "factor_id"
    ]
    assert removed == ["f1", "f2", "d1"]
    assert len(by_action["/account/recovery"]) == 1 and len(by_action["/logout"]) == 1
    assert page.with_attr("href", "/account/totp") and page.with_attr("href", "/account/passkey")
    assert page.with_attr("href", "/account/push/p1")
    assert page.with_attr("href", "/account/push-device")


def test_enrol_totp_trusts_only_the_qr_svg(renderer: Renderer) -> None:
    html = render(renderer, "enrol_totp.html")
    assert QR in html
    assert len(Page(html).all("svg")) == 1
    assert "JBSW Y3DP EHPK 3PXP" in html
    assert (
        'href="otpauth://totp/Stepguard:alice?secret=JBSWY3DPEHPK3PXP&amp;issuer=Stepguard"' in html
    )


def test_enrol_passkey_button(renderer: Renderer) -> None:
    page = Page(render(renderer, "enrol_passkey.html"))
    (button,) = page.with_attr("data-webauthn", "register")
    assert button["data-label-input"] == "passkey-label"
    assert page.with_attr("id", "passkey-label")[0]["maxlength"] == "64"
    assert button["data-begin-url"] == "/account/passkey/begin"


def test_recovery_codes_page(renderer: Renderer) -> None:
    html = render(renderer, "recovery_codes.html")
    assert "<li><code>ABCDE-FGHJK-MNPQR</code></li>" in html
    assert "shown only this once" in html and 'href="/account"' in html


def test_admin_page(renderer: Renderer) -> None:
    html = render(renderer, "admin.html")
    page = Page(html)
    disabled = [
        f.get("value")
        for form in page.forms
        if form["action"] == "/admin/users/disable"
        for f in form["fields"]
        if f.get("name") == "user_id"
    ]
    assert disabled == ["u1"]  # bob is disabled already
    assert '<td data-label="Groups">admins, ops</td>' in html and ESCAPED in html
    assert "None" not in html
    auditor = render(renderer, "admin.html",
                     may={"auditor": True, "operator": False, "admin": False})
    actions = {f["action"] for f in Page(auditor).forms}
    assert actions == {"/admin/chain/verify"}  # an auditor is shown no action


def test_admin_audit_filters(renderer: Renderer) -> None:
    page = Page(render(renderer, "admin_audit.html"))
    (filters,) = [f for f in page.forms if f["method"] == "get"]
    assert filters["action"] == "/admin/audit"
    assert [f.get("name") for f in filters["fields"] if f["tag"] in ("input", "select")] == [
        "user", "rule", "outcome", "kind", "from", "to"]
    assert page.with_attr("id", "f-user")[0]["value"] == EVIL  # attribute round-trips escaped


def test_message_page_link_is_optional(renderer: Renderer) -> None:
    html = renderer.render("message.html", csrf_token="", heading="Expired", message="Start again.")
    assert "<h1>Expired</h1>" in html and "<a href" not in html.split("<main")[1]
    assert '<a href="/account">Back to your account</a>' in render(renderer, "message.html")


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 seconds"),
        (1, "1 second"),
        (45, "45 seconds"),
        (59.2, "1 minute"),
        (60, "1 minute"),
        (61, "2 minutes"),
        (300, "5 minutes"),
        (3600, "1 hour"),
        (5400, "1 hour 30 minutes"),
        (7260, "2 hours 1 minute"),
        (-5, "0 seconds"),
    ],
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_group_by_four_and_as_text() -> None:
    assert group_by_four("JBSWY3DPEHPK3PXPAB") == "JBSW Y3DP EHPK 3PXP AB"
    assert group_by_four("JBSW Y3DP") == "JBSW Y3DP"
    assert as_text(None) == "" and as_text("a") == "a" and as_text(["a", "b"]) == "a; b"
    assert level_words("custom") == "custom"


# --- the JavaScript, run in Node -------------------------------------------------------------

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
ORIGIN = "https://portal.example.com"
RP_ID = "portal.example.com"

HARNESS = r"""
"use strict";
const fs = require("fs");
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = { fetches: [], assigned: null, delays: [], seen: null, hasSignal: false };
const realSetTimeout = setTimeout;

function ab(text) {
  const b = Buffer.from(text, "base64url");
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}
function hex(buffer) { return Buffer.from(new Uint8Array(buffer)).toString("hex"); }
function attrs(map) {
  return function (name) {
    return Object.prototype.hasOwnProperty.call(map, name) ? map[name] : null;
  };
}

const regions = {
  "sg-alert": { textContent: "", focus() {} },
  "sg-status": { textContent: "" },
  "passkey-label": { value: input.label || "" },
};
let clickHandler = null;
const button = {
  hidden: true, disabled: false, getAttribute: attrs(input.button || {}),
  addEventListener(type, fn) { if (type === "click") clickHandler = fn; },
};
const unsupported = { hidden: true };
const pushElement = { textContent: "Waiting", getAttribute: attrs(input.push || {}) };

globalThis.window = globalThis;
window.location = {
  href: "https://portal.example.com/step-up/c1",
  assign(url) { out.assigned = url; },
};
if (input.supported !== false) { window.PublicKeyCredential = function PublicKeyCredential() {}; }
globalThis.setTimeout = function (fn, delay) {
  out.delays.push(delay);
  return realSetTimeout(fn, input.fastTimers ? 0 : delay);
};
globalThis.document = {
  readyState: "complete",
  querySelector(selector) {
    const meta = { getAttribute() { return input.csrf; } };
    return selector === 'meta[name="csrf-token"]' ? meta : null;
  },
  querySelectorAll(selector) {
    if (selector === "[data-webauthn]") { return input.button ? [button] : []; }
    if (selector === "[data-webauthn-unsupported]") { return [unsupported]; }
    if (selector === "[data-push-status-url]") { return input.push ? [pushElement] : []; }
    return [];
  },
  getElementById(id) { return regions[id] || null; },
  addEventListener() {},
};

function describe(pk) {
  return {
    challenge: hex(pk.challenge), challengeIsBuffer: pk.challenge instanceof ArrayBuffer,
    userId: pk.user ? hex(pk.user.id) : null, rp: pk.rp || null, rpId: pk.rpId || null,
    excludeCredentials: (pk.excludeCredentials || []).map((c) => hex(c.id)),
    allowCredentials: (pk.allowCredentials || []).map((c) => hex(c.id)),
  };
}
function credentialObject(json, register) {
  const r = json.response;
  const response = register
    ? { clientDataJSON: ab(r.clientDataJSON), attestationObject: ab(r.attestationObject),
        getTransports() { return r.transports; } }
    : { clientDataJSON: ab(r.clientDataJSON), authenticatorData: ab(r.authenticatorData),
        signature: ab(r.signature), userHandle: r.userHandle ? ab(r.userHandle) : null };
  return { id: json.id, rawId: ab(json.rawId), type: json.type,
           authenticatorAttachment: json.authenticatorAttachment, response,
           getClientExtensionResults() { return {}; } };
}
function answer(options, register) {
  out.seen = describe(options.publicKey);
  out.hasSignal = options.signal instanceof AbortSignal;
  if (input.hang) {
    return new Promise((resolve, reject) => {
      const abort = () => reject(new DOMException("aborted", "AbortError"));
      options.signal.addEventListener("abort", abort);
    });
  }
  return Promise.resolve(credentialObject(input.credential, register));
}
Object.defineProperty(globalThis, "navigator", {
  value: { credentials: { create: (o) => answer(o, true), get: (o) => answer(o, false) } },
  configurable: true, writable: true,
});

const replies = input.replies || [];
globalThis.fetch = async function (url, init) {
  init = init || {};
  out.fetches.push({ url, method: init.method || "GET", credentials: init.credentials || null,
                     headers: init.headers || {}, body: init.body ? JSON.parse(init.body) : null });
  const reply = replies.shift();
  if (!reply) { throw new Error("unexpected request"); }
  return { ok: reply.status < 400, status: reply.status,
           async text() { return JSON.stringify(reply.body); } };
};

require(input.script);

(async () => {
  if (clickHandler) { clickHandler(); }
  const until = Date.now() + 5000;
  while (Date.now() < until) {
    await new Promise((resolve) => realSetTimeout(resolve, 5));
    const ceremonyDone = !input.button || input.supported === false || !button.disabled;
    const pollDone = !input.push || replies.length === 0 || pushElement.textContent !== "Waiting";
    if (ceremonyDone && pollDone) { break; }
  }
  await new Promise((resolve) => realSetTimeout(resolve, 20));
  out.alert = regions["sg-alert"].textContent;
  out.status = regions["sg-status"].textContent;
  out.buttonHidden = button.hidden;
  out.unsupportedHidden = unsupported.hidden;
  out.pushText = pushElement.textContent;
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})();
"""


def run_js(tmp_path: Path, **spec: Any) -> dict[str, Any]:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"script": str(STATIC_DIR / "stepguard.js"), "csrf": TOKEN, **spec})
    )
    done = subprocess.run(  # noqa: S603
        [str(NODE), str(harness), str(spec_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


REGISTER_BUTTON = {
    "data-webauthn": "register",
    "data-begin-url": "/account/passkey/begin",
    "data-finish-url": "/account/passkey/finish",
    "data-label-input": "passkey-label",
}
AUTH_BUTTON = {
    "data-webauthn": "authenticate",
    "data-begin-url": "/step-up/c1/webauthn/begin",
    "data-finish-url": "/step-up/c1/webauthn/finish",
}


def _registration(soft: SoftAuthenticator) -> tuple[Any, str]:
    options = generate_registration_options(
        rp_id=RP_ID,
        rp_name="Stepguard",
        user_id=b"user-1",
        user_name="alice",
        exclude_credentials=[PublicKeyCredentialDescriptor(id=b"\x01\x02old")],
    )
    options_json = options_to_json(options)
    return options, options_json


def _begin_request_ok(fetch: dict[str, Any], url: str) -> None:
    assert fetch["url"] == url and fetch["method"] == "POST"
    assert fetch["credentials"] == "same-origin"
    assert fetch["headers"]["X-CSRF-Token"] == TOKEN
    assert fetch["headers"]["Content-Type"] == "application/json"


@needs_node
def test_js_registration_round_trip_verifies_with_py_webauthn(tmp_path: Path) -> None:
    soft = SoftAuthenticator(origin=ORIGIN)
    options, options_json = _registration(soft)
    credential = json.loads(soft.create(options_json))
    out = run_js(
        tmp_path,
        button=REGISTER_BUTTON,
        label="  Work laptop ",
        credential=credential,
        replies=[
            {"status": 200, "body": json.loads(options_json)},
            {"status": 200, "body": {"redirect": "/account"}},
        ],
    )
    assert out["alert"] == "" and out["buttonHidden"] is False and out["hasSignal"] is True
    assert out["seen"]["challenge"] == options.challenge.hex() and out["seen"]["challengeIsBuffer"]
    assert out["seen"]["userId"] == b"user-1".hex()
    assert out["seen"]["excludeCredentials"] == [b"\x01\x02old".hex()]
    assert out["seen"]["rp"] == {"name": "Stepguard", "id": RP_ID}
    begin, finish = out["fetches"]
    _begin_request_ok(begin, "/account/passkey/begin")
    assert begin["body"] == {"label": "Work laptop"}
    _begin_request_ok(finish, "/account/passkey/finish")
    body = finish["body"]
    assert body["label"] == "Work laptop"
    assert body["response"]["transports"] == ["internal", "hybrid"]
    assert body["authenticatorAttachment"] == "platform" and body["clientExtensionResults"] == {}
    verified = verify_registration_response(
        credential=parse_registration_credential_json(body),
        expected_challenge=options.challenge,
        expected_origin=ORIGIN,
        expected_rp_id=RP_ID,
        require_user_verification=True,
    )
    assert verified.credential_id == soft.credentials[verified.credential_id].credential_id
    assert out["assigned"] == ORIGIN + "/account"
    assert 60000 in out["delays"]


@needs_node
def test_js_authentication_round_trip_verifies_with_py_webauthn(tmp_path: Path) -> None:
    soft = SoftAuthenticator(origin=ORIGIN)
    registration, registration_json = _registration(soft)
    registered = verify_registration_response(
        credential=parse_registration_credential_json(soft.create(registration_json)),
        expected_challenge=registration.challenge,
        expected_origin=ORIGIN,
        expected_rp_id=RP_ID,
    )
    options = generate_authentication_options(
        rp_id=RP_ID,
        allow_credentials=[PublicKeyCredentialDescriptor(id=registered.credential_id)],
    )
    options_json = options_to_json(options)
    out = run_js(
        tmp_path,
        button=AUTH_BUTTON,
        credential=json.loads(soft.get(options_json)),
        replies=[
            {"status": 200, "body": {"publicKey": json.loads(options_json)}},
            {"status": 200, "body": {"redirect": "https://app.example.com/transfer"}},
        ],
    )
    assert out["alert"] == ""
    assert out["seen"]["allowCredentials"] == [registered.credential_id.hex()]
    assert out["seen"]["rpId"] == RP_ID
    begin, finish = out["fetches"]
    _begin_request_ok(begin, "/step-up/c1/webauthn/begin")
    assert begin["body"] == {}
    verified = verify_authentication_response(
        credential=parse_authentication_credential_json(finish["body"]),
        expected_challenge=options.challenge,
        expected_rp_id=RP_ID,
        expected_origin=ORIGIN,
        credential_public_key=registered.credential_public_key,
        credential_current_sign_count=0,
        require_user_verification=True,
    )
    assert verified.new_sign_count == 1
    assert finish["body"]["response"]["userHandle"]
    assert out["assigned"] == "https://app.example.com/transfer"


@needs_node
def test_js_shows_the_servers_refusal(tmp_path: Path) -> None:
    soft = SoftAuthenticator(origin=ORIGIN)
    _, options_json = _registration(soft)
    out = run_js(
        tmp_path,
        button=REGISTER_BUTTON,
        credential=json.loads(soft.create(options_json)),
        replies=[
            {"status": 200, "body": json.loads(options_json)},
            {"status": 400, "body": {"error": "the passkey response is malformed"}},
        ],
    )
    assert out["alert"] == "the passkey response is malformed"
    assert out["assigned"] is None and out["status"] == ""


@needs_node
def test_js_refuses_to_follow_a_script_redirect(tmp_path: Path) -> None:
    soft = SoftAuthenticator(origin=ORIGIN)
    _, options_json = _registration(soft)
    out = run_js(
        tmp_path,
        button=REGISTER_BUTTON,
        credential=json.loads(soft.create(options_json)),
        replies=[
            {"status": 200, "body": json.loads(options_json)},
            {"status": 200, "body": {"redirect": "javascript:alert(1)"}},
        ],
    )
    assert out["assigned"] is None
    assert "will not open" in out["alert"]


@needs_node
def test_js_ceremony_times_out(tmp_path: Path) -> None:
    soft = SoftAuthenticator(origin=ORIGIN)
    _, options_json = _registration(soft)
    out = run_js(
        tmp_path,
        button=REGISTER_BUTTON,
        hang=True,
        fastTimers=True,
        replies=[{"status": 200, "body": json.loads(options_json)}],
    )
    assert out["delays"][0] == 60000
    assert "60 seconds" in out["alert"]
    assert len(out["fetches"]) == 1


@needs_node
def test_js_without_webauthn_support_keeps_the_button_hidden(tmp_path: Path) -> None:
    out = run_js(tmp_path, button=AUTH_BUTTON, supported=False)
    assert out["buttonHidden"] is True and out["unsupportedHidden"] is False
    assert out["fetches"] == []


PUSH = {"data-push-status-url": "/step-up/c1/push/status", "data-push-expires-in": "120"}


@needs_node
def test_js_polls_push_until_approved_then_follows_redirect(tmp_path: Path) -> None:
    out = run_js(
        tmp_path,
        push=PUSH,
        fastTimers=True,
        replies=[
            {"status": 200, "body": {"status": "pending"}},
            {"status": 200, "body": {"status": "pending"}},
            {"status": 200, "body": {"status": "approved", "redirect": "/step-up/c1/confirm"}},
        ],
    )
    assert [f["url"] for f in out["fetches"]] == ["/step-up/c1/push/status"] * 3
    assert {f["method"] for f in out["fetches"]} == {"GET"}
    assert {f["credentials"] for f in out["fetches"]} == {"same-origin"}
    # three polls, then the "Continue" link offered in case the page stays (a download)
    assert out["delays"] == [2000, 2000, 2000, 4000]
    assert out["assigned"] == ORIGIN + "/step-up/c1/confirm"


@needs_node
def test_js_push_polling_stops_when_denied(tmp_path: Path) -> None:
    out = run_js(
        tmp_path,
        push=PUSH,
        fastTimers=True,
        replies=[{"status": 200, "body": {"status": "denied"}}],
    )
    assert "denied" in out["pushText"] and out["assigned"] is None
    assert len(out["fetches"]) == 1 and out["delays"] == [2000]


@needs_node
def test_js_push_polling_stops_at_expiry(tmp_path: Path) -> None:
    out = run_js(tmp_path, push={**PUSH, "data-push-expires-in": "0"}, fastTimers=True, replies=[])
    assert out["fetches"] == [] and "expired" in out["pushText"]


def test_step_up_shows_an_agents_call_with_bound_values_marked(renderer) -> None:  # type: ignore[no-untyped-def]
    call = {"client": EVIL, "server": "bank", "tool": "transfer", "title": "",
            "description": "Send money " + EVIL, "listed": False,
            "arguments": [("amount", "5000", True), ("to", "DE\u0410", False)]}
    html = render(renderer, "step_up.html", challenge={**_challenge(), "agent_call": call})
    assert "Your AI agent asks to run a tool" in html and "(approved value)" in html
    assert "does not list this tool" in html and "non-ASCII" in html
    assert EVIL not in html  # escaped
