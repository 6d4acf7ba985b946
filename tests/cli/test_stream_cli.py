"""`resume send` and `resume tail` as a user runs them: real processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ServeProcess, resume_cmd, resume_env, run_resume


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "srv") as server:
        yield server


def channel(server: ServeProcess, name: str = "orders") -> str:
    return f"{server.url}/streams/{name}"


def send(url: str, *lines: str, args: tuple[str, ...] = ()) -> None:
    """`resume send` the lines; it must exit 0 (every line acknowledged)."""
    result = run_resume("send", url, *args, input="".join(f"{line}\n" for line in lines))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def tail(url: str, db: Path, *args: str, consumer: str = "c") -> list[str]:
    """`resume tail --count ...` to completion; returns the printed lines."""
    result = run_resume("tail", url, "--consumer", consumer, "--db", str(db), *args, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@contextlib.contextmanager
def background(*args: str) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """`resume ARGS` in the background; yields it and a queue of its stdout lines."""
    proc = subprocess.Popen(
        resume_cmd(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=resume_env(),
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=15)
        reader.join(timeout=15)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def next_lines(lines: queue.Queue[str], count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    return [lines.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(count)]


def stored(server: ServeProcess, name: str = "orders") -> int:
    """How many messages the server's log of channel ``name`` holds (read-only, while it runs)."""
    db = server.root / ".resume" / "server.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return conn.execute(
            "SELECT count(*) FROM stream_messages WHERE channel = ?", (name,)
        ).fetchone()[0]


def test_send_then_tail_from_start(serve: ServeProcess, tmp_path: Path) -> None:
    """Each stdin line of send is one message; tail --from-start --count prints them and exits 0."""
    url = channel(serve)
    lines = ["first", "second line, with spaces", "ünïcødé ✓", '{"kept": "as a string"}']
    send(url, *lines)
    assert tail(url, tmp_path / "t.db", "--from-start", "--count", "4") == lines
    assert stored(serve) == 4


def test_send_json_publishes_values(serve: ServeProcess, tmp_path: Path) -> None:
    """With --json each line is a JSON value; tail --json gives them back with their types."""
    url = channel(serve)
    send(url, '{"order": 42}', "[1, 2]", '"text"', "7", '"7"', args=("--json",))
    printed = tail(url, tmp_path / "t.db", "--from-start", "--count", "5")
    assert printed == ['{"order": 42}', "[1, 2]", "text", "7", "7"]  # types lost as text
    typed = tail(url, tmp_path / "t2.db", "--from-start", "--count", "5", "--json")
    assert [json.loads(line) for line in typed] == [{"order": 42}, [1, 2], "text", 7, "7"]


