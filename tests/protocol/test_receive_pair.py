"""Both ends at once, h11-style: the server's upload machine against client ledgers.

Two clients race for one file id (the second may carry other bytes: a hostile or confused
peer) and a third for the same name under another id; the wire between them duplicates,
reorders and drops frames; either side may crash at any step. A small in-memory "disk" and
"store" play the I/O layer exactly as :mod:`resume.transfer.receiver` does: write, then sync
and record as one group, ack only after; publish only a verified file, never over a file that
was there unless overwrite was asked.

Invariants, checked after every step:
- an ack is only ever sent for a chunk whose bytes are durable and recorded;
- nothing is under the final name that is not what a client verified;
- a published file never changes afterwards;
- the file that existed before is never replaced without overwrite;
- a chunk a client holds COMMITTED is durably held by the server (until a cancel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from resume.protocol.geometry import Geometry
from resume.protocol.ledger import ChunkState, Ledger
from resume.protocol.receive import (
    Destination,
    FinishOutcome,
    Occupant,
    Phase,
    Reception,
    Recovery,
    Verdict,
    destination_problem,
    recovery,
)

SIZE, CHUNK = 10, 3  # four chunks, the last one short
GEOMETRY = Geometry(SIZE, CHUNK)
FILE_ID, OTHER_ID = "a" * 32, "b" * 32
NAME = "f.bin"
# How often each step is taken: progress first (hypothesis shrinks toward the front), faults
# rarer, so most runs get as far as publishing while every fault still shows up.
SCHEDULE = (
    *["send"] * 6,
    *["deliver"] * 6,
    *["reply"] * 5,
    *["sync"] * 4,
    *["connect"] * 2,
    "duplicate",
    "stale",
    "fault",
)
FAULTS = ("drop", "disconnect", "crash_client", "crash_server", "cancel", "lie")


def content(client: str) -> tuple[str, ...]:
    """What each chunk of a client's file holds (its checksum stands for its bytes)."""
    return tuple(f"{client}{i}" for i in range(GEOMETRY.count))


@dataclass
class Client:
    """One uploading process: its ledger survives its crashes, its connection does not."""

    name: str
    file_id: str
    data: tuple[str, ...]
    overwrite: bool = False
    ledger: Ledger = field(default_factory=lambda: Ledger(SIZE, CHUNK))
    connected: bool = False
    epoch: int = -1  # the server's epoch for this connection
    to_server: list[tuple[Any, ...]] = field(default_factory=list)
    to_client: list[tuple[Any, ...]] = field(default_factory=list)
    finished: bool = False
    refused: str | None = None


@dataclass
class ServerFile:
    """The server's state for one file id: the machine (memory) and what survives a crash."""

    reception: Reception
    durable: dict[int, str] = field(default_factory=dict)  # fsynced partial bytes
    written: dict[int, str] = field(default_factory=dict)  # in the page cache only
    rows: dict[int, str] = field(default_factory=dict)  # chunk rows in the store
    phase: Phase = Phase.RECEIVING  # recorded phase
    partial: bool = True
    owner: str | None = None  # which client's connection owns it


class UploadPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clients = {
            "A": Client("A", FILE_ID, content("A")),
            "B": Client("B", FILE_ID, content("B")),  # same id, other bytes
            "C": Client("C", OTHER_ID, content("C"), overwrite=True),  # same name, other id
        }
        self.files: dict[str, ServerFile] = {}
        self.names: dict[str, str] = {}  # name -> file id of the unfinished upload owning it
        self.final: tuple[str, ...] | None = None
        self.preexisting: tuple[str, ...] | None = None
        self.published: list[tuple[tuple[str, ...], bool]] = []  # (content, overwrite), in order
        self.verified: set[tuple[str, ...]] = set()  # contents a finish claimed and passed
        self.stale: list[tuple[Client, tuple[Any, ...]]] = []  # read before a connection died

    @rule(op=st.sampled_from(SCHEDULE), who=st.sampled_from("AAAACCB"), data=st.data())
    def step(self, op: str, who: str, data: st.DataObject) -> None:
        """One thing happens: a client acts, a frame arrives, the server syncs, or a fault."""
        if op == "send":
            self.client_sends(who, data)
        elif op in ("deliver", "duplicate"):
            self.deliver_to_server(who, data, duplicate=op == "duplicate")
        elif op == "reply":
            self.deliver_to_client(who, data)
        elif op == "sync":
            self.sync(self.clients[who].file_id)
        elif op == "connect":
            self.connect(who)
        elif op == "stale":
            if self.stale:
                stale_client, frame = self.stale.pop(data.draw(st.integers(0, len(self.stale) - 1)))
                self.server_frame(stale_client, frame)
        else:
            self.fault(data.draw(st.sampled_from(FAULTS)), who, data)

    def fault(self, kind: str, who: str, data: st.DataObject) -> None:
        if kind == "drop":
            self.drop_to_server(who, data)
        elif kind in ("disconnect", "crash_client"):
            self.crash_client(who)
        elif kind == "crash_server":
            self.crash_server()
        elif kind == "lie":
            self.client_lies(who)
        else:
            self.cancel()

    @initialize(preexisting=st.booleans())
    def destination(self, preexisting: bool) -> None:
        """Sometimes a file resume never wrote is at the destination already."""
        if preexisting:
            self.final = self.preexisting = ("X",) * GEOMETRY.count

    # -- the wire --------------------------------------------------------------------------

    def connect(self, who: str) -> None:
        """A client (re)connects and begins its file."""
        client = self.clients[who]
        if client.refused in ("exists", "checksum_mismatch") or client.finished:
            return  # fatal for that client: it stopped
        client.connected = True
        client.refused = None
        client.to_server.clear()
        client.to_client.clear()
        self.server_begin(client)

    def client_sends(self, who: str, data: st.DataObject) -> None:
        """The client prepares a pending chunk and sends it (or sends finish when complete)."""
        client = self.clients[who]
        if not client.connected:  # the client's reconnect loop brings it back
            self.connect(who)
        if not client.connected or client.refused or client.finished:
            return
        ledger = client.ledger
        pending = list(ledger.indexes(ChunkState.PENDING))
        if pending:
            for index in data.draw(st.lists(st.sampled_from(pending), min_size=1, unique=True)):
                ledger.prepare(index, client.data[index])
                client.to_server.append(("chunk", index, client.data[index], client.epoch))
        elif ledger.complete:
            client.to_server.append(("finish", client.data, client.epoch))

    def client_lies(self, who: str) -> None:
        """A finish whose checksum is not of the client's bytes (corrupted, or a bad peer)."""
        client = self.clients[who]
        if client.connected and not client.refused:
            claimed = tuple(reversed(client.data))
            client.to_server.append(("finish", claimed, client.epoch))

    def deliver_to_server(self, who: str, data: st.DataObject, duplicate: bool) -> None:
        """One frame reaches the server: any of them (reordering), possibly twice."""
        client = self.clients[who]
        for _ in range(data.draw(st.integers(1, 4))):
            if not client.to_server:
                return
            i = data.draw(st.integers(0, len(client.to_server) - 1))
            frame = client.to_server[i] if duplicate else client.to_server.pop(i)
            self.server_frame(client, frame)

    def drop_to_server(self, who: str, data: st.DataObject) -> None:
        client = self.clients[who]
        if client.to_server:
            client.to_server.pop(data.draw(st.integers(0, len(client.to_server) - 1)))

    def deliver_to_client(self, who: str, data: st.DataObject) -> None:
        client = self.clients[who]
        while client.to_client:
            message = client.to_client.pop(data.draw(st.integers(0, len(client.to_client) - 1)))
            self.client_handles(client, message)

    def client_handles(self, client: Client, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ack":
            for index, checksum in message[1]:
                if client.ledger.state(index) is ChunkState.PREPARED:
                    client.ledger.commit(index, checksum)
        elif kind == "done":
            client.finished = True
        elif kind == "error":
            client.refused = message[1]

    def disconnect(self, who: str) -> None:
        """The link drops: frames in flight are lost, prepared chunks go back to pending."""
        client = self.clients[who]
        client.connected = False
        # Frames the server had already read keep coming through the old connection's handler.
        self.stale.extend((client, frame) for frame in client.to_server)
        client.to_server.clear()
        client.to_client.clear()
        for index in list(client.ledger.indexes(ChunkState.PREPARED)):
            client.ledger.lose(index)
        for file in self.files.values():
            if file.owner == who:
                file.reception.release(client.epoch)
                file.owner = None

    # -- the server's I/O layer --------------------------------------------------------------

    def server_begin(self, client: Client) -> None:
        file = self.files.get(client.file_id)
        if file is None:
            holder = self.names.get(NAME)
            if holder is not None and holder != client.file_id:
                client.to_client.append(("error", "name_in_use"))
                client.refused = "name_in_use"
                return
        elif file.reception.phase is not Phase.RECEIVING:
            client.to_client.append(("state", file.reception.phase.value))
            if file.reception.phase is Phase.COMPLETED:
                client.finished = True
            return
        occupant = Occupant.FILE if self.final is not None else Occupant.NOTHING
        problem = destination_problem(Destination(occupant), overwrite=client.overwrite)
        if problem:
            client.to_client.append(("error", problem[0]))
            client.refused = problem[0]
            return
        if file is None:
            file = self.files[client.file_id] = ServerFile(
                Reception(client.file_id, NAME, GEOMETRY)
            )
            self.names[NAME] = client.file_id
        if file.owner is not None and file.owner != client.name:
            self.clients[file.owner].connected = False  # fenced: closed with 1008
            self.disconnect(file.owner)
        client.epoch = file.reception.take(overwrite=client.overwrite)
        file.owner = client.name
        self.sync(client.file_id)  # begin drains what an earlier owner wrote
        result = client.ledger.reconcile(dict(file.reception.held))
        if result.missing:
            client.ledger = Ledger(SIZE, CHUNK)
            client.ledger.reconcile(dict(file.reception.held))
        for index in client.ledger.reconcile(file.reception.held).unknown:
            if file.reception.held[index] == client.data[index]:
                client.ledger.prepare(index, client.data[index])
                client.ledger.commit(index, client.data[index])

    def server_frame(self, client: Client, frame: tuple[Any, ...]) -> None:
        """The machine alone decides: frames of fenced connections reach it too."""
        file = self.files.get(client.file_id)
        if file is None:
            return
        reception = file.reception
        live = client.connected and file.owner == client.name
        if frame[0] == "chunk":
            _, index, checksum, epoch = frame
            spec = GEOMETRY.spec(index)
            verdict = reception.chunk(epoch, index, spec.offset, spec.length, checksum)
            if verdict.verdict is Verdict.WRITE:
                if file.phase is Phase.COMPLETED and self.final is not None:
                    # A descriptor of the partial writes into the inode now under the name.
                    self.final = (*self.final[:index], checksum, *self.final[index + 1 :])
                file.written[index] = checksum
                reception.written(epoch, index, checksum)
            elif verdict.verdict is Verdict.ACK_AGAIN and live:
                self.ack(client, [(index, checksum)], file)
            assert verdict.verdict is not Verdict.VIOLATION
        else:
            self.server_finish(client, file, frame[1], frame[2], live)

    def server_finish(
        self, client: Client, file: ServerFile, claimed: tuple[str, ...], epoch: int, live: bool
    ) -> None:
        reception = file.reception
        checksum = "|".join(claimed)
        verdict = reception.finish(epoch, checksum)
        if verdict.outcome is FinishOutcome.SYNC_FIRST:
            self.sync(client.file_id)
            verdict = reception.finish(epoch, checksum)
        if verdict.outcome is not FinishOutcome.VERIFY:
            return
        on_disk = tuple(file.durable[i] for i in range(GEOMETRY.count))
        if not reception.verified("|".join(on_disk)):
            file.phase = Phase.CANCELLED
            file.rows.clear()
            file.partial = False
            self.names.pop(NAME, None)
            file.owner = None
            self.restart_transfer(client.file_id)
            return
        self.verified.add(claimed)
        file.phase = Phase.PUBLISHING  # the intent, recorded
        if self.final is not None and not reception.overwrite:
            reception.abort_publish()
            file.phase = Phase.RECEIVING
            if live:
                client.to_client.append(("error", "exists"))
            return
        self.publish(file, on_disk)
        if live:
            client.to_client.append(("done",))

    def publish(self, file: ServerFile, on_disk: tuple[str, ...]) -> None:
        self.final = on_disk
        self.published.append((on_disk, file.reception.overwrite))
        file.partial = False
        file.phase = Phase.COMPLETED
        file.rows.clear()
        file.reception.published()
        file.owner = None
        self.names.pop(NAME, None)

    def ack(self, client: Client, chunks: list[tuple[int, str]], file: ServerFile) -> None:
        for index, checksum in chunks:  # the invariant: ack only what is durable and recorded
            assert file.durable.get(index) == checksum and file.rows.get(index) == checksum
        client.to_client.append(("ack", chunks))

    def sync(self, file_id: str) -> None:
        file = self.files.get(file_id)
        if file is None or file.reception.phase is not Phase.RECEIVING:
            return
        batch = file.reception.sync_batch()
        if batch is None:
            return
        for index, checksum in batch.chunks:
            file.durable[index] = checksum  # fsync: the page cache reaches the disk
            file.rows[index] = checksum  # and the rows are committed
        acks = file.reception.synced(batch)
        if file.owner is not None:
            self.ack(self.clients[file.owner], acks, file)

    # -- crashes -----------------------------------------------------------------------------

    def crash_server(self) -> None:
        """Memory and unsynced writes are gone; the store and fsynced bytes stay."""
        self.stale.clear()
        for client in self.clients.values():
            client.connected = False
            client.to_server.clear()
            client.to_client.clear()
            for index in list(client.ledger.indexes(ChunkState.PREPARED)):
                client.ledger.lose(index)
        for file_id, file in self.files.items():
            file.written.clear()
            reception = Reception(file_id, NAME, GEOMETRY, phase=file.phase, held=dict(file.rows))
            action = recovery(
                file.phase,
                partial_exists=file.partial,
                final_is_partial=False,
                final_matches=False,
            )
            if action is Recovery.FORGET_CHUNKS:
                file.rows.clear()
                file.durable.clear()
                reception.lose()
            elif action is Recovery.RECEIVE_AGAIN:
                reception.abort_publish()
                file.phase = Phase.RECEIVING
            file.reception = reception
            file.owner = None

    def crash_client(self, who: str) -> None:
        """The ledger was persisted as it changed: only the connection is lost."""
        self.disconnect(who)

    def cancel(self) -> None:
        """`resume cancel` of the shared file id: fenced, dropped here and at the clients."""
        file = self.files.get(FILE_ID)
        if file is None or file.reception.phase is not Phase.RECEIVING:
            return
        file.reception.cancel()
        file.phase = Phase.CANCELLED
        file.rows.clear()
        file.durable.clear()
        file.partial = False
        if self.names.get(NAME) == FILE_ID:
            del self.names[NAME]
        file.owner = None
        self.restart_transfer(FILE_ID)

    def restart_transfer(self, file_id: str) -> None:
        """Its clients start over (`--restart`, or a new run after a cancel): a new transfer."""
        del self.files[file_id]
        self.stale = [(c, f) for c, f in self.stale if c.file_id != file_id]
        for client in self.clients.values():
            if client.file_id == file_id:
                client.ledger = Ledger(SIZE, CHUNK)
                client.connected = False
                client.refused = None
                client.to_server.clear()
                client.to_client.clear()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def the_final_name_holds_only_verified_files(self) -> None:
        assert self.final == self.preexisting or self.final in self.verified

    @invariant()
    def a_published_file_never_changes(self) -> None:
        """What is under the name is exactly what was last published there (or was there)."""
        assert self.final == (self.published[-1][0] if self.published else self.preexisting)

    @invariant()
    def a_file_at_the_name_is_replaced_only_with_overwrite(self) -> None:
        """Every publish over a file that was there (found, or published before) asked to."""
        there = self.preexisting is not None
        for _content, overwrite in self.published:
            assert overwrite or not there
            there = True

    @invariant()
    def the_owners_committed_chunks_are_durably_held(self) -> None:
        """What the owning client counts as committed is on the server's disk and in its store.

        (A client whose file id was taken over by another with other bytes finds out when it
        reconnects: reconciliation reports those chunks missing and it sends them again.)
        """
        for file in self.files.values():
            if file.owner is None or file.phase is not Phase.RECEIVING:
                continue
            client = self.clients[file.owner]
            for index in client.ledger.indexes(ChunkState.COMMITTED):
                assert file.rows.get(index) == client.ledger.checksum(index)
                assert file.durable.get(index) == client.ledger.checksum(index)


UploadPair.TestCase.settings = settings(max_examples=300, stateful_step_count=100, deadline=None)
test_upload_pair = UploadPair.TestCase
