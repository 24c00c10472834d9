"""Security notices reach a real SMTP server (aiosmtpd), a real HTTP receiver (signed, retried
after failures, dead-lettered) and syslog / JSON lines receivers (issue 14)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from stepguard.config.load import load_config
from stepguard.core.context import RequestContext
from stepguard.core.errors import VerificationFailed
from stepguard.notifications import verify_webhook
from stepguard.notifications.webhook import SIGNATURE_HEADER
from stepguard.service.accounts import Accounts
from stepguard.service.runtime import Runtime, build_runtime
from stepguard.storage.dead_letters import DeadLetters
from tests.support.gateway import Clock, seed_user, write_config
from tests.support.servers import free_port

SECRET = "webhook-secret-for-tests-0123456789"


class Inbox(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[object] = []

    def handle_message(self, message: object) -> None:
        self.messages.append(message)


@pytest.fixture()
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class Receiver:
    """A real HTTP server that answers `fail` requests with 503, then 200."""

    def __init__(self, fail: int) -> None:
        self.fail, self.received = fail, list[tuple[dict[str, str], bytes, float]]()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body, time.time()))
                status = 503 if len(outer.received) <= outer.fail else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/stepguard"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def runtime_with(tmp_path: Path, notifications: str, **extra: str) -> Runtime:
    config = write_config(tmp_path, extra="notifications:\n" + notifications + "".join(
        extra.values()))
    return build_runtime(load_config(config), clock=Clock(time.time()))


def context(device: str, ip: str = "203.0.113.7") -> RequestContext:
    return RequestContext(method="POST", host="localhost", path="/login", client_ip=ip,
                          device_id=device, user_agent="test")


def test_security_notices_arrive_by_email_with_what_where_and_what_to_do(
        tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    runtime = runtime_with(tmp_path, f"""\
  email: {{smtp_host: 127.0.0.1, smtp_port: {port}, security: none,
          sender: stepguard@bank.test, operators: [soc@bank.test]}}
""", throttle="throttle: {hard_lock_after: 3}\n")
    try:
        alice = seed_user(runtime)
        accounts = Accounts(runtime)
        accounts.sign_in("alice", alice.password, context("device-1"))
        accounts.sign_in("alice", alice.password, context("device-2"))  # a new device
        for _ in range(3):
            with pytest.raises(VerificationFailed):
                accounts.sign_in("alice", "wrong-password", context("device-3", "198.51.100.4"))
            runtime.clock.advance(1000)  # type: ignore[attr-defined]  # past the back-off
        accounts.disable_user(alice.user.id, by="ops-admin")
        runtime.notifier.flush()  # type: ignore[union-attr]
    finally:
        runtime.close()
    mails = [message_from_bytes(m.as_bytes()) for m in inbox.messages]  # type: ignore[attr-defined]
    subjects = sorted(str(m["Subject"]) for m in mails)
    assert subjects == ["[Stepguard] An administrator changed something",  # user added
                        "[Stepguard] An administrator changed something",  # user disabled
                        "[Stepguard] New sign-in from a device not seen before",
                        "[Stepguard] Sign-in locked after too many failed attempts"]
    new_device = next(m for m in mails if "device not seen" in str(m["Subject"]))
    assert set(str(new_device["To"]).split(", ")) == {"soc@bank.test", "alice@example.com"}
    text = new_device.get_payload(decode=True).decode()
    assert "Address: 203.0.113.7" in text and "What to do:" in text and "/account" in text
    locked = next(m for m in mails if "locked" in str(m["Subject"]))
    assert "198.51.100.4" in locked.get_payload(decode=True).decode()
    assert all(alice.password not in m.as_string() for m in mails)
    disabled = [m for m in mails if "administrator" in str(m["Subject"])][-1]
    body = disabled.get_payload(decode=True).decode()
    assert "Action: user disabled" in body and "By: ops-admin" in body


def test_webhooks_are_signed_retried_after_failures_and_verified(tmp_path: Path) -> None:
    receiver = Receiver(fail=2)
    runtime = runtime_with(tmp_path, f"""\
  webhooks:
    - {{url: "{receiver.url}", secret: "{SECRET}", retries: 3, backoff: 0.05}}
