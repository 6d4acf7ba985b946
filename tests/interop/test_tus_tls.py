"""tus over https (tuspyserver under uvicorn with a test certificate), real processes.

`resume upload https://...` verifies the server against --cacert, stops at once with one line
on a wrong CA, and goes through an environment proxy only with --use-env-proxy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.interop.peers import ListeningProcess, read_upload, tuspy_server
from tests.interop.peers import random_file as make_file
from tests.net.test_env_proxy import ConnectProxy
from tests.processes import resume_cmd, resume_env, run_resume
from tests.tls_certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tuspy_tls(tmp_path: Path, certs: Certs) -> Iterator[ListeningProcess]:
    """tuspyserver over https; its files in ``tmp_path / "tuspy"``."""
    tls = (certs.server_cert, certs.server_key)
    with tuspy_server(tmp_path / "tuspy", tmp_path / "tuspy.log", tls) as server:
        yield server


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    recorder = ConnectProxy()
    recorder.server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    yield recorder
    recorder.server.close()


def upload_args(source: Path, url: str, db: Path, *extra: str) -> list[str]:
    return ["upload", str(source), url, "--db", str(db), "--json", "--give-up-after", "20s", *extra]


def test_https_upload_verified_with_cacert_and_a_wrong_ca_is_one_line(
    tuspy_tls: ListeningProcess, certs: Certs, tmp_path: Path
) -> None:
    """--cacert: the file arrives; another CA: exit 1 at once, one line, nothing retried."""
    assert tuspy_tls.url.startswith("https://127.0.0.1:")
    source = make_file(tmp_path / "data.bin", 3 * 2**20 + 5)
    wrong = run_resume(
        *upload_args(source, tuspy_tls.url, tmp_path / "w.db", "--cacert", str(certs.other_ca))
    )
    assert wrong.returncode == 1
    [line] = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert line.startswith("resume: error: ") and "TLS certificate verification failed" in line

    db = tmp_path / "c.db"
    right = run_resume(*upload_args(source, tuspy_tls.url, db, "--cacert", str(certs.ca)))
    assert right.returncode == 0, right.stderr
    [item] = json.loads(right.stdout)["files"]
    assert item["state"] == "completed"
    [record] = json.loads(run_resume("status", "--json", "--db", str(db)).stdout)
    assert read_upload(tmp_path / "tuspy", record["upload_url"]) == source.read_bytes()


async def test_https_upload_goes_through_the_environment_proxy_only_when_asked(
    tuspy_tls: ListeningProcess, certs: Certs, proxy: ConnectProxy, tmp_path: Path
) -> None:
    """HTTPS_PROXY set: ignored without --use-env-proxy; with it, the upload is tunnelled
    (TLS to the real server inside, still verified with --cacert)."""
    env = resume_env(
        {"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
    )

    async def upload(name: str, *extra: str) -> None:
        source = make_file(tmp_path / name, 200_000)
        process = await asyncio.create_subprocess_exec(
            *resume_cmd(*upload_args(source, tuspy_tls.url, tmp_path / "c.db", *extra)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()

    await upload("direct.bin", "--cacert", str(certs.ca))
    assert proxy.targets == []
    await upload("tunnelled.bin", "--cacert", str(certs.ca), "--use-env-proxy")
    assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{tuspy_tls.port}"}
