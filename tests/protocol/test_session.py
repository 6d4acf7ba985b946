"""The stream session state machine, alone and against a model server under random faults."""

from __future__ import annotations

from collections import deque
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resume.errors import ClientIdConflict, ProtocolError
from resume.protocol.session import ClientSession, Gap, SessionState, Start


def welcome(acked: int = 0, first: int = 1, last: int = 0, position: int = 0) -> dict[str, Any]:
    return {"type": "welcome", "acked": acked, "first": first, "last": last, "position": position}


def test_sends_are_buffered_until_welcome_then_batched() -> None:
    """Messages sent while disconnected go out in one pub frame after the welcome."""
    session = ClientSession("c1")
    assert [session.send(x) for x in "abc"] == [1, 2, 3]
    assert session.outgoing() == []
    assert session.connected() == {"type": "hello", "client_id": "c1", "after": "end"}
    session.receive(welcome())
    assert session.outgoing() == [{"type": "pub", "seq": 1, "data": ["a", "b", "c"]}]
    assert session.outgoing() == []  # written once per connection


def test_reconnect_replays_exactly_what_the_server_did_not_store() -> None:
    """The welcome's acked seq decides the replay; acked messages are forgotten."""
    session = ClientSession("c1", max_batch=2)
    for x in range(5):
        session.send(x)
    session.connected()
    session.receive(welcome())
    assert len(session.outgoing()) == 3  # batches of 2, 2, 1
    session.receive({"type": "ack", "seq": 2})
    assert session.unacked == 3
    session.disconnected()
    session.connected()
    session.receive(welcome(acked=3))
    assert session.outgoing() == [{"type": "pub", "seq": 4, "data": [3, 4]}]


def test_duplicates_are_dropped_and_jumps_reported_as_gaps() -> None:
    """A replayed message is dropped; a seq that skips ahead reports the missing range."""
    session = ClientSession("c1", after=10)
    assert session.connected()["after"] == 10
    session.receive(welcome(first=1, last=20, position=10))
    got = session.receive({"type": "msgs", "first": 9, "data": ["x", "y", "z"], "ts": [0, 0, 0]})
    assert [m.seq for m in got.messages] == [11] and got.duplicates == 2
    got = session.receive({"type": "msgs", "first": 15, "data": ["q"], "ts": [1.5]})
    assert got.gaps == [Gap(12, 14)] and got.messages[0].seq == 15
    assert got.messages[0].timestamp == 1.5


def test_server_gap_frame_moves_the_position_and_is_reported() -> None:
    """A trimmed range announced by the server is reported once, then skipped."""
    session = ClientSession("c1", after=3)
    session.connected()
    session.receive(welcome(first=8, last=9, position=3))
    assert session.receive({"type": "gap", "first": 4, "last": 7}).gaps == [Gap(4, 7)]
    assert session.receive({"type": "msgs", "first": 8, "data": [1], "ts": [0]}).gaps == []


def test_new_consumer_starts_where_the_server_says() -> None:
    """Without a stored position, the welcome's position is where delivery begins."""
    session = ClientSession("c1", after=Start.START)
    assert session.connected()["after"] == "start"
    session.receive(welcome(first=5, last=9, position=4))
    got = session.receive({"type": "msgs", "first": 5, "data": [5], "ts": [0]})
    assert [m.seq for m in got.messages] == [5]
    assert session.connected()["after"] == 5  # on the next connection: resume after 5


def test_acks_cover_what_the_application_took() -> None:
    """Acks are cumulative and only sent for progress."""
    session = ClientSession("c1", after=0)
    session.connected()
    session.receive(welcome(position=0, last=3))
    session.receive({"type": "msgs", "first": 1, "data": [1, 2, 3], "ts": [0, 0, 0]})
    assert session.ack_frame() is None
    session.take(2)
    assert session.ack_frame() == {"type": "ack", "seq": 2}
    assert session.ack_frame() is None
    with pytest.raises(ValueError):
        session.take(4)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "msgs", "first": 1, "data": [1], "ts": [0]},  # before welcome
        {"type": "nonsense"},
    ],
)
def test_protocol_violations_are_sticky(frame: dict[str, Any]) -> None:
    """After a violation the session refuses everything."""
    session = ClientSession("c1")
    session.connected()
    with pytest.raises(ProtocolError):
        session.receive(frame)
    assert session.state is SessionState.ERROR
    with pytest.raises(ProtocolError):
        session.send("x")