""")
    try:
        alice = seed_user(runtime)
        Accounts(runtime).disable_user(alice.user.id, by="ops-admin")
        runtime.notifier.flush()  # type: ignore[union-attr]
    finally:
        runtime.close()
        receiver.close()
    deliveries = [r for r in receiver.received if b"user added" in r[1]]
    assert len(deliveries) == 3  # two 503s, then delivered
    assert len([r for r in receiver.received if b"user disabled" in r[1]]) == 1
    ids = {headers["Stepguard-Event-Id"] for headers, _, _ in deliveries}
    assert len(ids) == 1  # one event id across retries: receivers de-duplicate
    for headers, body, at in deliveries:
        stamp = verify_webhook(SECRET.encode(), body, headers[SIGNATURE_HEADER], now=at)
        assert abs(stamp - at) < 5
        with pytest.raises(VerificationFailed):
            verify_webhook(b"another-secret-0123456789", body, headers[SIGNATURE_HEADER], now=at)
        with pytest.raises(VerificationFailed):  # a replay after the tolerance
            verify_webhook(SECRET.encode(), body, headers[SIGNATURE_HEADER], now=at + 301)
        with pytest.raises(VerificationFailed):  # a changed body
            verify_webhook(SECRET.encode(), body.replace(b"added", b"removed"),
                           headers[SIGNATURE_HEADER], now=at)
    payload = json.loads(deliveries[-1][1])
    assert payload["type"] == "admin_action" and payload["subject"] == alice.user.id
    gaps = [b[2] - a[2] for a, b in zip(deliveries, deliveries[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.2 or gaps[1] >= 0.05  # backed off


def test_a_receiver_that_keeps_failing_gets_a_dead_letter(tmp_path: Path) -> None:
    receiver = Receiver(fail=10**6)
    runtime = runtime_with(tmp_path, f"""\
  webhooks:
    - {{url: "{receiver.url}?key=url-secret", secret: "{SECRET}", retries: 2, backoff: 0.01,
       events: [admin_action]}}
""")
    try:
        alice = seed_user(runtime)
        Accounts(runtime).disable_user(alice.user.id, by="ops-admin")
        runtime.notifier.flush()  # type: ignore[union-attr]
        runtime.audit.flush(timeout=10)
        letters = DeadLetters(runtime.store.engine).recent()  # type: ignore[attr-defined]
        entries = list(runtime.audit_log.entries(kind="admin"))
    finally:
        runtime.close()
        receiver.close()
    admin_actions = [r for r in receiver.received if b"admin_action" in r[1]]
    assert len(admin_actions) == 3 * 2  # user_added and user_disabled, 1 + 2 retries each
    assert len(letters) == 2 and letters[0].attempts == 3 and letters[0].last_error == "HTTP 503"
    assert letters[0].target == "127.0.0.1"  # the host only: URLs may hold secrets
    failed = [e for e in entries if e.outcome == "notification_failed"]
    assert len(failed) == 2 and "url-secret" not in repr(entries)


def test_syslog_rfc5424_over_udp_and_json_lines_to_a_file(tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    runtime = runtime_with(tmp_path / "udp", f"""\
  syslog: {{address: "udp://127.0.0.1:{udp.getsockname()[1]}", app_name: stepguard}}
""")
    lines = tmp_path / "siem.jsonl"
    json_runtime = runtime_with(tmp_path / "json", f"""\
  syslog: {{file: "{lines}", format: json}}
""")
    try:
        for rt in (runtime, json_runtime):
            alice = seed_user(rt)
            Accounts(rt).disable_user(alice.user.id, by="ops-admin")
            rt.notifier.flush()  # type: ignore[union-attr]
        datagrams = [udp.recv(65535).decode() for _ in range(2)]
    finally:
        runtime.close()
        json_runtime.close()
        udp.close()
    pattern = re.compile(r'^<(\d+)>1 (\S+) (\S+) stepguard (\d+) admin_action '
                         r'\[stepguard@32473 (?:[a-z_]+="(?:[^"\\\]]|\\.)*" ?)+\] (.+)$')
    for line in datagrams:
        match = pattern.match(line)
        assert match, line
        assert int(match.group(1)) == 10 * 8 + 5  # authpriv.notice
        assert match.group(2).endswith("Z")
    assert 'action="user disabled"' in datagrams[1]
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["type"] for r in records] == ["admin_action", "admin_action"]
    assert records[1]["facts"]["Action"] == "user disabled"


def test_notices_never_hold_a_secret_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    from stepguard.core.errors import ConfigError

    config = write_config(tmp_path, extra="notifications: {events: [everything]}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert "unknown notice kinds" in str(raised.value)
    config = write_config(tmp_path, extra='notifications: {webhooks: [{url: "http://evil.example/x"'
                                          ', secret: "0123456789abcdef"}]}\n')
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert "https" in str(raised.value)
