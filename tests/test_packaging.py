"""The built wheel, installed into a fresh venv, can migrate a database on its own."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_migrates_from_another_directory(tmp_path: Path) -> None:
    """`pip install resume-*.whl` then `resume db upgrade` works outside the source tree."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)],
        check=True, timeout=300,
    )  # fmt: skip
    [wheel] = dist.glob("resume_ws-*.whl")  # the distribution name; the package is `resume`
    with zipfile.ZipFile(wheel) as archive:
        assert "resume/py.typed" in archive.namelist()

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True, timeout=600,
    )  # fmt: skip

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = "sqlite:///x.db"
    upgrade = subprocess.run(
        [str(bin_dir / "resume"), "db", "upgrade", "--db", url],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    with sqlite3.connect(elsewhere / "x.db") as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(transfers)")}
        chunk_columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
    assert {"file_id", "offset", "checksum", "timestamp", "state"} <= columns
    assert {"file_id", "offset", "checksum", "timestamp", "state"} <= chunk_columns

    status = subprocess.run(
        [str(bin_dir / "resume"), "status", "--json", "--db", url],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == []
    # The migrations came from inside the installed package, not from this checkout.
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "from resume.store.migrate import migrations_dir; print(migrations_dir())"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert str(env_dir) in where.stdout and "_migrations" in where.stdout
    api = subprocess.run(
        [str(bin_dir / "python"), "-c", "import resume; print(resume.StreamClient.__name__, resume.upload.__name__)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert api.stdout.split() == ["StreamClient", "upload"]