def test_ack_beyond_what_was_sent_is_a_violation() -> None:
    """The server cannot confirm a seq we never gave out."""
    session = ClientSession("c1")
    session.send("a")
    session.connected()
    session.receive(welcome())
    session.outgoing()
    with pytest.raises(ProtocolError, match="only sent 1"):
        session.receive({"type": "ack", "seq": 2})


def test_welcome_beyond_what_this_producer_numbered_is_a_client_id_conflict() -> None:
    """The issue's loss: the server holds 13 for the id, this producer numbered 10 before.

    Its new messages 11..15 must not be taken as stored: the welcome is a ClientIdConflict
    naming the id, and nothing is confirmed.
    """
    session = ClientSession("shop-1", instance="a" * 32, last_seq=10, acked=10)
    for line in range(11, 16):
        session.send(f"A{line}")
    assert session.connected()["instance"] == "a" * 32
    with pytest.raises(ClientIdConflict, match="'shop-1'") as caught:
        session.receive(welcome(acked=13))
    assert caught.value.client_id == "shop-1"
    assert session.unacked == 5


def test_welcome_may_confirm_what_an_earlier_connection_wrote() -> None:
    """Seqs written on a dropped connection may be stored: a welcome covering them is fine."""
    session = ClientSession("c1", last_seq=10, acked=10)
    for x in range(5):
        session.send(x)
    session.connected()
    session.receive(welcome(acked=10))
    session.outgoing()  # 11..15 written, then the link drops before the ack
    session.disconnected()
    session.connected()
    assert session.receive(welcome(acked=13)).newly_acked == 3
    assert session.unacked == 2 and session.unacked_bytes == 2


def test_durable_state_is_restored() -> None:
    """A restarted producer continues its seqs and resends its outbox."""
    session = ClientSession("c1", pending=[(8, "h"), (7, "g")], last_seq=8, acked=6)
    assert session.send("i") == 9
    session.connected()
    session.receive(welcome(acked=7))
    assert session.outgoing() == [{"type": "pub", "seq": 8, "data": ["h", "i"]}]


class ModelServer:
    """What `resume serve` does for one channel, in memory: log, dedup, trim, replay."""

    def __init__(self) -> None:
        self.log: dict[int, Any] = {}
        self.first = 1
        self.last = 0
        self.stored: dict[str, int] = {}  # client id -> highest client seq stored

    def publish(self, client_id: str, first: int, data: list[Any]) -> int:
        for offset, item in enumerate(data):
            seq = first + offset
            if seq <= self.stored.get(client_id, 0):
                continue
            self.last += 1
            self.log[self.last] = (client_id, seq, item)
            self.stored[client_id] = seq
        return self.stored.get(client_id, 0)

    def trim(self, count: int) -> None:
        for _ in range(count):
            if self.first > self.last:
                return
            del self.log[self.first]
            self.first += 1

    def hello(self, hello: dict[str, Any]) -> list[dict[str, Any]]:
        after = hello["after"]
        position = self.last if after == "end" else self.first - 1 if after == "start" else after
        frames: list[dict[str, Any]] = [
            {
                "type": "welcome",
                "acked": self.stored.get(hello["client_id"], 0),
                "first": self.first,
                "last": self.last,
                "position": position,
            }
        ]
        if position < self.first - 1:
            frames.append({"type": "gap", "first": position + 1, "last": self.first - 1})
        frames.extend(self.replay(max(position, self.first - 1)))
        return frames

    def replay(self, after: int) -> list[dict[str, Any]]:
        seqs = [s for s in range(after + 1, self.last + 1) if s in self.log]
        return [{"type": "msgs", "first": s, "data": [self.log[s][2]], "ts": [0]} for s in seqs]


