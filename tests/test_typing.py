"""The public API is typed: `mypy --strict` is clean on the public modules, and it ships py.typed."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import REPO


def test_public_modules_pass_mypy_strict() -> None:
    """mypy --strict over the modules listed in pyproject's [tool.mypy] finds nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_the_package_is_marked_typed() -> None:
    """PEP 561: py.typed sits in the package, so checkers use these annotations."""
    assert (REPO / "resume" / "py.typed").is_file()
