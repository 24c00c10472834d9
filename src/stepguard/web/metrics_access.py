"""Who may read `/metrics`: a scraper with the configured bearer token, or anyone who can reach
the separate metrics listener (`metrics.listen`, meant for loopback or an internal network).

The listener is a tiny HTTP/1.1 server on the event loop that answers `GET /metrics` and
nothing else. It binds with SO_REUSEPORT, so with several workers each binds the same address
and a scrape reaches one of them (as a scrape of the public port did before).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from stepguard.config.schema import MetricsSection

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def token_ok(settings: MetricsSection, authorization: str | None) -> bool:
    """The request carries `Authorization: Bearer <metrics.token>` (constant-time compare)."""
    if not settings.token:
        return False
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), settings.token.encode())


def answer(settings: MetricsSection, path: str, authorization: str | None,
           render: Callable[[], bytes]) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of the metrics listener for one request."""
    if path != "/metrics":
        return 404, b"not found\n", {}
    if settings.token and not token_ok(settings, authorization):
        return 401, b"metrics need a bearer token\n", {"WWW-Authenticate": 'Bearer realm="metrics"'}
    return 200, render(), {"Content-Type": CONTENT_TYPE}


async def serve(settings: MetricsSection, render: Callable[[], bytes]) -> asyncio.Server:
    host, _, port = settings.listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            fields = dict(_field(line) for line in lines[1:] if ":" in line)
            status, body, headers = answer(settings, target.split("?")[0] if method in (
                "GET", "HEAD") else "", fields.get("authorization"), render)
            heading = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: {len(body)}"
                         f"\r\nCache-Control: no-store\r\nConnection: close\r\n{heading}\r\n"
                         .encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]"), int(port), reuse_port=True,
                                      limit=16384)


def _field(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found"}