def test_send_reports_bad_lines_by_number_and_sends_the_rest(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Not JSON, NaN, too large: each refused with its line number; the other lines go; exit 1."""
    url = channel(serve)
    huge = '"' + "x" * 1_200_000 + '"'
    lines = ["1", "{not json", "NaN", huge, "[Infinity]", "2"]
    bad = run_resume("send", url, "--json", input="\n".join(lines) + "\n")
    assert bad.returncode == 1, bad.stderr
    for number in (2, 3, 4, 5):
        assert f"line {number}:" in bad.stderr
    assert "line 1:" not in bad.stderr and "line 6:" not in bad.stderr
    assert "not a JSON value" in bad.stderr and "Traceback" not in bad.stderr
    assert all(len(line) < 300 for line in bad.stderr.splitlines())  # not the 1.2 MB line
    assert tail(url, tmp_path / "t.db", "--from-start", "--count", "2") == ["1", "2"]


def test_restarted_tail_continues_after_the_last_message(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """A tail run picks up right after the last message the previous run printed."""
    url = channel(serve)
    db = tmp_path / "t.db"
    send(url, *map(str, range(1, 6)))
    assert tail(url, db, "--from-start", "--count", "2") == ["1", "2"]
    assert tail(url, db, "--count", "2") == ["3", "4"]
    assert tail(url, db, "--from-start", "--count", "1") == ["5"]  # a stored position wins
    send(url, "6", "7")
    assert tail(url, db, "--count", "2") == ["6", "7"]
    assert tail(url, db, "--from-start", "--count", "1", consumer="other") == ["1"]


def test_reset_forgets_the_position(serve: ServeProcess, tmp_path: Path) -> None:
    """--reset starts the consumer over: at the oldest with --from-start, else at new messages."""
    url = channel(serve)
    db = tmp_path / "t.db"
    send(url, "a", "b", "c")
    assert tail(url, db, "--from-start", "--count", "3") == ["a", "b", "c"]
    assert tail(url, db, "--reset", "--from-start", "--count", "2") == ["a", "b"]
    with background("tail", url, "--consumer", "c", "--db", str(db), "--reset", "--count", "1") as (
        proc,
        lines,
    ):
        # It prints only what is published after it subscribed: keep publishing until it does.
        deadline = time.monotonic() + 30
        attempt = 0
        while proc.poll() is None and time.monotonic() < deadline:
            attempt += 1
            send(url, f"new-{attempt}")
            time.sleep(0.2)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        [first] = next_lines(lines, 1)
    assert first.startswith("new-")  # not "a": the old messages were skipped


def test_wrong_token_exits_1_fast_with_a_clear_message(tmp_path: Path) -> None:
    """A server started with --token refuses a wrong one: send and tail exit 1 within seconds."""
    with ServeProcess(tmp_path / "srv", "--token", "right") as server:
        url = channel(server)
        db = str(tmp_path / "t.db")
        for args in (
            ["send", url, "--token", "wrong"],
            ["tail", url, "--consumer", "c", "--db", db, "--from-start", "--token", "wrong"],
            ["tail", url, "--consumer", "c", "--db", db, "--from-start"],  # no token at all
        ):
            started = time.monotonic()
            result = run_resume(*args, input="hello\n", timeout=30)
            assert result.returncode == 1, (args, result.stderr)
            first_line = result.stderr.splitlines()[0]
            assert first_line.startswith("resume: error: ") and "401" in first_line
            assert result.stdout == ""
            assert time.monotonic() - started < 10
        assert stored(server) == 0
        ok = run_resume("send", url, input="hello\n", env={"RESUME_TOKEN": "right"})
        assert ok.returncode == 0, ok.stderr
        result = run_resume(
            "tail", url, "--consumer", "c", "--db", db, "--from-start", "--count", "1",
            "--token", "right",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello\n"


@pytest.mark.parametrize("command", ["send", "tail"])
def test_fatal_error_is_reported_without_a_traceback(tmp_path: Path, command: str) -> None:
    """A refused token ends with the one-line error only, not an asyncio traceback."""
    with ServeProcess(tmp_path / "srv", "--token", "right") as server:
        extra = ["--consumer", "c", "--db", str(tmp_path / "t.db")] if command == "tail" else []
        result = run_resume(command, channel(server), *extra, "--token", "wrong", input="x\n")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith("resume: error: ")
    assert "Traceback" not in result.stderr, result.stderr
    assert "never retrieved" not in result.stderr


def test_send_with_nothing_to_send_still_checks_the_token(tmp_path: Path) -> None:
    """Empty input exits 0 only after the server accepted the connection; a wrong token is 1."""
    with ServeProcess(tmp_path / "srv", "--token", "right") as server:
        wrong = run_resume("send", channel(server), "--token", "wrong", input="")
        right = run_resume("send", channel(server), "--token", "right", input="")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    assert right.returncode == 0, right.stderr


@pytest.mark.parametrize("command", ["send", "tail"])
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/streams/orders",
        "ws://127.0.0.1:1/upload",
        "orders",
        "ws://127.0.0.1:1/streams/bad name",
        "ws://127.0.0.1:1/streams/",
    ],
)
def test_bad_url_exits_2(tmp_path: Path, command: str, url: str) -> None:
    """Something that is not a ws:// channel URL is a usage error: exit 2, one clear line."""
    extra = ["--consumer", "c"] if command == "tail" else []
    result = run_resume(command, url, *extra, "--db", str(tmp_path / "t.db"), input="x\n")
    assert result.returncode == 2, result.stderr
    assert "not a channel URL" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "ws://127.0.0.1:1/streams/o"], "--consumer"),
        (["tail", "ws://127.0.0.1:1/streams/o", "--consumer", "c", "--count", "0"], "--count"),
        (["send", "ws://127.0.0.1:1/streams/o", "--client-id", "x" * 65], "--client-id"),
        (["send", "ws://127.0.0.1:1/streams/o", "--max-retry-delay", "0"], "--max-retry-delay"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    """A missing or out-of-range option is a usage error naming the option."""
    result = run_resume(*args, "--db", str(tmp_path / "t.db"), input="x\n")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("send", ["URL", "--db", "--token", "--json", "--client-id", "acknowledged"]),
        ("tail", ["URL", "--consumer", "--from-start", "--reset", "--count", "--db", "130"]),
    ],
)
def test_help_explains_the_options(command: str, words: list[str]) -> None:
    """`resume send --help` and `resume tail --help` exit 0 and describe every option."""
    result = run_resume(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for word in words:
        assert word in text, word


def test_sigint_to_tail_exits_130_and_keeps_the_position(
    serve: ServeProcess, tmp_path: Path
) -> None:
    """Ctrl-C on a running tail exits 130; the next run starts after the last printed line."""
    url = channel(serve)
    db = tmp_path / "t.db"
    send(url, "a", "b", "c")
    with background("tail", url, "--consumer", "c", "--db", str(db), "--from-start") as (
        proc,
        lines,
    ):
        assert next_lines(lines, 3) == ["a", "b", "c"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert lines.empty()
    send(url, "d")
    assert tail(url, db, "--count", "1") == ["d"]


def test_killed_durable_send_is_finished_by_a_rerun(tmp_path: Path) -> None:
    """Lines a SIGKILLed `send --client-id` could not deliver are sent, once, by the next run."""
    db = tmp_path / "send.db"
    server = ServeProcess(tmp_path / "srv")
    server.start()
    try:
        url = channel(server)
        send(url, "before")
        server.kill()  # the server is down: the lines stay in the outbox
        proc = subprocess.Popen(
            resume_cmd(
                "send", url, "--client-id", "P", "--db", str(db), "--max-retry-delay", "0.2"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=resume_env(),
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write("one\ntwo\nthree\n")
            proc.stdin.flush()  # stdin stays open: the run never finishes by itself
            deadline = time.monotonic() + 20
            while outbox_size(db) < 3:
                assert time.monotonic() < deadline, "the lines never reached the outbox"
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait(timeout=15)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        server.start()  # same port
        send(url, args=("--client-id", "P", "--db", str(db)))  # no new lines: only the re-send
        assert outbox_size(db) == 0
        send(url, "four", args=("--client-id", "P", "--db", str(db)))
        printed = tail(url, tmp_path / "t.db", "--from-start", "--count", "5")
        assert printed == ["before", "one", "two", "three", "four"]
        assert stored(server) == 5
    finally:
        server.terminate()


def outbox_size(db: Path) -> int:
    """Messages a durable `resume send` keeps until the server acknowledges them."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            return conn.execute("SELECT count(*) FROM stream_outbox").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            return 0


def test_send_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, send reports acknowledged of sent, ending with the total."""
    import os
    import pty

    with ServeProcess(tmp_path / "srv") as server:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen(
                resume_cmd("send", channel(server)),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=follower,
                env=resume_env(),
            )
            proc.communicate("\n".join(str(i) for i in range(1000)).encode(), timeout=60)
            os.close(follower)
            follower = -1
            seen = b""
            with contextlib.suppress(OSError):  # EIO once the child's side is closed
                while chunk := os.read(leader, 4096):
                    seen += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
    assert proc.returncode == 0
    assert b"1000 of 1000 message(s) acknowledged\r\n" in seen


@pytest.mark.parametrize("command", ["send", "tail"])
def test_give_up_after_stops_retrying_an_unreachable_server(tmp_path: Path, command: str) -> None:
    """With --give-up-after, an unreachable server is a clear exit 1, not a retry forever."""
    extra = ["--consumer", "c", "--db", str(tmp_path / "t.db")] if command == "tail" else []
    started = time.monotonic()
    result = run_resume(
        command, "ws://127.0.0.1:1/streams/x", *extra,
        "--give-up-after", "1s", "--max-retry-delay", "0.2", input="hi\n", timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("resume: error: cannot connect")
    assert "resume: warning: cannot connect" in result.stderr  # each retry, though not a TTY
    assert "retrying in" in result.stderr
    assert time.monotonic() - started < 15
