"""Who a connection is and what it may do: bearer tokens, checked before the WebSocket upgrade.

Two kinds of bearer token, configured on the server (``resume serve``):

- a plain shared token (``--token``): its holder may do everything, as before;
- a JWT (``--jwt-secret`` for HS256/384/512, ``--jwt-public-key FILE`` for RS*/PS*/ES*/EdDSA),
  verified with PyJWT, ``exp`` required and enforced, with these claims::

      {"sub": "alice",                                  # the principal
       "exp": 1767225600,
       "channels": {"publish": ["orders.*"], "subscribe": ["orders.*", "news"]},
       "uploads": ["alice/*"]}                          # remote names it may write

  Globs are :func:`fnmatch.fnmatchcase` patterns (``*`` also matches ``/``). A missing claim
  grants nothing.

:meth:`Authenticator.process_request` runs in the server's ``process_request``: it answers
HTTP 401 for a missing, wrong, expired or forged token, and otherwise attaches the
:class:`Principal` to the connection. Any endpoint reads it with :func:`principal_of`::

    principal = principal_of(connection)
    if not principal.may_upload(name):
        ...  # refuse with a "forbidden" error
    file_id = principal.namespaced(file_id)  # one principal cannot collide with another's ids

:meth:`Authenticator.authorize` is the second step, after routing: an endpoint that has an
``authorize(principal, argument)`` method (returning a reason to refuse, or None) gets HTTP 403
with that reason before the upgrade.
"""

from __future__ import annotations

import hmac
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from resume.errors import ResumeError, UsageError

HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MAX_QUOTED_SUB = 128  # a namespaced id must fit the store's producer/file id columns


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on a connection, and what they may do.

    ``sub`` is None for the plain token (or a server without authentication): everything is
    allowed and ids are not namespaced. A JWT principal may only use what its claims list.
    """

    sub: str | None = None
    publish: tuple[str, ...] = ("*",)
    subscribe: tuple[str, ...] = ("*",)
    uploads: tuple[str, ...] = ("*",)
    expires: float | None = None  # Unix time the token expires (None: never)

    def may_publish(self, channel: str) -> bool:
        """Whether this principal may publish to ``channel``."""
        return _matches(channel, self.publish)

    def may_subscribe(self, channel: str) -> bool:
        """Whether this principal may read ``channel``."""
        return _matches(channel, self.subscribe)

    def may_use_channel(self, channel: str) -> bool:
        """Whether this principal may publish to or read ``channel`` (checked at the upgrade)."""
        return self.may_publish(channel) or self.may_subscribe(channel)

    def may_upload(self, name: str) -> bool:
        """Whether this principal may write the remote file ``name`` (relative to the root)."""
        return _matches(name, self.uploads)

    def namespaced(self, ident: str) -> str:
        """``ident`` (a client id, a file id) in this principal's namespace.

        ``quote(sub)/ident`` for a JWT principal: the quoted sub holds no ``/``, so two
        principals never share a namespaced id. Unchanged for the plain token, which may act
        as anyone.
        """
        if self.sub is None:
            return ident
        return f"{quote(self.sub, safe='')}/{ident}"

    def describe(self) -> str:
        """``sub`` for logs (``*`` for the plain token)."""
        return "*" if self.sub is None else self.sub


EVERYONE = Principal()  # the plain token, or no authentication configured


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


class Unauthorized(ResumeError):
    """The server refused a bearer token (the message says why); answered with HTTP 401."""


_principals: weakref.WeakKeyDictionary[ServerConnection, Principal] = weakref.WeakKeyDictionary()


def attach(connection: ServerConnection, principal: Principal) -> None:
    """Record who ``connection`` authenticated as (done by :class:`Authenticator`)."""
    _principals[connection] = principal


def principal_of(connection: ServerConnection) -> Principal:
    """The principal ``connection`` authenticated as.

    :data:`EVERYONE` for a connection that went through no authentication step (a server
    without a token, or an endpoint embedded without ``ResumeApp.process_request``).
    """
    return _principals.get(connection, EVERYONE)


class Authenticator:
    """Checks bearer tokens: a plain one, JWTs, both, or none (then everyone is allowed)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        jwt_secret: str | None = None,
        jwt_public_key: str | bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.clock = clock
        self._key: Any = None
        self._algorithms: list[str] = []
        if jwt_secret is not None and jwt_public_key is not None:
            raise UsageError("give --jwt-secret or --jwt-public-key, not both")
        if jwt_secret is not None:
            if len(jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise UsageError(
                    f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes long "
                    "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            self._key, self._algorithms = jwt_secret, HMAC_ALGORITHMS
        elif jwt_public_key is not None:
            self._key, self._algorithms = _load_public_key(jwt_public_key)

    @classmethod
    def from_files(
        cls,
        *,
        token: str | None = None,
        jwt_secret: str | None = None,
        jwt_public_key: Path | None = None,
    ) -> Authenticator:
        """An authenticator from server options; the public key is read from a PEM file."""
        pem: bytes | None = None
        if jwt_public_key is not None:
            try:
                pem = Path(jwt_public_key).read_bytes()
            except OSError as exc:
                raise UsageError(
                    f"cannot read --jwt-public-key {jwt_public_key}: {exc.strerror}"
                ) from exc
        return cls(token=token, jwt_secret=jwt_secret, jwt_public_key=pem)

    @property
    def enabled(self) -> bool:
        """Whether a token is required at all."""
        return self.token is not None or self._key is not None

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization`` header value; raises :class:`Unauthorized`."""
        if not self.enabled:
            return EVERYONE
        scheme, _, supplied = (authorization or "").partition(" ")
        supplied = supplied.strip()
        if scheme.lower() != "bearer" or not supplied:
            raise Unauthorized("missing bearer token")
        if self.token is not None and hmac.compare_digest(supplied.encode(), self.token.encode()):
            return EVERYONE
        if self._key is None:
            raise Unauthorized("wrong token")
        return self._decode(supplied)

    def _decode(self, token: str) -> Principal:
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("invalid token: bad signature") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        return principal_from_claims(claims)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP 401 for a refused token; otherwise attach the principal and return None."""
        try:
            principal = self.authenticate(request.headers.get("Authorization"))
        except Unauthorized as exc:
            response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{exc}\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="resume"'
            return response
        attach(connection, principal)
        return None

    @staticmethod
    def authorize(connection: ServerConnection, endpoint: object, argument: str) -> Response | None:
        """HTTP 403 if ``endpoint.authorize(principal, argument)`` gives a reason to refuse."""
        check = getattr(endpoint, "authorize", None)
        if check is None:
            return None
        reason = check(principal_of(connection), argument)
        if reason is None:
            return None
        return connection.respond(HTTPStatus.FORBIDDEN, f"{reason}\n")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """The principal a verified JWT's claims describe; raises :class:`Unauthorized` if malformed."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("invalid token: 'sub' must be a non-empty string")
    if len(quote(sub, safe="")) > MAX_QUOTED_SUB:
        raise Unauthorized(f"invalid token: 'sub' longer than {MAX_QUOTED_SUB} characters")
    channels = claims.get("channels", {})
    if not isinstance(channels, dict):
        raise Unauthorized("invalid token: 'channels' must be an object")
    expires = claims.get("exp")
    return Principal(
        sub=sub,
        publish=_globs(channels.get("publish"), "channels.publish"),
        subscribe=_globs(channels.get("subscribe"), "channels.subscribe"),
        uploads=_globs(claims.get("uploads"), "uploads"),
        expires=float(expires) if isinstance(expires, int | float) else None,
    )


def _globs(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Unauthorized(f"invalid token: '{name}' must be a list of strings")
    return tuple(value)


def _load_public_key(pem: str | bytes) -> tuple[Any, list[str]]:
    """The public key in ``pem`` and the JWT algorithms that go with its type."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UsageError(
            "--jwt-public-key needs the 'cryptography' package: pip install 'resume[jwt]'"
        ) from exc
    try:
        key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise UsageError(f"--jwt-public-key is not a PEM public key: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256", "ES384", "ES512"]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key, ["EdDSA"]
    raise UsageError(f"--jwt-public-key: unsupported key type {type(key).__name__}")


__all__ = [
    "EVERYONE",
    "Authenticator",
    "Principal",
    "Unauthorized",
    "attach",
    "principal_from_claims",
    "principal_of",
]
