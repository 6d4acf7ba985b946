"""An in-process `resume serve` on 127.0.0.1 for upload tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from resume.net.backoff import Backoff
from resume.server import ServerConfig, run_server
from resume.store import open_store
from resume.transfer.upload import UploadOptions
from tests.processes import ServeProcess


@dataclass
class RunningServer:
    url: str
    root: Path
    config: ServerConfig
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers with any ServerConfig overrides; all are stopped after the test."""
    running: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        config = ServerConfig(root=tmp_path / "srv", port=0)
        config = replace(config, **overrides)
        config.root.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(run_server(config, ready=ready.set_result, stop=stop))
        url = await asyncio.wait_for(asyncio.shield(ready), 10)
        server = RunningServer(url, config.root, config, stop, task)
        running.append(server)
        return server

    yield start
    for server in running:
        if not server.task.done():
            await server.shutdown()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """One server with default settings."""
    return await start_server()


@pytest.fixture
def client_store(tmp_path: Path):
    """The uploading side's state store."""
    with open_store(tmp_path / "client.db") as store:
        yield store


def fast_options(**overrides: Any) -> UploadOptions:
    """Small chunks and near-zero backoff so tests exercise many chunks quickly."""
    defaults: dict[str, Any] = {
        "chunk_size": 64 * 1024,
        "window": 4,
        "backoff": Backoff(base=0.01, cap=0.05, min_uptime=0.5),
        "give_up_after": 5.0,
        "ack_timeout": 10.0,
    }
    defaults.update(overrides)
    return UploadOptions(**defaults)


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (reproducible by seed)."""
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path.write_bytes(rng.randbytes(size))
    return path


def partial_files(root: Path) -> list[str]:
    """Partial uploads still on the server."""
    directory = root / ".resume" / "partial"
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start real `resume serve` processes (killed after the test): ``start(*args, root=)``."""
    started: list[ServeProcess] = []

    def start(
        *args: str, root: Path | None = None, env: dict[str, str] | None = None
    ) -> ServeProcess:
        process = ServeProcess(root or tmp_path / "root", *args, env=env)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 3 MiB tmpfs to fill up; skipped where this sandbox may not mount."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = os.system(f"mount -t tmpfs -o size=3m tmpfs {mount} 2>/dev/null")
    if result != 0:
        pytest.skip("cannot mount a tmpfs here to simulate a full disk")
    try:
        yield mount
    finally:
        os.system(f"umount -l {mount}")  # lazy: a server may still hold files open
