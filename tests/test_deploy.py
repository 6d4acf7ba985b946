"""examples/deploy/: the systemd unit verifies, and the unit and image start `resume serve` right."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resume.cli import build_parser
from resume.cli.serve import config_from

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "examples" / "deploy"


def unit_settings(text: str) -> dict[str, str]:
    """``Key=value`` lines of a unit file (continuations joined; last one wins)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    settings = {}
    for line in joined.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def serve_config(argv: list[str]):
    """What `resume serve` would run with: the arguments must parse and validate."""
    assert argv[:2] == ["resume", "serve"] or argv[0].endswith("/resume"), argv
    args = build_parser().parse_args(argv[1:])
    return config_from(args)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (pointed at this checkout's `resume`)."""
    executable = Path(sys.executable).parent / "resume"
    if not executable.exists():
        pytest.skip("no `resume` console script next to this Python (not installed with pip -e)")
    text = (DEPLOY / "resume.service").read_text()
    unit = tmp_path / "resume.service"
    unit.write_text(text.replace("/usr/local/bin/resume", str(executable)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "resume.service" not in result.stderr, result.stderr  # no warnings about it either


def test_systemd_unit_runs_a_dedicated_user_with_a_state_directory() -> None:
    """Restart policy, dedicated user, state directory, and an ExecStart `resume` accepts."""
    settings = unit_settings((DEPLOY / "resume.service").read_text())
    assert settings["Restart"] == "on-failure"
    assert settings["User"] == settings["Group"] == "resume"
    assert settings["StateDirectory"] == "resume"
    config = serve_config(shlex.split(settings["ExecStart"]))
    assert config.root == Path("/var/lib/resume")  # the StateDirectory
    assert config.certfile is not None and config.keyfile is not None


def test_dockerfile_command_and_copies() -> None:
    """The image's CMD is a valid `resume serve`; everything it copies exists; it probes /healthz."""
    text = (DEPLOY / "Dockerfile").read_text()
    [cmd] = re.findall(r"^CMD (\[.*\])$", text, re.M)
    config = serve_config(json.loads(cmd))
    assert config.root == Path("/data") and config.host == "0.0.0.0"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    assert "USER resume" in text and "/healthz" in text
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "dockerfile: examples/deploy/Dockerfile" in compose and "context: ../.." in compose
    assert (DEPLOY / "../..").resolve() == REPO


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0,
    reason="no container engine here (the image build is documented in examples/deploy/README.md)",
)
def test_image_builds() -> None:
    """Where a container engine runs, the image builds."""
    result = subprocess.run(
        ["docker", "build", "-q", "-f", str(DEPLOY / "Dockerfile"), str(REPO)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
