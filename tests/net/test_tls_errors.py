"""TLS and proxy failures map to the error tree: what can never succeed is fatal at once."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidProxyStatus
from websockets.http11 import Response

from resume.errors import ConnectError, Rejected, ServerBusy, UsageError, Verdict, classify
from resume.net.connector import translate
from resume.tls import client_context


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "kind", "verdict"),
    [
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), ConnectError, Verdict.RETRY),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            Rejected,
            Verdict.FATAL,
        ),
        (
            caused(
                InvalidMessage("no answer"), ssl.SSLError(1, "tlsv13 alert certificate required")
            ),
            Rejected,
            Verdict.FATAL,
        ),
        (caused(InvalidMessage("no answer"), EOFError("closed")), ConnectError, Verdict.RETRY),
        (
            InvalidProxyStatus(Response(407, "Proxy Authentication Required", Headers())),
            Rejected,
            Verdict.FATAL,
        ),
        (InvalidProxyStatus(Response(502, "Bad Gateway", Headers())), ServerBusy, Verdict.RETRY),
    ],
)
def test_tls_and_proxy_failures(exc: BaseException, kind: type, verdict: Verdict) -> None:
    """Each failure gets its error class and retry verdict."""
    error = translate(exc)
    assert isinstance(error, kind) and classify(error) is verdict


def test_client_context_refuses_contradictions(tmp_path: Path) -> None:
    """--insecure with --cacert, or --key without --cert, is a usage error, not a guess."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    with pytest.raises(UsageError, match="exclude each other"):
        client_context(cacert=ca, insecure=True)
    with pytest.raises(UsageError, match="--key needs --cert"):
        client_context(keyfile=ca)
    with pytest.raises(UsageError, match="not a PEM certificate"):
        client_context(cacert=ca)
    insecure = client_context(insecure=True)
    assert insecure.verify_mode is ssl.CERT_NONE and not insecure.check_hostname
