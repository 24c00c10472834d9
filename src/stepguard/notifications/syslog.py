"""Notices for a SIEM: RFC 5424 syslog lines (UDP, TCP with octet counting, a Unix socket) or
JSON lines (to a file or TCP)."""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from stepguard.notifications.notice import Notice

SEVERITY = {"lockout": 4, "request_denied": 4, "step_up_declined": 4, "factor_removed": 4,
            "sign_in_new_device": 5, "sign_in_new_location": 5}  # else 5 (notice)
_SD_ID = "stepguard@32473"  # enterprise number 32473 is reserved for documentation (RFC 5612)


def rfc5424(notice: Notice, *, facility: int, app_name: str, hostname: str,
            event_id: str) -> str:
    """One RFC 5424 message: PRI, version 1, time, host, app, procid, msgid, SD, message."""
    pri = facility * 8 + SEVERITY.get(notice.kind, 5)
    stamp = datetime.fromtimestamp(notice.at, UTC).isoformat(timespec="microseconds")
    params = {"id": event_id, "subject": notice.subject, **dict(notice.facts)}
    sd = f"[{_SD_ID} " + " ".join(f'{_name(k)}="{_escape(v)}"' for k, v in params.items()) + "]"
    return (f"<{pri}>1 {stamp.replace('+00:00', 'Z')} {_field(hostname)} {_field(app_name)} "
            f"{os.getpid()} {_field(notice.kind)} {sd} {notice.title}")


def json_line(notice: Notice, *, event_id: str, hostname: str) -> str:
    return json.dumps({"id": event_id, "host": hostname, **notice.as_json()}, sort_keys=True,
                      separators=(",", ":"))


def _name(key: str) -> str:
    cleaned = "".join(c for c in key.lower() if c.isalnum() or c == "_")
    return cleaned[:32] or "x"


def _escape(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return text.replace("\n", " ").replace("\r", " ")


def _field(value: str) -> str:
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)
    return cleaned[:48] or "-"


class SyslogSink:
    """Sends lines to `address`: udp://host:port, tcp://host:port, unix:///path, or (scheme
    `file:`) appends them to a file."""

    def __init__(self, address: str, *, timeout: float = 5.0, newline: bool = False) -> None:
        self.address = address
        self.timeout = timeout
        self.newline = newline  # JSON lines: newline framing instead of octet counting
        self._lock = threading.Lock()
        self._tcp: socket.socket | None = None

    def send(self, line: str) -> None:
        scheme, _, rest = self.address.partition(":")
        data = line.encode()
        with self._lock:
            if scheme == "file":
                with open(rest, "ab") as out:
                    out.write(data + b"\n")
            elif scheme == "udp":
                parts = urlsplit(self.address)
                with socket.socket(_family(parts.hostname), socket.SOCK_DGRAM) as sock:
                    sock.sendto(data, (parts.hostname or "", parts.port or 514))
            elif scheme == "unix":
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.sendto(data, urlsplit(self.address).path)
            elif scheme == "tcp":
                self._send_tcp(data + b"\n" if self.newline
                               else b"%d %s" % (len(data), data))  # RFC 6587 octet counting
            else:
                raise ValueError(f"unsupported syslog address {self.address!r}")

    def _send_tcp(self, frame: bytes) -> None:
        for attempt in (1, 2):  # a dropped connection is reopened once
            try:
                if self._tcp is None:
                    parts = urlsplit(self.address)
                    self._tcp = socket.create_connection((parts.hostname, parts.port or 601),
                                                         timeout=self.timeout)
                self._tcp.sendall(frame)
                return
            except OSError:
                self.close()
                if attempt == 2:
                    raise

    def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None


def _family(host: str | None) -> socket.AddressFamily:
    return socket.AF_INET6 if host and ":" in host else socket.AF_INET
