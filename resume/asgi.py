"""Small ASGI helpers: read a request's head, send a reply. No HTTP parsing here (bodies:
:mod:`resume.direct_body`).

uvicorn (or any ASGI server) parses HTTP; these only move its events into plain values and
back, so the HTTP routes (:mod:`resume.ops`, the tus endpoint) stay free of ASGI details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLIENT_CERTIFICATE = "resume.client_certificate"  # scope extension: the peer presented one


class Disconnected(Exception):
    """The client went away before its request body was complete."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The head of one HTTP request: method, path, query and headers (names lowercased)."""

    method: str
    path: str  # below the app's mount point, percent-decoded as the server gave it
    root_path: str  # where the app is mounted ("" at the top)
    query: str
    headers: tuple[tuple[str, str], ...]
    client: str  # "host:port" of the peer, or "-"
    scheme: str  # http or https
    host: str  # the Host header, or the server's address
    client_certificate: bool = False

    @classmethod
    def from_scope(cls, scope: Scope) -> HttpRequest:
        headers = tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        )
        client = scope.get("client")
        root_path = scope.get("root_path", "") or ""
        path = scope.get("path", "/")
        # Starlette's Mount keeps the full path and sets root_path; plain servers give the rest.
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        server = scope.get("server")
        host = next((v for k, v in headers if k == "host"), None)
        if host is None and server:
            host = f"{server[0]}:{server[1]}"
        return cls(
            method=scope.get("method", "GET").upper(),
            path=path,
            root_path=root_path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            client=f"{client[0]}:{client[1]}" if client else "-",
            scheme=scope.get("scheme", "http"),
            host=host or "localhost",
            client_certificate=bool(scope.get("extensions", {}).get(CLIENT_CERTIFICATE)),
        )

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lowercase), or None; repeated headers are joined."""
        values = self.all(name)
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        """Every value of header ``name`` (lowercase)."""
        return [value for key, value in self.headers if key == name]

    @property
    def mapping(self) -> dict[str, str]:
        """The headers as a dict (repeated ones joined with ", ")."""
        joined: dict[str, str] = {}
        for key, value in self.headers:
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        return joined

    def url_for(self, path: str) -> str:
        """An absolute URL for ``path`` under the app's mount point."""
        return f"{self.scheme}://{self.host}{self.root_path}{path}"


async def respond(
    send: Send,
    status: int,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    head: bool = False,
) -> None:
    """Send a complete response; ``head`` sends the headers of ``body`` but not the body."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if (
        status >= 200
        and status not in (204, 304)
        and not any(k == b"content-length" for k, _ in raw)
    ):
        raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


__all__ = [
    "CLIENT_CERTIFICATE",
    "Disconnected",
    "HttpRequest",
    "respond",
]
