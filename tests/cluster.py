"""Several real `resume serve` nodes on one PostgreSQL store and one root, behind a balancer.

Used by tests/server/test_multinode.py and benchmarks/multinode.py. Nodes are ``ServeProcess``
children (SIGKILL, SIGSTOP and restart them on their port); the store is read directly with
psycopg to see who owns what and how far each upload got.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chaos.balancer import Balancer
from tests.processes import ServeProcess


@dataclass(frozen=True)
class Progress:
    """One upload as the store sees it."""

    file_id: str
    name: str
    state: str
    offset: int
    owner: str | None
    epoch: int

    @property
    def owner_pid(self) -> int | None:
        """The pid of the node that owns it (node names are host:pid:random)."""
        if not self.owner:
            return None
        return int(self.owner.split(":")[-2])


class Cluster:
    """``count`` nodes on ``db_url`` sharing ``tmp/root``; ``balancer`` in front of them."""

    def __init__(
        self,
        tmp: Path,
        db_url: str,
        count: int,
        *,
        lease: str = "2s",
        extra: tuple[str, ...] = (),
        rate: float | None = None,
    ) -> None:
        self.rate = rate
        self.root = tmp / "root"
        self.db_url = db_url
        self.nodes: list[ServeProcess] = []
        for index in range(count):
            node = ServeProcess(self.root, "--db", db_url, "--lease", lease, *extra)
            node.log_path = tmp / f"node{index}.log"
            self.nodes.append(node)
        self.balancer: Balancer | None = None

    def start(self) -> None:
        """Start every node at once (they race to migrate the new store) and the balancer."""
        errors: list[BaseException] = []

        def start(node: ServeProcess) -> None:
            try:
                node.start(timeout=60)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(n,)) for n in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        self.balancer = Balancer([n.port for n in self.nodes], rate=self.rate).__enter__()

    def stop(self) -> None:
        """Stop the balancer and SIGKILL whatever node still runs."""
        if self.balancer is not None:
            self.balancer.__exit__(None, None, None)
            self.balancer = None
        for node in self.nodes:
            node.kill()

    @property
    def url(self) -> str:
        assert self.balancer is not None
        return self.balancer.url

    def node_of(self, pid: int | None) -> ServeProcess | None:
        """The node with this pid, if it runs."""
        return next((n for n in self.nodes if n.proc is not None and n.proc.pid == pid), None)

    def logs(self) -> str:
        """Every node's stderr so far, each under a header."""
        return "\n".join(f"--- node {i}\n{n.log[-4000:]}" for i, n in enumerate(self.nodes))

    # -- the store, read directly -------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        from resume.store.notify import libpq_conninfo

        with psycopg.connect(libpq_conninfo(self.db_url), autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def uploads(self) -> list[Progress]:
        rows = self.query(
            'SELECT file_id, name, state, "offset", owner, epoch FROM received_files ORDER BY name'
        )
        return [Progress(*row) for row in rows]

    def upload(self, name: str) -> Progress | None:
        return next((u for u in self.uploads() if u.name == name), None)

    def pause(self, node: ServeProcess) -> None:
        """SIGSTOP: the node keeps its sockets but does nothing (a long GC, a frozen VM)."""
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)

    def resume(self, node: ServeProcess) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def running(tmp: Path, db_url: str, count: int, **kwargs: Any) -> Iterator[Cluster]:
    """A started :class:`Cluster`, stopped afterwards whatever happens."""
    cluster = Cluster(tmp, db_url, count, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll until ``predicate()`` returns something true; return it (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
