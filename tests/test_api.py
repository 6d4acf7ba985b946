"""The Python API as a user finds it: top-level names, one-call upload, consistent refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import resume
from resume.errors import SourceError, UsageError, WaitTimeout
from resume.net.backoff import Backoff
from resume.transfer.plan import collect_jobs
from tests.processes import resume_env
from tests.transfer.conftest import make_file


def test_public_names_come_from_the_top_level_package() -> None:
    """`from resume import StreamClient` and friends work; each is the defining module's."""
    from resume import (  # noqa: F401 - importing them is the test
        FileResult,
        RawClient,
        ResumeError,
        StreamClient,
        Uploader,
        UploadOptions,
        open_store,
        upload,
    )
    from resume.stream.client import StreamClient as Defined

    assert resume.StreamClient is Defined
    assert issubclass(resume.SourceChanged, resume.FatalError)
    assert {"StreamClient", "Uploader", "open_store", "upload", "ResumeError"} <= set(dir(resume))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        resume.Nope  # noqa: B018


def test_import_resume_loads_nothing_heavy() -> None:
    """`import resume` does not import websockets, SQLAlchemy or rich (names load on use)."""
    code = (
        "import sys, json, resume; "
        "print(json.dumps([m for m in ('websockets', 'sqlalchemy', 'rich', 'alembic') "
        "if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=resume_env(), check=True
    ).stdout
    assert json.loads(out) == []


def test_collect_jobs_accepts_str_and_refuses_consistently(tmp_path: Path) -> None:
    """str or PathLike; a missing path is a UsageError; what cannot be sent goes to on_skip."""
    make_file(tmp_path / "d" / "ok.bin", 10)
    os.mkfifo(tmp_path / "d" / "pipe")
    skipped = []
    jobs = collect_jobs([str(tmp_path / "d")], on_skip=skipped.append)
    assert [j.name for j in jobs] == ["d/ok.bin"] and jobs[0].size == 10
    assert [s.path.name for s in skipped] == ["pipe"]
    with pytest.raises(UsageError, match="not a regular file"):
        collect_jobs([tmp_path / "d"])  # without on_skip: the first problem raises
    with pytest.raises(UsageError, match="no such file"):
        collect_jobs([str(tmp_path / "nope")])


def test_stream_client_refusals_are_usage_errors() -> None:
    """A consumer name without a store, a bad channel name, a URL that is not ws:// or
    wss://: refused at construction."""
    with pytest.raises(UsageError, match="consumer name keeps its position in a store"):
        resume.StreamClient("ws://127.0.0.1:1/streams/orders", consumer="billing")
    with pytest.raises(UsageError, match="bad channel name 'bad name'"):
        resume.StreamClient("ws://127.0.0.1:1/streams/bad name")
    with pytest.raises(UsageError, match="expected ws://HOST:PORT/streams/NAME"):
        resume.StreamClient("ws://127.0.0.1:1/upload")
    with pytest.raises(UsageError, match=r"not a WebSocket URL: http://127\.0\.0\.1:1/feed"):
        resume.RawClient("http://127.0.0.1:1/feed")  # at construction, as StreamClient does


async def test_nan_and_infinity_are_refused_not_sent() -> None:
    """send() refuses values that are not JSON (NaN, Infinity) at once; nothing is queued."""
    import math

    client = resume.StreamClient("ws://127.0.0.1:9/streams/orders")
    await client.start()
    try:
        for value in (math.nan, [math.inf], {"a": -math.inf}):
            with pytest.raises(UsageError, match="not JSON"):
                await client.send(value)
            with pytest.raises(UsageError, match="not JSON"):
                client.check_message(value)
        with pytest.raises(UsageError, match="not JSON"):
            await client.send_many([1, math.nan])
        assert client.stats.sent == 0
    finally:
        await client.close(timeout=0.1)


async def test_timeouts_say_what_they_waited_for() -> None:
    """ready(timeout=) and flush(timeout=) raise a WaitTimeout (also a TimeoutError) naming
    the wait."""
    client = resume.StreamClient(
        "ws://127.0.0.1:9/streams/orders",
        options=resume.StreamOptions(backoff=Backoff(base=0.05, cap=0.1)),
    )
    await client.start()
    try:
        with pytest.raises(
            WaitTimeout, match=r"no welcome from the server at .*orders within 0.3s"
        ):
            await client.ready(timeout=0.3)
        with pytest.raises(TimeoutError):
            await client.ready(timeout=0.1)
        await client.send({"order": 1})
        with pytest.raises(
            WaitTimeout, match=r"the server at .*orders did not confirm 1 message\(s\) within 0.2s"
        ):
            await client.flush(timeout=0.2)
    finally:
        await client.close()


def test_a_source_error_is_fatal_and_never_a_connection_error() -> None:
    """EIO and EACCES on the source are SourceError (fatal); the connection layer does not
    turn an arbitrary OSError into "cannot connect"."""
    import errno

    from resume.errors import Verdict, classify
    from resume.net.connector import translate
    from resume.transfer.source import source_error

    for code in (errno.EIO, errno.EACCES):
        error = source_error("/data/x.bin", OSError(code, os.strerror(code)))
        assert isinstance(error, SourceError) and "/data/x.bin" in str(error)
        assert classify(error) is Verdict.FATAL
        assert translate(OSError(code, os.strerror(code))) is None
    assert translate(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is not None


def test_docs_api_names_every_public_name_and_option() -> None:
    """docs/api.md mentions every name `resume` exports and every field of its dataclasses
    (options, results, events, stats): a new option cannot stay undocumented."""
    import dataclasses
    import re

    from tests.processes import REPO

    text = (REPO / "docs" / "api.md").read_text()

    def mentioned(word: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(word)}\b", text) is not None

    names = [name for name in resume.__all__ if name != "__version__"]
    assert [name for name in names if not mentioned(name)] == []
    for name in names:
        value = getattr(resume, name)
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            fields = [f.name for f in dataclasses.fields(value)]
            assert [f for f in fields if not mentioned(f)] == [], name
