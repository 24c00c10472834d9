"""Which upstream client should reverse-proxy mode use? CPU per relayed request, measured.

Loads `bench/noop_app.py` (under uvicorn, its own process) with N concurrent keep-alive
requests through each candidate client in this process and reports this process's CPU time
per request (`time.process_time`): httpx (the old relay), aiohttp, and a minimal asyncio +
httptools client with a keep-alive pool (the shape of a hand-written relay). The upstream's own
CPU is not counted. Run: `python bench/relay_clients.py [--requests 5000] [--concurrency 16]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]

import aiohttp  # noqa: E402
import httptools  # noqa: E402
import httpx  # noqa: E402
from tests.support.servers import UvicornServer  # noqa: E402


class RawPool:
    """Keep-alive HTTP/1.1 connections parsed by httptools: the floor a hand-written relay
    could reach (GET only, Content-Length bodies only)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, target: str) -> bytes:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        done = asyncio.get_running_loop().create_future()
        body: list[bytes] = []

        class Sink:
            def on_body(self, data: bytes) -> None:
                body.append(data)

            def on_message_complete(self) -> None:
                done.set_result(None)

        parser = httptools.HttpResponseParser(Sink())
        while not done.done():
            parser.feed_data(await reader.read(65536))
        self.idle.append(conn)
        return b"".join(body)


async def measure(name: str, call: Callable[[], Awaitable[object]], requests: int,
                  concurrency: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm up
    start = time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    per_request = (time.process_time() - start) / requests * 1e6
    print(f"{name:<28}{per_request:>8.0f} µs CPU per request")
    return per_request


async def main(requests: int, concurrency: int, url: str, port: int) -> None:
    target = "/orders?page=2"
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=concurrency)) as hx:
        await measure("httpx", lambda: hx.get(url + target), requests, concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def aio() -> bytes:
            async with session.get(url + target) as response:
                return await response.read()

        await measure("aiohttp", aio, requests, concurrency)
    raw = RawPool("127.0.0.1", port)
    await measure("asyncio + httptools (floor)", lambda: raw.get(target), requests, concurrency)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    import tempfile

    with UvicornServer("noop_app:app", Path(tempfile.mkdtemp()), name="noop",
                       extra_args=["--app-dir", str(REPO_ROOT / "bench")]) as noop:
        asyncio.run(main(args.requests, args.concurrency, noop.url, noop.port))
