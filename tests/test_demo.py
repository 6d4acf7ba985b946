"""The README's first command: examples/demo.sh runs the main job end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_uploads_interrupts_resumes_and_verifies(tmp_path: Path) -> None:
    """The demo exits 0 after an interrupted, resumed, byte-identical upload and a stream round trip."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "RESUME": str(bin_dir / "resume"),
        "PYTHON": sys.executable,
        "DEMO_DIR": str(tmp_path / "demo"),
    }
    result = subprocess.run(
        [str(REPO / "examples" / "demo.sh")], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "byte-identical" in result.stdout
    assert "exited with status 130" in result.stdout  # it really was interrupted
    assert "completed" in result.stdout
    assert (tmp_path / "demo" / "received" / "data.bin").stat().st_size == 256 * 2**20
    printed = [line.strip() for line in result.stdout.splitlines() if line.startswith("     ")]
    assert printed == ["1", "2", "3", "4", "5"]  # the tail resumed after its stored position
    assert "demo-reader" in result.stdout and "took 5" in result.stdout
