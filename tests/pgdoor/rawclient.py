"""A bare protocol-v3 client for attack tests: sends exactly the messages a test writes."""

from __future__ import annotations

import socket
import struct

from stepguard.pgwire import messages as m
from stepguard.pgwire.scram import ClientExchange


class Raw:
    def __init__(self, port: int, user: str, secret: str, database: str = "app",
                 extra: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.sock.sendall(m.startup_message({"user": user, "database": database,
                                             **(extra or {})}))
        self._sign_in(secret)

    def _sign_in(self, secret: str) -> None:
        exchange = ClientExchange(secret)
        kind, body = self.read()
        assert kind == b"R" and m.int32(body) == 10, (kind, body)
        first = exchange.first().encode()
        self.send(b"p", m.cstring("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first)
        kind, body = self.read()
        assert m.int32(body) == 11, body
        self.send(b"p", exchange.final(body[4:].decode()).encode())
        self.until_ready()

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.sock.sendall(m.message(kind, body))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> tuple[bytes, bytes]:
        while len(self.buffer) < 5 or len(self.buffer) < 1 + struct.unpack(
                "!i", self.buffer[1:5])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        length = struct.unpack("!i", self.buffer[1:5])[0]
        kind, body = self.buffer[:1], self.buffer[5:1 + length]
        self.buffer = self.buffer[1 + length:]
        return kind, body

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        seen = []
        while True:
            kind, body = self.read()
            seen.append((kind, body))
            if kind == b"Z":
                return seen

    # message builders
    def parse(self, name: str, sql: str) -> None:
        self.send(b"P", m.cstring(name) + m.cstring(sql) + b"\x00\x00")

    def bind(self, portal: str = "", statement: str = "",
             params: list[bytes] | None = None) -> None:
        values = params or []
        body = m.cstring(portal) + m.cstring(statement) + b"\x00\x00"
        body += struct.pack("!h", len(values))
        for value in values:
            body += struct.pack("!i", len(value)) + value
        body += b"\x00\x00"
        self.send(b"B", body)

    def execute(self, portal: str = "") -> None:
        self.send(b"E", m.cstring(portal) + b"\x00\x00\x00\x00")

    def sync(self) -> None:
        self.send(b"S")

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(b"Q", m.cstring(sql))
        return self.until_ready()

    def close(self) -> None:
        self.sock.close()


def errors(seen: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    return [m.fields(body) for kind, body in seen if kind == b"E"]
