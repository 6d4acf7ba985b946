"""TLS contexts for `resume serve` and for every client, built in one place each.

The server side (:func:`server_context`) loads a certificate chain and key, and with a client
CA requires every client to present a certificate signed by it (mutual TLS). The client side
(:func:`client_context`) verifies the server against the system's trust store, or against
``cacert`` for a private CA; ``insecure`` turns verification off and is meant for a first
test against a self-signed server only, never for data that matters.

Files that cannot be read or do not match are a :class:`~resume.errors.UsageError` naming
the option, so a typo in a path is one clear line, not a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from pathlib import Path

from resume.errors import UsageError

INSECURE_WARNING = (
    "WARNING: --insecure: the server's TLS certificate is NOT verified. Anyone on the network "
    "path can read and change this connection and learn the token. Use --cacert FILE instead."
)


def server_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server context: ``certfile`` (with ``keyfile``), TLS 1.2 or newer.

    With ``client_ca``, a certificate a client presents must be signed by one of its CAs (the
    handshake fails otherwise). Presenting none is let through the handshake on purpose
    (``CERT_OPTIONAL``): the server then refuses the request with HTTP 403 (see
    :func:`has_client_certificate`), which the client reports as one clear, fatal error. A
    TLS 1.3 client would otherwise see only a closed connection, and retry it for ever.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certfile, keyfile, "--certfile/--keyfile")
    if client_ca is not None:
        _load_ca(context, client_ca, "--client-ca")
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def has_client_certificate(transport: object) -> bool:
    """Whether the peer of a TLS ``transport`` presented a certificate that verified."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    return bool(get_extra_info and get_extra_info("peercert"))


def client_context(
    *,
    cacert: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server (unless ``insecure``).

    ``cacert`` replaces the system trust store (a private CA or a self-signed certificate);
    ``certfile``/``keyfile`` present a client certificate to servers that require one.
    """
    if insecure and cacert is not None:
        raise UsageError("--insecure and --cacert exclude each other")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cacert is not None:
        # Only the given CA: a private deployment should not also trust every public CA.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_ca(context, cacert, "--cacert")
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if certfile is not None:
        _load_chain(context, certfile, keyfile, "--cert/--key")
    elif keyfile is not None:
        raise UsageError("--key needs --cert")
    return context


def certificate_sha256(certfile: str | os.PathLike[str]) -> str | None:
    """SHA-256 of the first (the server's own) certificate in a PEM file, or None."""
    try:
        text = Path(certfile).read_text("ascii", errors="replace")
    except OSError:
        return None
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if match is None:
        return None
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(match.group(0))).hexdigest()


def _load_chain(
    context: ssl.SSLContext,
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None,
    option: str,
) -> None:
    for path in (certfile, keyfile):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option}: no such file: {os.fspath(path)}")
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise UsageError(
            f"{option}: cannot load the certificate and key ({exc.reason or exc}); "
            "give PEM files, and the key that belongs to the certificate"
        ) from exc
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {exc.filename}: {exc.strerror}") from exc


def _load_ca(context: ssl.SSLContext, cafile: str | os.PathLike[str], option: str) -> None:
    if not Path(cafile).is_file():
        raise UsageError(f"{option}: no such file: {os.fspath(cafile)}")
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as exc:
        raise UsageError(f"{option}: not a PEM certificate file ({exc.reason or exc})") from exc
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {cafile}: {exc.strerror}") from exc
