"""The exception tree and the retry classifier."""

from __future__ import annotations

import pytest

from resume import errors
from resume.errors import Verdict, classify


@pytest.mark.parametrize(
    "exc",
    [
        errors.ConnectError("refused"),
        errors.ConnectionLost("reset", close_code=1006),
        errors.ServerBusy("503", status=503),
        errors.ConnectTimeout("slow"),
        errors.HandshakeTimeout("silent"),
        errors.AckTimeout("no ack"),
    ],
)
def test_retryable_errors_are_retried(exc: Exception) -> None:
    """Every retryable branch classifies as RETRY."""
    assert classify(exc) is Verdict.RETRY


@pytest.mark.parametrize(
    "exc",
    [
        errors.Rejected("401", status=401),
        errors.ProtocolError("bad frame", close_code=1002),
        errors.ChecksumMismatch("bad"),
        errors.SourceChanged("edited"),
        errors.GapError("trimmed", first=1, last=5),
        errors.UsageError("bad arg"),
        errors.StoreError("disk"),
        errors.LedgerError("bug"),
        ValueError("a bug, not a network problem"),
    ],
)
def test_fatal_errors_stop(exc: Exception) -> None:
    """Fatal branches and unknown exceptions classify as FATAL, so bugs never loop."""
    assert classify(exc) is Verdict.FATAL


@pytest.mark.parametrize("code", [1001, 1006, 1011, 1012, 1013])
def test_transient_close_codes_map_to_retryable(code: int) -> None:
    """Going away, abnormal closure, server error, restart, try again later: retry."""
    exc = errors.error_for_close(code)
    assert classify(exc) is Verdict.RETRY
    assert exc.close_code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1009])
def test_protocol_close_codes_map_to_fatal(code: int) -> None:
    """Protocol error, unsupported data, bad payload, policy, too big: fatal."""
    assert classify(errors.error_for_close(code, "why")) is Verdict.FATAL


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (401, Verdict.FATAL),
        (403, Verdict.FATAL),
        (404, Verdict.FATAL),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (429, Verdict.RETRY),
    ],
)
def test_handshake_status_mapping(status: int, verdict: Verdict) -> None:
    """4xx refusals are fatal, 5xx and 429 are retried."""
    exc = errors.error_for_status(status, "body")
    assert classify(exc) is verdict
    assert str(status) in str(exc)
