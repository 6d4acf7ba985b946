"""Third-party tus clients (tuspy from PyPI, tus-js-client under node) and `resume upload` over
HTTP against `resume serve` as a real process on 127.0.0.1; SIGKILLs of either side.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.interop.peers import random_file, start_tus_js_upload, tus_js_upload
from tests.interop.test_tus_client import (
    CHUNK,
    committed,
    kill_mid_upload,
    status,
    upload,
)
from tests.processes import ServeProcess, stop
from tests.transfer.conftest import partial_files

BIG = 24 * 2**20 + 321  # not a whole number of the server's chunks nor of the clients'


@pytest.fixture
def serve(tmp_path: Path):
    server = ServeProcess(tmp_path / "root")
    server.start()
    yield server
    server.kill()


def files_url(server: ServeProcess) -> str:
    return server.url.replace("ws://", "http://") + "/files/"


def test_tuspy_uploads_to_resume_serve(serve: ServeProcess, tmp_path: Path) -> None:
    """tuspy (PyPI), chunked, with its metadata: the file is published under its filename."""
    from tusclient import client as tus_client

    source = random_file(tmp_path / "tuspy.bin", 3 * 2**20 + 17)
    uploader = tus_client.TusClient(files_url(serve)).uploader(
        str(source), chunk_size=512 * 1024, metadata={"filename": "from-tuspy.bin"}
    )
    uploader.upload()
    assert (serve.root / "from-tuspy.bin").read_bytes() == source.read_bytes()
    assert partial_files(serve.root) == []


def test_tus_js_client_uploads_chunked_and_in_parallel(
    node_peers: Path, serve: ServeProcess, tmp_path: Path
) -> None:
    """tus-js-client: chunked PATCHes, then parallelUploads (concatenation) of 3 parts."""
    source = random_file(tmp_path / "js.bin", 5 * 2**20 + 99)
    done = tus_js_upload(
        node_peers,
        source,
        files_url(serve),
        chunk_size=2**20,
        metadata={"filename": "chunked.bin"},
    )
    assert done["done"] is True
    assert (serve.root / "chunked.bin").read_bytes() == source.read_bytes()
    done = tus_js_upload(
        node_peers, source, files_url(serve), parallel=3, metadata={"filename": "parallel.bin"}
    )
    assert (serve.root / "parallel.bin").read_bytes() == source.read_bytes()
    assert partial_files(serve.root) == []


def test_tus_js_client_killed_with_sigkill_resumes_from_its_url_store(
    node_peers: Path, serve: ServeProcess, tmp_path: Path
) -> None:
    """tus-js-client with a file URL store, SIGKILLed mid-upload: the next run resumes the
    same upload (resumed), sends only the rest, and the file is identical."""
    source = random_file(tmp_path / "big.bin", BIG)
    store = tmp_path / "urls.json"
    options = {
        "chunk_size": 2**20,
        "url_store": store,
        "metadata": {"filename": "resumed.bin"},
    }
    proc = start_tus_js_upload(node_peers, source, files_url(serve), **options)
    assert proc.stdout is not None
    progress = 0
    while progress < 6 * 2**20:
        line = proc.stdout.readline()
        assert line, f"tus-js-client ended early: {proc.stderr.read() if proc.stderr else ''}"
        progress = json.loads(line).get("progress", progress)
    stop(proc, signal.SIGKILL)
    assert not (serve.root / "resumed.bin").exists()
    done = tus_js_upload(node_peers, source, files_url(serve), **options)
    assert done["resumed"] is True
    assert (serve.root / "resumed.bin").read_bytes() == source.read_bytes()
    assert partial_files(serve.root) == []


def test_resume_upload_over_http_survives_a_client_sigkill(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """`resume upload FILE http://.../files/`, SIGKILLed mid-upload, resumes (resumed_from >
    0, only the rest sent) and the published file is identical."""
    source = random_file(tmp_path / "big.bin", BIG)
    db = tmp_path / "client.db"
    url = files_url(serve)
    kill_mid_upload(source, url, db)
    before = committed(db)
    assert before > 0
    code, summary, stderr = upload(source, url, db)
    assert code == 0, stderr
    [item] = summary["files"]
    assert item["state"] == "completed" and item["resumed_from"] >= before * CHUNK
    assert summary["bytes_sent"] <= source.stat().st_size - before * CHUNK
    assert (serve.root / "big.bin").read_bytes() == source.read_bytes()
    [record] = status(db)
    assert record["state"] == "completed"


def test_resume_upload_over_http_in_parallel_to_resume_serve(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """--parallel over HTTP: partial uploads joined by a final one on `resume serve`."""
    source = random_file(tmp_path / "par.bin", 6 * 2**20 + 5)
    db = tmp_path / "c.db"
    code, summary, stderr = upload(source, files_url(serve), db, "--parallel", "3")
    assert code == 0, stderr
    assert summary["files"][0]["state"] == "completed"
    assert (serve.root / "par.bin").read_bytes() == source.read_bytes()
    assert serve.log.count("upload begin") == 4  # three partial uploads and the final one
    assert partial_files(serve.root) == []


def test_an_acknowledged_offset_never_goes_backwards_across_server_sigkills(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """A client PATCHes while the server is SIGKILLed three times: after each restart HEAD
    reports at least every offset a response acknowledged; the file ends identical."""
    source = random_file(tmp_path / "data.bin", 12 * 2**20 + 7)
    data = source.read_bytes()
    tus = {"Tus-Resumable": "1.0.0"}
    base = files_url(serve)
    with httpx.Client(timeout=10) as client:
        created = client.post(
            base,
            headers={
                **tus,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": "filename ZC5iaW4=",
            },
        )
        url = created.headers["Location"]
        acknowledged = 0
        failures = 0
        for fraction in (0.25, 0.5, 0.75):
            killer: threading.Thread | None = None
            try:
                while True:
                    if killer is None and acknowledged >= fraction * len(data):
                        # Kill a moment later, most likely while a PATCH is in flight.
                        killer = threading.Thread(target=lambda: (time.sleep(0.01), serve.kill()))
                        killer.start()
                    piece = data[acknowledged : acknowledged + 300_000]
                    response = client.patch(
                        url,
                        content=piece,
                        headers={
                            **tus,
                            "Upload-Offset": str(acknowledged),
                            "Content-Type": "application/offset+octet-stream",
                        },
                    )
                    assert response.status_code == 204, response.text
                    offset = int(response.headers["Upload-Offset"])
                    assert offset >= acknowledged
                    acknowledged = offset
                    assert acknowledged < len(data), "the upload ended before the kill"
            except httpx.TransportError:
                failures += 1
            assert killer is not None
            killer.join()
            serve.start()
            head = client.head(url, headers=tus)
            assert int(head.headers["Upload-Offset"]) >= acknowledged
            acknowledged = int(head.headers["Upload-Offset"])
        assert failures == 3  # every kill landed mid-upload
        while acknowledged < len(data):
            response = client.patch(
                url,
                content=data[acknowledged:],
                headers={
                    **tus,
                    "Upload-Offset": str(acknowledged),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            acknowledged = int(response.headers["Upload-Offset"])
    assert (serve.root / "d.bin").read_bytes() == data
    assert "Traceback" not in serve.log
