"""The floor for the postgres door benchmark: the least an asyncio gateway can do.

A TCP relay on uvloop (the door's loop) that copies bytes both ways between a client and
PostgreSQL: no framing, no sign-in, no classification, no decision, no audit — two protocol
objects per connection and the transport's own flow control. Whatever this relay costs per
transaction, any door written on asyncio pays before it reads a message; bench/postgres.py runs
it beside pgbouncer and the door to show how much of the gap is the door and how much the loop.

Run: `python bench/pg_floor.py LISTEN_PORT UPSTREAM_PORT` (127.0.0.1 both).
"""

from __future__ import annotations

import asyncio
import sys


class Side(asyncio.Protocol):
    """One end of a relayed connection; `peer` is the other end once both are connected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.early = bytearray()  # client bytes that arrived before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early += data
            return
        peer.transport.write(data)

    def pause_writing(self) -> None:  # our buffer is full: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.close_peer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_peer()

    def close_peer(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(listen: int, upstream: int) -> None:
    loop = asyncio.get_running_loop()

    def client() -> Side:
        side = Side()
        loop.create_task(connect(side))
        return side

    async def connect(side: Side) -> None:
        try:
            _, other = await loop.create_connection(Side, "127.0.0.1", upstream)
        except OSError:
            if side.transport is not None:
                side.transport.close()
            return
        other.peer, side.peer = side, other
        if side.early and other.transport is not None:
            other.transport.write(bytes(side.early))
            side.early.clear()

    server = await loop.create_server(client, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
