"""Read an HTTP request body straight from the socket into the caller's buffer.

uvicorn hands an ASGI app the body as ``http.request`` messages: every byte is copied from the
socket's ``bytes`` into h11's receive buffer, out of it (twice), into the request cycle's
buffer, out of that into the message, and then into whatever the app writes from. For an upload
that is five copies per byte before the disk sees it, and they were most of the server's CPU.

:class:`BodyReader` is what the tus endpoint reads a ``PATCH`` body with instead
(``readinto(buffer)``, like a raw file). Whatever uvicorn already parsed is copied out first;
the rest of a ``Content-Length`` body is then read by the kernel directly into the caller's
buffer: the connection's transport is switched to a :class:`asyncio.BufferedProtocol` for the
body's remaining bytes and back to uvicorn's protocol after the last one, and h11 is told how
many body bytes it did not see so that its state machine ends the request as usual (response,
keep-alive, the next request on the connection).

That last step reaches into h11's content-length reader (a private attribute); it is checked
before every takeover, and anything it does not recognise (chunked bodies, ``Expect:
100-continue``, another ASGI server, another h11) is read through ``receive()`` instead: slower,
the same bytes. ``tests/server/test_direct_body.py`` covers both ways.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from resume.asgi import Disconnected, Receive, Scope

BODY_READER = "resume.body_reader"  # scope extension: this request's BodyReader
SPILL = 64 * 1024  # bytes read while no caller buffer is waiting (should not happen; kept)


class BodySource(Protocol):
    """Where an upload's bytes come from: a request body, or files on disk."""

    async def readinto(self, buffer: memoryview, idle: float | None = None) -> int:
        """Fill ``buffer``; fewer bytes only at the end, 0 after it."""


class BodyTimeout(Disconnected):
    """The client sent no body bytes for the idle timeout: treated as gone (the tus endpoint
    answers 408 and keeps what arrived)."""


class BodyReader:
    """The body of one request, read into buffers the caller owns.

    ``protocol`` is the connection's uvicorn h11 protocol (None: only ``receive`` is used).
    """

    def __init__(self, receive: Receive, protocol: Any | None = None) -> None:
        self._receive = receive
        self._protocol = protocol
        self._cycle = getattr(receive, "__self__", None)  # uvicorn's RequestResponseCycle
        self._pending = bytearray()  # received through receive() but not yet handed out
        self._ended = False
        self._error: BaseException | None = None  # to raise on the next call
        self.direct_bytes = 0  # how many bytes bypassed uvicorn (for tests and metrics)

    async def readinto(self, buffer: memoryview, idle: float | None = None) -> int:
        """Fill ``buffer`` with the next body bytes; fewer only at the end of the body, 0 after
        it. Raises :class:`Disconnected` if the client went away and :class:`BodyTimeout` if
        nothing arrived for ``idle`` seconds, but only once the bytes that did arrive are
        handed out (a call that filled some returns them; the next call raises)."""
        if self._error is not None:
            raise self._error
        filled = self._take_pending(buffer)
        if filled < len(buffer) and not self._ended:
            if self._can_take_over():
                count, error = await _Takeover(self, buffer[filled:]).run(idle)
            else:
                count, error = await self._read_messages(buffer[filled:], idle)
            filled += count
            if error is not None:
                if not filled:
                    raise error
                self._error = error
        return filled

    def _take_pending(self, buffer: memoryview) -> int:
        """Copy out what uvicorn (or an earlier receive) already holds for this body."""
        filled = 0
        for held in (self._pending, self._cycle_body()):
            if held and filled < len(buffer):
                n = min(len(held), len(buffer) - filled)
                buffer[filled : filled + n] = held[:n]
                del held[:n]
                filled += n
        return filled

    def _cycle_body(self) -> bytearray:
        body = getattr(self._cycle, "body", None)
        return body if isinstance(body, bytearray) else bytearray()

    def _can_take_over(self) -> bool:
        """Whether the rest of the body can be read past uvicorn (see the module docstring)."""
        protocol, cycle = self._protocol, self._cycle
        if protocol is None or cycle is None or getattr(protocol, "cycle", None) is not cycle:
            return False
        if not cycle.more_body or cycle.disconnected or cycle.waiting_for_100_continue:
            return False
        if self._cycle_body():  # uvicorn holds bytes not yet handed out: take those first
            return False
        reader = getattr(protocol.conn, "_reader", None)
        remaining = getattr(reader, "_remaining", None)
        return (
            type(reader).__name__ == "ContentLengthReader"
            and isinstance(remaining, int)
            and remaining > 0
            and hasattr(protocol.transport, "set_protocol")
        )

    async def _read_messages(
        self, buffer: memoryview, idle: float | None
    ) -> tuple[int, Disconnected | None]:
        """The portable way: ``http.request`` messages, copied into ``buffer``. How many bytes
        it filled, and why it stopped early (None: full, or the body ended)."""
        filled = 0
        while filled < len(buffer) and not self._ended:
            try:
                async with asyncio.timeout(idle):
                    message = await self._receive()
            except TimeoutError:
                return filled, BodyTimeout(f"no body bytes for {idle:g}s")
            if message["type"] == "http.disconnect":
                self._ended = True
                return filled, Disconnected("the client closed the connection")
            self._pending += message.get("body", b"")
            self._ended = not message.get("more_body", False)
            filled += self._take_pending(buffer[filled:])
        return filled, None


