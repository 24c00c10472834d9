"""One side of a door connection (the client's or the upstream's) as an asyncio protocol.

During start-up and sign-in the door reads with `readexactly` (few messages, once per
connection). For the relay the connection installs `on_data`: every delivery from the transport
is handed over as it arrives and handled in the same call — no stream reader, no task per read.
Flow control is the transport's own: `on_writable(False)` when this side's write buffer is full
(the connection then stops reading the other side) and `on_writable(True)` when it drained;
`reading(reason, on)` pauses this side's reading while any reason holds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

_Data = Callable[[bytes], None]
_Flag = Callable[[bool], None]
_Event = Callable[[], None]


def _ignore_data(data: bytes) -> None:
    return None


def _closed(data: bytes) -> None:
    raise ConnectionResetError("the connection is closed")


class Pipe(asyncio.Protocol):
    def __init__(self, connected: Callable[[Pipe], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # what arrived before `on_data` was installed
        self.eof = False  # the peer closed its side, or the connection was lost
        self.lost = False
        self.writable = True
        self.on_data: _Data | None = None
        self.on_eof: _Event | None = None
        self.on_writable: _Flag | None = None
        self._connected = connected
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._pauses: set[str] = set()
        # The transport's own `write` while connected; before and after, a refusal.
        self.send: _Data = _closed

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (TCP/TLS)
        self.send = self.transport.write  # type: ignore[union-attr]
        connected, self._connected = self._connected, None
        if connected is not None:
            connected(self)

    def data_received(self, data: bytes) -> None:
        on_data = self.on_data
        if on_data is not None:
            on_data(data)
            return
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.send = _closed
        self._ended()
        self.writable = True
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_exception(ConnectionResetError("the connection was lost"))

    def pause_writing(self) -> None:
        self.writable = False
        if self.on_writable is not None:
            self.on_writable(False)

    def resume_writing(self) -> None:
        self.writable = True
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.on_writable is not None:
            self.on_writable(True)

    def _ended(self) -> None:
        if self.eof:
            return
        self.eof = True
        self._wake()
        if self.on_eof is not None:
            self.on_eof()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ the door's side

    async def readexactly(self, size: int) -> bytes:
        """The next `size` bytes (start-up and sign-in only); IncompleteReadError at EOF."""
        while len(self.buffer) < size:
            if self.eof:
                raise asyncio.IncompleteReadError(bytes(self.buffer), size)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def take(self) -> bytes:
        """What arrived and was not read yet (handed to the relay when it starts)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def relay(self, on_data: _Data, on_eof: _Event, on_writable: _Flag) -> None:
        self.on_data, self.on_eof, self.on_writable = on_data, on_eof, on_writable
        self._deliver(on_data)

    def detach(self) -> None:
        self.on_data, self.on_eof, self.on_writable = _ignore_data, None, None
        self._deliver(_ignore_data)

    def _deliver(self, on_data: _Data) -> None:
        """Deliveries straight to `on_data`: the transport calls it in place of
        `data_received` (uvloop keeps the bound method it was given: it is given again)."""
        setattr(self, "data_received", on_data)  # noqa: B010  # shadows the method
        if self.transport is not None and not self.transport.is_closing():
            self.transport.set_protocol(self)

    def write(self, data: bytes | bytearray) -> None:
        """Send `data`; ConnectionResetError when the connection is not open (the relay's hot
        path calls `send` itself, one call less)."""
        self.send(data)  # type: ignore[arg-type]  # transports take any bytes-like data

    async def drain(self) -> None:
        """Wait while this side's write buffer is full."""
        if self.lost:
            raise ConnectionResetError("the connection was lost")
        if not self.writable:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def reading(self, reason: str, on: bool) -> None:
        """Pause reading while any reason holds (`on` False adds `reason`, True removes it)."""
        before = bool(self._pauses)
        if on:
            self._pauses.discard(reason)
        else:
            self._pauses.add(reason)
        after = bool(self._pauses)
        if before == after or self.transport is None or self.lost:
            return
        if after:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    async def start_tls(self, context: ssl.SSLContext, *, server_side: bool,
                        server_hostname: str | None = None) -> None:
        """TLS over this connection (the transport is replaced; this protocol stays)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(self.transport, self, context,
                                         server_side=server_side,
                                         server_hostname=server_hostname)
        if transport is None:
            raise ConnectionResetError("the connection closed during the TLS handshake")
        self.transport = transport
        if not self.lost:
            self.send = transport.write

    def peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if peer else ""

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()
