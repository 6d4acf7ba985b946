"""GET /healthz, /readyz, /metrics and /status of a real in-process server."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
from email.message import Message
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from resume.net.connector import ConnectOptions
from resume.protocol.session import Gap
from resume.protocol.upload import Begin, new_file_id
from resume.store import Store, open_store
from resume.stream.client import StreamClient
from resume.transfer.plan import collect_jobs
from resume.transfer.upload import Uploader
from tests.transfer.conftest import RunningServer, StartServer, fast_options, make_file
from tests.transfer.test_receiver import raw, request


def get(url: str, path: str, token: str | None = None) -> tuple[int, Message, bytes]:
    """A blocking HTTP GET (run it in a thread: the server shares this event loop)."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


async def fetch(server: RunningServer, path: str, token: str | None = None):
    return await asyncio.to_thread(get, server.url, path, token)


async def scrape(server: RunningServer, token: str | None = None) -> dict[str, float]:
    """Every sample of /metrics as ``name{label=value,...}`` -> value."""
    status, headers, body = await fetch(server, "/metrics", token)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_healthz_and_readyz_answer(server: RunningServer) -> None:
    """Liveness is a plain 200; readiness reports the store and the disk as ok."""
    status, _, body = await fetch(server, "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, headers, body = await fetch(server, "/readyz")
    document = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert document["ready"] is True
    assert document["checks"]["store"] == "ok" and document["checks"]["disk"] == "ok"
    assert document["checks"]["disk_free_bytes"] > 0


async def test_readyz_fails_when_disk_space_is_below_the_threshold(
    start_server: StartServer,
) -> None:
    """A threshold above the free space makes /readyz 503, and says why."""
    server = await start_server(min_free_space=2**62)
    status, _, body = await fetch(server, "/readyz")
    document = json.loads(body)
    assert status == 503 and document["ready"] is False
    assert document["checks"]["disk"] == "low"
    assert (await fetch(server, "/healthz"))[0] == 200  # alive all the same


async def test_readyz_fails_when_the_store_cannot_answer(server: RunningServer) -> None:
    """A store that fails its query (here: its schema table is gone) is not ready."""
    db = server.root / ".resume" / "server.db"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE alembic_version RENAME TO broken")
    try:
        status, _, body = await fetch(server, "/readyz")
        document = json.loads(body)
        assert status == 503 and document["checks"]["store"].startswith("error:")
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE broken RENAME TO alembic_version")
    assert (await fetch(server, "/readyz"))[0] == 200


async def test_metrics_change_after_an_upload_and_a_stream(
    server: RunningServer, client_store: Store, tmp_path: Path
) -> None:
    """Counters move: connections, uploads completed, bytes, fsyncs, commits, messages."""
    before = await scrape(server)
    assert before["resume_uploads_completed_total"] == 0
    assert before["resume_build_info{version=0.1.0}"] == 1

    source = make_file(tmp_path / "up" / "f.bin", 300_000)
    await Uploader(client_store, server.url, fast_options()).run(collect_jobs([source]))
    async with StreamClient(f"{server.url}/streams/orders") as producer:
        await producer.send_many(["a", "b", "c"])
        await producer.flush()
    async with StreamClient(f"{server.url}/streams/orders", start="start") as consumer:
        for _ in range(3):
            await asyncio.wait_for(consumer.receive(), 10)

    after = await scrape(server)
    assert after["resume_uploads_completed_total"] == 1
    assert after["resume_upload_received_bytes_total"] == 300_000
    assert after["resume_connections_total{endpoint=upload}"] >= 1
    assert after["resume_connections_total{endpoint=streams}"] == 2
    assert after["resume_upload_fsync_seconds_count"] >= 1
    assert after["resume_store_commit_seconds_count{kind=upload}"] >= 1
    assert after["resume_store_commit_seconds_count{kind=stream}"] >= 1
    assert after["resume_stream_messages_appended_total"] == 3
    assert after["resume_stream_messages_delivered_total"] >= 3
    assert after["resume_uploads_in_progress"] == 0
    assert after["resume_disk_free_bytes"] > 0


async def test_an_upload_in_progress_and_a_gap_show_in_the_metrics(
    start_server: StartServer,
) -> None:
    """The in-progress gauge counts an upload while its owner is connected; a consumer told
    that trimmed messages are gone counts one gap."""
    server = await start_server(retention_count=3)
    uploading = await raw(server)
    reply = await request(uploading, Begin(new_file_id(), "half.bin", 10_000, 4096).to_json())
    assert reply["type"] == "state"
    assert (await scrape(server))["resume_uploads_in_progress"] == 1
    await uploading.close()

    url = f"{server.url}/streams/orders"
    async with StreamClient(url, subscribe=False) as producer:
        await producer.send_many(list(range(10)))
        await producer.flush()
    gaps: list[Gap] = []
    with open_store(server.root.parent / "client.db") as store:
        store.stream_client.set_cursor("late", url, 0)
        async with StreamClient(url, consumer="late", store=store, on_gap=gaps.append) as late:
            for _ in range(3):
                await asyncio.wait_for(late.receive(), 10)
    assert gaps == [Gap(1, 7)]
    after = await scrape(server)
    assert after["resume_stream_gaps_total"] == 1
    assert after["resume_uploads_in_progress"] == 0  # its owner left


async def test_refusals_are_counted_with_bounded_labels(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """A wrong token counts as a refused authentication; a refused upload by its code."""
    server = await start_server(token="s3cret", max_file_size=1000)
    status, headers, _ = await fetch(server, "/upload")  # no token
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    source = make_file(tmp_path / "up" / "big.bin", 5000)
    options = fast_options(connect=ConnectOptions(token="s3cret"))
    [result] = await Uploader(client_store, server.url, options).run(collect_jobs([source]))
    assert result.state == "failed" and "limit" in (result.error or "")
    samples = await scrape(server, "s3cret")
    assert samples["resume_auth_refused_total"] == 1
    assert samples["resume_uploads_failed_total{reason=too_large}"] == 1
    reasons = {key for key in samples if key.startswith("resume_uploads_failed_total")}
    assert len(reasons) == 14  # a fixed set, whatever the clients send


async def test_metrics_and_status_need_the_token_probes_do_not(
    start_server: StartServer,
) -> None:
    """With a token, /metrics and /status answer 401 without it; /healthz and /readyz 200."""
    server = await start_server(token="s3cret")
    assert (await fetch(server, "/healthz"))[0] == 200
    assert (await fetch(server, "/readyz"))[0] == 200
    assert (await fetch(server, "/metrics"))[0] == 401
    assert (await fetch(server, "/status"))[0] == 401
    status, _, body = await fetch(server, "/status", "s3cret")
    assert status == 200 and json.loads(body) == {"connections": {}, "channels": {}, "uploads": []}


async def test_each_app_has_its_own_registry(
    start_server: StartServer, client_store: Store, tmp_path: Path
) -> None:
    """Two servers in one process: an upload to one leaves the other's metrics at zero."""
    first = await start_server()
    second = await start_server(root=tmp_path / "second")
    source = make_file(tmp_path / "up" / "f.bin", 10_000)
    await Uploader(client_store, first.url, fast_options()).run(collect_jobs([source]))
    assert (await scrape(first))["resume_uploads_completed_total"] == 1
    assert (await scrape(second))["resume_uploads_completed_total"] == 0


async def test_status_shows_live_connections_per_channel(server: RunningServer) -> None:
    """/status lists the open connections of each channel with their peer address."""
    async with StreamClient(f"{server.url}/streams/news") as client:
        await client.ready()
        _, _, body = await fetch(server, "/status")
    live = json.loads(body)
    assert live["connections"] == {"streams": 1}
    [connection] = live["channels"]["news"]
    assert connection["peer"].startswith("127.0.0.1:")