def body_reader(scope: Scope, receive: Receive) -> BodyReader:
    """The request's :class:`BodyReader`: ``resume serve``'s direct one, or one over
    ``receive`` (under any other ASGI server)."""
    reader = scope.get("extensions", {}).get(BODY_READER)
    return reader if isinstance(reader, BodyReader) else BodyReader(receive)


class _Takeover(asyncio.BufferedProtocol):
    """The connection's protocol while the kernel reads body bytes into one caller buffer."""

    def __init__(self, reader: BodyReader, target: memoryview) -> None:
        self.reader = reader
        self.http = reader._protocol
        self.h11_reader = self.http.conn._reader
        self.target = target
        self.filled = 0
        self.spill = bytearray(SPILL)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_bytes = time.monotonic()

    async def run(self, idle: float | None) -> tuple[int, Disconnected | None]:
        """Read until the target is full or the body ends; how many bytes it filled, and why
        it stopped early (None: it did not)."""
        transport = self.http.transport
        transport.set_protocol(self)
        self.http.flow.resume_reading()
        error: Disconnected | None = None
        try:
            while not self.done.done():
                wait = None if idle is None else idle - (time.monotonic() - self.last_bytes)
                if wait is not None and wait <= 0:
                    error = BodyTimeout(f"no body bytes for {idle:g}s")
                    break
                await asyncio.wait([self.done], timeout=wait)
            if self.done.done() and self.done.exception() is not None:
                error = Disconnected("the client closed the connection")
        finally:
            if transport.get_protocol() is self:
                self.http.flow.pause_reading()
                transport.set_protocol(self.http)
                if self.spill_count:
                    self.http.data_received(bytes(self.spilled()))
        return self.filled, error

    # -- asyncio.BufferedProtocol -------------------------------------------------------------

    spill_count = 0

    def spilled(self) -> memoryview:
        return memoryview(self.spill)[: self.spill_count]

    def get_buffer(self, sizehint: int) -> memoryview:
        room = min(len(self.target) - self.filled, self.h11_reader._remaining)
        if room > 0:
            return self.target[self.filled : self.filled + room]
        return memoryview(self.spill)[self.spill_count :]  # never expected: kept, not lost

    def buffer_updated(self, nbytes: int) -> None:
        self.last_bytes = time.monotonic()
        room = min(len(self.target) - self.filled, self.h11_reader._remaining)
        if room <= 0:
            self.spill_count += nbytes
            self.http.flow.pause_reading()
            return
        self.filled += nbytes
        self.h11_reader._remaining -= nbytes  # h11 did not see these bytes: its count moves
        self.reader.direct_bytes += nbytes
        if self.h11_reader._remaining == 0:
            self._end_of_body()
        elif self.filled == len(self.target) and not self.done.done():
            self.http.flow.pause_reading()
            self.done.set_result(None)

    def _end_of_body(self) -> None:
        """The last body byte arrived: uvicorn's protocol again, h11 ends the request."""
        self.http.transport.set_protocol(self.http)
        self.reader._ended = True
        self.http.handle_events()  # h11: EndOfMessage; uvicorn: more_body False
        if not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # a half-close in the middle of a body: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)
        if not self.done.done():
            self.done.set_exception(ConnectionError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()


__all__ = ["BODY_READER", "BodyReader", "BodySource", "BodyTimeout", "body_reader"]
