"""The tree is ruff-clean (lint and format), so style never drifts between sessions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed; `pip install -e '.[test]'` brings it")
    return [exe]


def test_ruff_check_is_clean() -> None:
    """`ruff check` finds nothing."""
    result = subprocess.run([*ruff(), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """`ruff format --check` would change nothing."""
    result = subprocess.run(
        [*ruff(), "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