class SessionAgainstModelServer(RuleBasedStateMachine):
    """Any order of send, flush, deliver, drop, reconnect, trim and take keeps the promises:
    every message is stored once, in order; the application sees each stored message at most
    once, in order, and every one it does not see is inside a reported gap."""

    def __init__(self) -> None:
        super().__init__()
        self.server = ModelServer()
        self.session = ClientSession("me", after=Start.START, max_batch=3)
        self.to_server: deque[dict[str, Any]] = deque()
        self.to_client: deque[dict[str, Any]] = deque()
        self.sent: list[int] = []
        self.delivered: list[int] = []
        self.gapped: set[int] = set()
        self.connected = False
        self.counter = 0

    @rule()
    def app_sends(self) -> None:
        self.counter += 1
        self.session.send(self.counter)
        self.sent.append(self.counter)

    @rule(n=st.integers(1, 3))
    def someone_else_publishes(self, n: int) -> None:
        for _ in range(n):
            self.server.last += 1
            self.server.log[self.server.last] = ("other", 0, -self.server.last)
        if self.connected and self.session.state is SessionState.OPEN:
            self.to_client.extend(self.server.replay(self.server.last - n))

    @precondition(lambda self: self.connected and self.session.state is SessionState.OPEN)
    @rule(k=st.integers(1, 5))
    def server_sends_some_again(self, k: int) -> None:
        """A server may replay more than asked (a race between replay and live delivery)."""
        self.to_client.extend(self.server.replay(max(self.server.first - 1, self.server.last - k)))

    @precondition(lambda self: not self.connected)
    @rule()
    def connect(self) -> None:
        self.connected = True
        self.to_client.extend(self.server.hello(self.session.connected()))

    @precondition(lambda self: self.connected)
    @rule()
    def flush(self) -> None:
        self.to_server.extend(self.session.outgoing())

    @precondition(lambda self: self.to_server)
    @rule()
    def server_takes_a_frame(self) -> None:
        frame = self.to_server.popleft()
        if frame["type"] == "pub":
            before = self.server.last
            acked = self.server.publish("me", frame["seq"], frame["data"])
            self.to_client.append({"type": "ack", "seq": acked})
            self.to_client.extend(self.server.replay(before))

    @precondition(lambda self: self.to_client)
    @rule()
    def client_takes_a_frame(self) -> None:
        result = self.session.receive(self.to_client.popleft())
        for gap in result.gaps:
            self.gapped.update(range(gap.first, gap.last + 1))
        self.delivered.extend(m.seq for m in result.messages)
        if self.delivered:
            self.session.take(self.delivered[-1])
            ack = self.session.ack_frame()
            if ack is not None:
                self.to_server.append(ack)

    @precondition(lambda self: self.connected)
    @rule()
    def link_drops(self) -> None:
        self.connected = False
        self.to_server.clear()
        self.to_client.clear()
        self.session.disconnected()

    @rule(n=st.integers(1, 4))
    def server_trims(self, n: int) -> None:
        self.server.trim(n)

    @invariant()
    def delivered_in_order_without_duplicates(self) -> None:
        assert self.delivered == sorted(set(self.delivered))

    @invariant()
    def our_messages_are_stored_once_in_order(self) -> None:
        ours = [item for producer, _, item in self.server.log.values() if producer == "me"]
        assert ours == sorted(set(ours))
        assert self.server.stored.get("me", 0) <= len(self.sent)

    def teardown(self) -> None:
        """Finally let the link heal: everything sent is stored; nothing is silently skipped."""
        if self.connected:
            self.link_drops()
        self.connect()
        for _ in range(1000):
            if self.to_client:
                self.client_takes_a_frame()
            elif self.to_server:
                self.server_takes_a_frame()
            else:
                self.flush()
                if not self.to_server:
                    break
        assert self.session.unacked == 0
        assert self.server.stored.get("me", 0) == len(self.sent)
        if self.delivered:
            expected = set(range(self.delivered[0], self.server.last + 1))
            assert expected <= set(self.delivered) | self.gapped
            assert not set(self.delivered) & self.gapped


TestSessionAgainstModelServer = SessionAgainstModelServer.TestCase
TestSessionAgainstModelServer.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
