"""Plain HTTP/1.1 requests with h11; request bodies straight from the file with sendfile.

httpx sends a body from Python buffers: each piece is joined into a new ``bytes`` by h11 and
then copied into the socket by the kernel. For a tus ``PATCH`` of a range of a local file that
is two copies per byte the client does not need: :class:`BulkConnection` writes the request
head that h11 makes and then hands the range to ``loop.sendfile`` (``sendfile(2)``: the kernel
sends from the page cache). h11 still keeps the request's state: it is given the body as a
``Data`` event carrying the caller's buffer of the same bytes (already read to be hashed), in
passthrough mode, so nothing is copied to do so, and it parses the response.

Used by :class:`resume.net.http.HttpClient` for every request to plain ``http://`` without a
proxy (bodies that are ``bytes`` or none go the usual way); everything else (TLS, proxies) goes
through httpx, which such a run then never imports.
"""

from __future__ import annotations

import asyncio
import mmap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

import h11

from resume.errors import AckTimeout, ConnectError, ConnectionLost, ConnectTimeout, ProtocolError
from resume.net.response import Headers, Response

READ_SIZE = 64 * 1024
SEGMENT = 4 * 2**20  # body bytes per sendfile call (each has the write timeout)


@dataclass(frozen=True, slots=True)
class FileBody:
    """A request body that is ``file``'s bytes from ``offset`` on: ``size`` bytes, or as many
    as ``views`` hold. ``views``: the same bytes in memory (read to be hashed), for a client
    that cannot send from the file (httpx, over TLS or a proxy); none when the body only ever
    goes from the file."""

    file: BinaryIO
    offset: int
    views: Sequence[memoryview] = ()
    size: int | None = None

    @property
    def length(self) -> int:
        return self.size if self.size is not None else sum(len(view) for view in self.views)


class _Zeros:
    """Untouched zero pages (an anonymous mapping costs no memory until written): stand-ins
    of the right length for h11 to count a body that goes from the file."""

    _view: memoryview | None = None

    @classmethod
    def pieces(cls, length: int) -> Iterator[memoryview]:
        if cls._view is None:
            cls._view = memoryview(mmap.mmap(-1, SEGMENT))
        for start in range(0, length, SEGMENT):
            yield cls._view[: min(SEGMENT, length - start)]


class BulkConnection:
    """One keep-alive HTTP/1.1 connection to ``host:port`` for requests with file bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conn = h11.Connection(our_role=h11.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.body_sent = 0.0  # when the last request's body was handed to the kernel

    @property
    def reusable(self) -> bool:
        """Open, and not closed by the server while idle (a keep-alive timeout)."""
        return (
            self.writer is not None
            and not self.writer.is_closing()
            and self.reader is not None
            and not self.reader.at_eof()
        )

    async def connect(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise ConnectTimeout(f"timed out connecting to {self.host}:{self.port}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect: {exc.strerror or exc}") from exc

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: FileBody | bytes | None,
        timeout: float,
    ) -> Response:
        """Send ``method url`` with ``body`` (a :class:`FileBody`'s views serve h11's count
        only; its bytes go with sendfile); the response."""
        assert self.writer is not None and self.reader is not None
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        count = body.length if isinstance(body, FileBody) else len(body or b"")
        framing = [("Content-Length", str(count))] if body is not None or _has_body(method) else []
        request = h11.Request(
            method=method,
            target=target,
            headers=[
                ("Host", parts.netloc),
                *((k, v) for k, v in headers.items() if k.lower() != "content-length"),
                *framing,
            ],
        )
        try:
            self.writer.write(self.conn.send(request) or b"")
            if isinstance(body, FileBody):
                await self._send_file(body, timeout)
            elif body:
                self.writer.write(self.conn.send(h11.Data(data=body)) or b"")
            self.writer.write(self.conn.send(h11.EndOfMessage()) or b"")
            self.body_sent = time.monotonic()
            async with asyncio.timeout(timeout):
                return await self._response()
        except TimeoutError:
            self.close()
            raise AckTimeout("the server sent no response in time") from None
        except (OSError, EOFError) as exc:
            self.close()
            raise ConnectionLost(f"connection lost: {exc}") from exc
        except h11.RemoteProtocolError as exc:  # e.g. closed in the middle of the response
            self.close()
            raise ConnectionLost(f"connection lost: {exc}") from exc
        except h11.LocalProtocolError as exc:
            self.close()
            raise ProtocolError(f"invalid HTTP request: {exc}") from exc

    async def _send_file(self, body: FileBody, timeout: float) -> None:
        assert self.writer is not None
        # h11 counts the body (passthrough: nothing is copied); the kernel sends it.
        for view in body.views or _Zeros.pieces(body.length):
            self.conn.send_with_data_passthrough(h11.Data(data=view))
        loop = asyncio.get_running_loop()
        count, done = body.length, 0
        while done < count:  # in segments: the timeout is per segment, like httpx's writes
            size = min(SEGMENT, count - done)
            async with asyncio.timeout(timeout):
                sent = await loop.sendfile(
                    self.writer.transport, body.file, body.offset + done, size
                )
            if sent != size:  # the file is shorter than it was: the caller notices
                raise ConnectionLost(f"sent {done + sent} of {count} body bytes")
            done += size

    async def _response(self) -> Response:
        assert self.reader is not None
        head: h11.Response | None = None
        content = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(READ_SIZE))  # b"": the end
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the server closed the connection")
            else:  # PAUSED: cannot happen for a client waiting for one response
                raise EOFError(f"unexpected {event!r}")
        assert head is not None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            self.close()
        return Response(
            head.status_code,
            Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            bytes(content),
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class BulkSender:
    """Idle :class:`BulkConnection` s per ``host:port``, taken by one request at a time (so
    as many are open as requests run at once)."""

    def __init__(self, connect_timeout: float, response_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self._idle: dict[tuple[str, int], list[BulkConnection]] = {}
        self.body_sent = 0.0  # when the last request's body was handed to the kernel

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: FileBody | bytes | None
    ) -> Response:
        """One request on an idle connection (or a new one) to the URL's host."""
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        idle = self._idle.setdefault(key, [])
        connection = idle.pop() if idle else None
        if connection is None or not connection.reusable:
            connection = BulkConnection(*key)
            await connection.connect(self.connect_timeout)
        try:
            response = await connection.request(method, url, headers, body, self.response_timeout)
        except BaseException:
            connection.close()
            raise
        self.body_sent = connection.body_sent
        if connection.reusable:
            idle.append(connection)
        return response

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close


def _has_body(method: str) -> bool:
    """Methods that send ``Content-Length: 0`` when they have no body (as httpx does)."""
    return method in ("POST", "PUT", "PATCH")


__all__ = ["BulkConnection", "BulkSender", "FileBody"]
