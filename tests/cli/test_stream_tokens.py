"""Scoped tokens against a real `resume serve --jwt-secret` process, as a user runs them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ServeProcess, run_resume
from tests.test_auth import SECRET, mint


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """A server whose JWT secret comes from $RESUME_JWT_SECRET."""
    with ServeProcess(tmp_path / "srv", env={"RESUME_JWT_SECRET": SECRET}) as server:
        yield server


def test_orders_token_on_orders_eu_and_refused_on_payments(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """A token for orders.* publishes and reads orders.eu; payments is one clear line, exit 1."""
    token = mint(sub="shop", publish=["orders.*"], subscribe=["orders.*"])
    orders = f"{serve.url}/streams/orders.eu"
    sent = run_resume("send", orders, "--token", token, input="o1\no2\n")
    assert sent.returncode == 0, sent.stderr
    tail = run_resume(
        "tail", orders, "--token", token, "--consumer", "c", "--db", str(tmp_path / "t.db"),
        "--from-start", "--count", "2", timeout=30,
    )  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == ["o1", "o2"]

    began = time.monotonic()
    refused = run_resume(
        "-v", "send", f"{serve.url}/streams/payments", "--token", token, input="x\n"
    )
    elapsed = time.monotonic() - began
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("resume: error")]
    assert errors == [
        "resume: error: server refused the connection: HTTP 403: "
        "this token does not allow channel 'payments'"
    ]
    assert "retrying" not in refused.stderr  # fatal at once, never retried
    assert elapsed < 10  # process start-up included; the in-process test bounds it to 1 s


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(sub="shop", publish=["orders.*"], expires_in=-5), "HTTP 401: token expired"),
        (
            mint("f" * 40, sub="shop", publish=["orders.*"]),
            "HTTP 401: invalid token: bad signature",
        ),
    ],
)
def test_expired_and_forged_tokens_are_refused(
    serve: ServeProcess, token: str, reason: str
) -> None:
    """An expired or forged token is a 401 that says which, exit 1, and nothing is stored."""
    result = run_resume("send", f"{serve.url}/streams/orders.eu", "--token", token, input="x\n")
    assert result.returncode == 1
    assert result.stderr.strip() == f"resume: error: server refused the connection: {reason}"


def test_serve_options_for_tokens_memory_and_quotas(tmp_path: Path) -> None:
    """The new serve options reach the config; bad values are one-line usage errors (exit 2)."""
    from resume.cli import build_parser
    from resume.cli.serve import config_from

    args = build_parser().parse_args(
        ["serve", "--root", str(tmp_path), "--jwt-secret", SECRET, "--tail-memory", "16MiB",
         "--publish-rate", "500", "--publish-bytes", "1MiB"]
    )  # fmt: skip
    config = config_from(args)
    assert (config.jwt_secret, config.tail_memory) == (SECRET, 16 * 2**20)
    assert (config.publish_rate, config.publish_bytes) == (500, 2**20)
    for bad, message in (
        (["--jwt-secret", "short"], "at least 32 bytes"),
        (["--jwt-public-key", str(tmp_path / "none.pem")], "cannot read --jwt-public-key"),
        (["--publish-rate", "0"], "--publish-rate must be positive"),
        (["--tail-memory", "lots"], "not a size"),
    ):
        result = run_resume("serve", "--root", str(tmp_path / "srv"), "--port", "0", *bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
