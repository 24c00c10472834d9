"""PostgreSQL frontend/backend protocol v3: framing and the few messages Stepguard reads or writes.

Messages are read as (type, body) with the length checked before anything is allocated; relayed
messages are written back as the same bytes. Builders make the messages the gateway speaks
itself (errors, notices, authentication).
"""

from __future__ import annotations

import struct
from typing import Protocol

PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
STARTUP_LIMIT = 10_000  # libpq's and PostgreSQL's own bound on a startup packet

_INT = struct.Struct("!i")
_HEADER = struct.Struct("!ci")


class Readable(Protocol):
    async def readexactly(self, size: int, /) -> bytes: ...


class ProtocolViolation(ValueError):
    """The peer broke the protocol (bad length, bad field): the connection ends with 08P01."""


async def read_startup(reader: Readable) -> tuple[int, bytes]:
    """(code, body) of an untyped startup-phase packet."""
    head = await reader.readexactly(4)
    (length,) = _INT.unpack(head)
    if not 8 <= length <= STARTUP_LIMIT:
        raise ProtocolViolation(f"invalid startup packet length {length}")
    body = await reader.readexactly(length - 4)
    return _INT.unpack_from(body)[0], body[4:]


async def read_message(reader: Readable, limit: int) -> tuple[bytes, bytes, bytes]:
    """(type, body, raw bytes) of one typed message; ProtocolViolation above `limit` bytes."""
    head = await reader.readexactly(5)
    kind, length = _HEADER.unpack(head)
    if length < 4 or length - 4 > limit:
        raise ProtocolViolation(f"invalid message length {length}")
    body = await reader.readexactly(length - 4) if length > 4 else b""
    return kind, body, head + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _INT.pack(len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def parse_startup(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage (after the protocol version)."""
    parts = body.split(b"\x00")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolViolation("malformed startup packet")
    items = parts[:-2]
    if len(items) % 2:
        raise ProtocolViolation("malformed startup packet")
    try:
        texts = [p.decode("utf-8") for p in items]
    except UnicodeDecodeError:
        raise ProtocolViolation("startup packet is not UTF-8") from None
    params: dict[str, str] = {}
    for name, value in zip(texts[::2], texts[1::2], strict=True):
        if name in params:
            raise ProtocolViolation(f"duplicate startup parameter {name!r}")
        params[name] = value
    return params


def startup_message(params: dict[str, str]) -> bytes:
    body = _INT.pack(PROTOCOL_3) + b"".join(cstring(k) + cstring(v) for k, v in params.items())
    body += b"\x00"
    return _INT.pack(len(body) + 4) + body


def read_cstring(body: bytes, start: int) -> tuple[str, int]:
    """The text at `start` up to its NUL, and the offset after it."""
    end = body.find(b"\x00", start)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        return body[start:end].decode("utf-8"), end + 1
    except UnicodeDecodeError:
        raise ProtocolViolation("message text is not UTF-8") from None


def fields(body: bytes) -> dict[str, str]:
    """The typed fields of an ErrorResponse / NoticeResponse."""
    found: dict[str, str] = {}
    at = 0
    while at < len(body) and body[at] != 0:
        code = chr(body[at])
        text, at = read_cstring(body, at + 1)
        found[code] = text
    return found


def _notice_fields(severity: str, code: str, text: str, hint: str = "") -> bytes:
    parts = [b"S" + cstring(severity), b"V" + cstring(severity), b"C" + cstring(code),
             b"M" + cstring(text)]
    if hint:
        parts.append(b"H" + cstring(hint))
    return b"".join(parts) + b"\x00"


def error(code: str, text: str, *, hint: str = "", severity: str = "ERROR") -> bytes:
    return message(b"E", _notice_fields(severity, code, text, hint))


def notice(text: str, *, hint: str = "", code: str = "01000") -> bytes:
    return message(b"N", _notice_fields("NOTICE", code, text, hint))


def auth(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _INT.pack(code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def backend_key(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, secret))


def negotiate_version(minor: int, unknown: list[str]) -> bytes:
    body = _INT.pack(minor) + _INT.pack(len(unknown)) + b"".join(cstring(u) for u in unknown)
    return message(b"v", body)


def int32(body: bytes, at: int = 0) -> int:
    if len(body) < at + 4:
        raise ProtocolViolation("message too short")
    return int(_INT.unpack_from(body, at)[0])


def sasl_initial(body: bytes) -> tuple[str, bytes]:
    """(mechanism, data) of a SASLInitialResponse."""
    mechanism, at = read_cstring(body, 0)
    length = int32(body, at)
    data = body[at + 4:]
    if length != len(data):
        raise ProtocolViolation("SASL data length does not match")
    return mechanism, data


def parse_message(body: bytes) -> tuple[str, str]:
    """(statement name, query text) of a Parse message."""
    name, at = read_cstring(body, 0)
    query, at = read_cstring(body, at)
    count = struct.unpack_from("!h", body, at)[0] if len(body) >= at + 2 else -1
    if count < 0 or len(body) != at + 2 + 4 * count:
        raise ProtocolViolation("malformed Parse message")
    return name, query


def bind_message(body: bytes) -> tuple[str, str, bytes]:
    """(portal, statement, the rest: formats and parameter values) of a Bind message."""
    portal, at = read_cstring(body, 0)
    statement, at = read_cstring(body, at)
    return portal, statement, body[at:]


def close_or_describe(body: bytes) -> tuple[str, str]:
    """('S' or 'P', name) of a Close or Describe message."""
    if not body or chr(body[0]) not in "SP":
        raise ProtocolViolation("expected S or P")
    name, at = read_cstring(body, 1)
    if at != len(body):
        raise ProtocolViolation("trailing bytes")
    return chr(body[0]), name


def execute_message(body: bytes) -> str:
    portal, at = read_cstring(body, 0)
    if len(body) != at + 4:
        raise ProtocolViolation("malformed Execute message")
    return portal


def query_message(body: bytes) -> str:
    text, at = read_cstring(body, 0)
    if at != len(body):
        raise ProtocolViolation("malformed Query message")
    return text
