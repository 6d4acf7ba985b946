"""The stream examples, run as real processes against a real `resume serve` that is restarted."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import REPO, ServeProcess, resume_env

EXAMPLES = REPO / "examples"
TICK = re.compile(r"^tick (\d+) price ")
DEADLINE = 25.0  # seconds for a whole test; each one finishes in a few


class Example:
    """One example script in a child process, its stdout and stderr in files."""

    def __init__(self, directory: Path, name: str, script: str, *args: str) -> None:
        self.out = directory / f"{name}.out"
        self.err = directory / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / script), *args],
                stdout=out,
                stderr=err,
                cwd=directory,
                env=resume_env(),
            )

    def ticks(self) -> list[int]:
        """The tick numbers printed so far, in order."""
        lines = self.out.read_text().splitlines()
        return [int(m.group(1)) for m in map(TICK.match, lines) if m]

    @property
    def log(self) -> str:
        """Everything written to stderr so far."""
        return self.err.read_text()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; returns its status."""
        return self.proc.wait(timeout=max(timeout, 0.1))

    def kill(self) -> None:
        """SIGKILL and reap, if still running."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Example]]:
    """Start example scripts; every one still running at the end is killed."""
    started: list[Example] = []

    def start(name: str, script: str, *args: str) -> Example:
        example = Example(tmp_path, name, script, *args)
        started.append(example)
        return example

    yield start
    for example in started:
        example.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    """A running `resume serve`, killed at the end."""
    process = ServeProcess(tmp_path / "root")
    process.start()
    yield process
    process.kill()


def wait_until(condition: Callable[[], bool], deadline: float, *examples: Example) -> None:
    """Poll until ``condition`` holds; fail at the deadline or if an example exited early."""
    while not condition():
        for example in examples:
            if example.proc.poll() is not None:
                pytest.fail(f"{example.out.stem} exited {example.proc.returncode}:\n{example.log}")
        if time.monotonic() > deadline:
            pytest.fail("timed out:\n" + "\n".join(e.log for e in examples))
        time.sleep(0.05)


def test_consumer_prints_every_tick_once_in_order_across_a_server_restart(
    server: ServeProcess, spawn: Callable[..., Example]
) -> None:
    """A consumer and a producer ride out a SIGKILLed and restarted server without loss or duplicates."""
    deadline = time.monotonic() + DEADLINE
    count = 150
    url = f"{server.url}/streams/ticker"
    consumer = spawn("consumer", "ticker_consumer.py", url, "--from-start", "--count", str(count))
    wait_until(lambda: "connected" in consumer.log, deadline, consumer)
    producer = spawn(
        "producer", "ticker_producer.py", url, "--count", str(count), "--interval", "0.02"
    )

    wait_until(lambda: len(consumer.ticks()) >= 30, deadline, consumer, producer)
    server.kill()
    printed_before_restart = len(consumer.ticks())
    time.sleep(0.5)  # the producer keeps buffering, the consumer keeps retrying
    server.start()

    assert producer.wait(deadline - time.monotonic()) == 0, producer.log
    assert consumer.wait(deadline - time.monotonic()) == 0, consumer.log
    assert consumer.ticks() == list(range(1, count + 1)), consumer.log
    assert printed_before_restart < count  # the restart really happened mid-stream
    assert "disconnected" in consumer.log
    assert "reconnected; receiving after seq" in consumer.log
    assert f"done: {count} tick(s)" in consumer.log


def test_durable_consumer_killed_continues_after_the_last_tick_it_took(
    server: ServeProcess, spawn: Callable[..., Example], tmp_path: Path
) -> None:
    """A SIGKILLed durable consumer resumes from its stored position, repeating at most the tick it held."""
    deadline = time.monotonic() + DEADLINE
    count = 120
    url = f"{server.url}/streams/ticker"
    durable = ("--consumer", "board", "--db", str(tmp_path / "consumer.db"), "--from-start")
    first = spawn("first", "ticker_consumer.py", url, *durable)
    wait_until(lambda: "connected" in first.log, deadline, first)
    producer = spawn(
        "producer", "ticker_producer.py", url, "--count", str(count), "--interval", "0.02"
    )
    wait_until(lambda: len(first.ticks()) >= 30, deadline, first, producer)
    first.kill()
    taken = first.ticks()
    assert len(taken) < count

    second = spawn("second", "ticker_consumer.py", url, *durable)
    wait_until(lambda: count in second.ticks(), deadline, second)
    assert producer.wait(deadline - time.monotonic()) == 0, producer.log
    again = second.ticks()
    if again[0] == taken[-1]:  # killed while holding it: taken again, never anything earlier
        again = again[1:]
    assert taken + again == list(range(1, count + 1)), first.log + second.log
    assert "connected; receiving after seq" in second.log
