"""`resume.upload()` and the upload engine from Python: paths as str or PathLike, quick start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import resume
from resume.net.backoff import Backoff
from resume.transfer.plan import collect_jobs
from tests.processes import REPO, ServeProcess, resume_env
from tests.transfer.conftest import RunningServer, make_file


def test_an_upload_at_head_imports_no_sqlalchemy_alembic_or_rich(tmp_path: Path) -> None:
    """The quick path: `resume upload` of a small file with a store already at the newest
    schema never imports SQLAlchemy, Alembic or rich (what made start-up slow)."""
    serve = ServeProcess(tmp_path / "srv")
    url = serve.start()
    source = make_file(tmp_path / "small.bin", 1024)
    db = tmp_path / "c.db"
    resume.open_store(db).close()  # created and migrated: the next open only checks
    script = (
        "import sys, runpy, json\n"
        f"sys.argv = ['resume', 'upload', {str(source)!r}, {url!r}, '--db', {str(db)!r}]\n"
        "try:\n"
        "    runpy.run_module('resume', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps([code, [m for m in ('sqlalchemy', 'alembic', 'rich') if m in sys.modules]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=resume_env(),
        timeout=60, cwd=REPO,
    )  # fmt: skip
    serve.kill()
    code, loaded = json.loads(result.stdout.splitlines()[-1])
    assert code == 0, result.stderr
    assert loaded == []


async def test_one_call_upload_takes_str_and_pathlike(
    server: RunningServer, tmp_path: Path
) -> None:
    """`await resume.upload(path, url)` with a str, a Path, or several; results per file."""
    a = make_file(tmp_path / "a.bin", 100_000)
    b = make_file(tmp_path / "b.bin", 50_000, seed=1)
    db = tmp_path / "c.db"
    options = resume.UploadOptions(chunk_size=16 * 1024, backoff=Backoff(base=0.01, cap=0.05))
    [one] = await resume.upload(str(a), server.url, db=str(db), options=options)
    assert (one.state, one.bytes_sent) == ("completed", 100_000)
    both = await resume.upload([a, os.fspath(b)], server.url, db=db, options=options)
    assert [r.state for r in both] == ["verified", "completed"]
    assert (server.root / "b.bin").read_bytes() == b.read_bytes()


async def test_a_vanished_source_fails_alone_naming_the_file(
    server: RunningServer, tmp_path: Path
) -> None:
    """FileNotFoundError on the source after it was collected: that file fails, not retried."""
    gone = make_file(tmp_path / "gone.bin", 10)
    kept = make_file(tmp_path / "kept.bin", 10)
    jobs = collect_jobs([gone, kept])
    gone.unlink()
    with resume.open_store(tmp_path / "c.db") as store:
        first, second = await resume.Uploader(store, server.url).run(jobs)
    assert first.state == "failed" and f"{gone}: no such file" in (first.error or "")
    assert second.state == "completed"
