"""TLS: `resume serve --certfile` with real `resume upload/send/tail/cancel` processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ServeProcess, run_resume, start_upload, stop, wait_until
from tests.tls_certs import Certs


@pytest.fixture
def tls_server(tmp_path: Path, certs: Certs) -> Iterator[ServeProcess]:
    args = ("--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key))
    with ServeProcess(tmp_path / "srv", *args) as server:
        yield server


def one_line_error(stderr: str) -> str:
    """The single line a fatal error prints (no traceback, no retry chatter)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("resume: error: "), stderr
    return lines[0]


def test_wss_upload_stream_and_cancel_with_cacert(
    tmp_path: Path, certs: Certs, tls_server: ServeProcess
) -> None:
    """Upload, send, tail and cancel over wss:// verify the server against --cacert."""
    assert tls_server.url.startswith("wss://127.0.0.1:")
    source = tmp_path / "data.bin"
    source.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    tls = ("--cacert", str(certs.ca))
    db = str(tmp_path / "client.db")
    result = run_resume(
        "upload", str(source), tls_server.url, "--db", db, "--chunk-size", "256k", *tls
    )
    assert result.returncode == 0, result.stderr
    assert (tls_server.root / "data.bin").read_bytes() == source.read_bytes()

    channel = f"{tls_server.url}/streams/orders"
    sent = run_resume("send", channel, *tls, input="one\ntwo\nthree\n")
    assert sent.returncode == 0, sent.stderr
    tailed = run_resume(
        "tail", channel, "--consumer", "c", "--from-start", "--count", "3", "--db", db, *tls,
        timeout=30,
    )  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    assert tailed.stdout.splitlines() == ["one", "two", "three"]

    # cancel reaches the server over TLS too: kill an upload mid-way, then cancel it there.
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(128 * 2**20)
    uploading = start_upload(str(big), tls_server.url, "--db", db, "--chunk-size", "64k", *tls)
    partial_dir = tls_server.root / ".resume" / "partial"
    wait_until(lambda: partial_dir.exists() and any(partial_dir.iterdir()), 30, "a partial")
    stop(uploading)
    [record] = [
        t
        for t in json.loads(run_resume("status", "--db", db, "--json").stdout)
        if t["name"] == "big.bin"
    ]
    cancelled = run_resume("cancel", record["file_id"], "--db", db, *tls)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "here and on the server" in cancelled.stdout
    assert list(partial_dir.iterdir()) == []


def test_wrong_ca_is_a_fatal_one_line_error(
    tmp_path: Path, certs: Certs, tls_server: ServeProcess
) -> None:
    """A server certificate the given CA did not sign stops at once: one line, exit 1."""
    source = tmp_path / "data.bin"
    source.write_bytes(b"abc" * 1000)
    started = time.monotonic()
    result = run_resume(
        "upload", str(source), tls_server.url, "--db", str(tmp_path / "c.db"),
        "--cacert", str(certs.other_ca), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert "TLS certificate verification failed" in line and "--cacert" in line
    assert time.monotonic() - started < 15  # no retry loop: fatal at the first attempt
    assert not (tls_server.root / "data.bin").exists()

    tailed = run_resume(
        "tail", f"{tls_server.url}/streams/x", "--consumer", "c", "--count", "1",
        "--db", str(tmp_path / "c.db"), "--cacert", str(certs.other_ca), timeout=60,
    )  # fmt: skip
    assert tailed.returncode == 1
    assert "TLS certificate verification failed" in one_line_error(tailed.stderr)


def test_self_signed_server_without_cacert_is_refused(
    tmp_path: Path, tls_server: ServeProcess
) -> None:
    """The system trust store does not know the test CA: a fatal error that names --cacert."""
    result = run_resume("send", f"{tls_server.url}/streams/x", input="a\n", timeout=60)
    assert result.returncode == 1
    assert "--cacert" in one_line_error(result.stderr)


def test_insecure_connects_and_warns_loudly(tmp_path: Path, tls_server: ServeProcess) -> None:
    """--insecure skips verification, and says so on stderr every run."""
    result = run_resume("send", f"{tls_server.url}/streams/x", "--insecure", input="a\n")
    assert result.returncode == 0, result.stderr
    assert "WARNING: --insecure" in result.stderr and "NOT verified" in result.stderr


def test_client_certificates_when_the_server_requires_them(tmp_path: Path, certs: Certs) -> None:
    """With --client-ca the server admits only clients with a certificate that CA signed."""
    args = (
        "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key),
        "--client-ca", str(certs.ca),
    )  # fmt: skip
    with ServeProcess(tmp_path / "srv", *args) as server:
        channel = f"{server.url}/streams/x"
        without = run_resume("send", channel, "--cacert", str(certs.ca), input="a\n", timeout=60)
        assert without.returncode == 1
        assert "HTTP 403: a client certificate is required" in one_line_error(without.stderr)
        with_cert = run_resume(
            "send", channel, "--cacert", str(certs.ca),
            "--cert", str(certs.client_cert), "--key", str(certs.client_key), input="a\n",
        )  # fmt: skip
        assert with_cert.returncode == 0, with_cert.stderr


def test_tls_options_need_a_wss_url(tmp_path: Path, certs: Certs) -> None:
    """--cacert with a ws:// URL would do nothing: refused as a usage error."""
    result = run_resume(
        "send", "ws://127.0.0.1:1/streams/x", "--cacert", str(certs.ca), input="a\n"
    )
    assert result.returncode == 2
    assert "wss://" in one_line_error(result.stderr)


def test_bad_certificate_files_are_one_line_errors(tmp_path: Path, certs: Certs) -> None:
    """A missing --certfile, or a key that does not belong to it, exits 2 with one line."""
    missing = run_resume(
        "serve", "--root", str(tmp_path / "r"), "--port", "0",
        "--certfile", str(tmp_path / "nope.pem"),
    )  # fmt: skip
    assert missing.returncode == 2
    assert "--certfile" in one_line_error(missing.stderr)
    assert not (tmp_path / "r").exists()  # nothing created for a server that cannot start
    mismatched = run_resume(
        "serve", "--root", str(tmp_path / "r"), "--port", "0",
        "--certfile", str(certs.server_cert), "--keyfile", str(certs.client_key),
    )  # fmt: skip
    assert mismatched.returncode == 2
    assert "cannot load the certificate" in one_line_error(mismatched.stderr)
    bad_ca = run_resume(
        "send", "wss://127.0.0.1:1/streams/x", "--cacert", str(tmp_path / "none.pem"), input=""
    )
    assert bad_ca.returncode == 2
    assert "--cacert: no such file" in one_line_error(bad_ca.stderr)
