"""The stream tables: the server's channel log with producer dedup, the client's outbox and cursors."""

from __future__ import annotations

import datetime as dt
import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from resume.errors import ClientIdConflict, ProtocolError
from resume.store import Store
from resume.store.models import utcnow
from resume.store.stream_log import ProducerRecord


def seqs(store: Store, channel: str = "c") -> list[int]:
    return [m.seq for m in store.streams.read(channel, 0, 1000)]


def test_append_assigns_consecutive_server_seqs_and_skips_replayed_client_seqs(
    store: Store,
) -> None:
    """A batch that overlaps what was stored for this producer stores only the new part."""
    first = store.streams.append("c", "p1", 1, ['"a"', '"b"'])
    assert (first.stored, first.first, first.count) == (2, 1, 2)
    again = store.streams.append("c", "p1", 2, ['"b"', '"c"'])
    assert (again.stored, again.first, again.count) == (3, 3, 1)
    other = store.streams.append("c", "p2", 1, ['"x"'])
    assert other.first == 4
    assert [m.data for m in store.streams.read("c", 0, 10)] == ['"a"', '"b"', '"c"', '"x"']
    assert store.streams.producer_seq("c", "p1") == 3
    assert store.streams.head("c").last == 4


def test_a_batch_that_skips_client_seqs_is_refused_and_stores_nothing(store: Store) -> None:
    """A hole in a producer's seqs is a protocol violation, not a silent loss."""
    store.streams.append("c", "p1", 1, ['"a"'])
    with pytest.raises(ProtocolError, match="2 was next"):
        store.streams.append("c", "p1", 3, ['"c"'])
    assert seqs(store) == [1]


def test_keep_trims_the_oldest_in_the_same_commit(store: Store) -> None:
    """Retention by count moves the first retained seq; seqs are never reused."""
    for i in range(1, 8):
        store.streams.append("c", "p", i, [str(i)], keep=3)
    assert seqs(store) == [5, 6, 7]
    assert store.streams.head("c").first == 5


def test_trim_by_age_drops_messages_older_than_the_cutoff(store: Store) -> None:
    """Messages stored before the cutoff go; newer ones stay."""
    store.streams.append("c", "p", 1, ["1", "2"])
    head = store.streams.trim("c", before=utcnow() + dt.timedelta(seconds=1))
    assert (head.first, head.last) == (3, 2) and seqs(store) == []
    store.streams.append("c", "p", 3, ["3"])
    assert seqs(store) == [3]


def test_outbox_survives_a_reopen_and_confirm_drops_what_was_stored(
    store: Store, db_url: str
) -> None:
    """The client's unconfirmed messages and its seq counter persist until the server acks."""
    from resume.store import open_store

    store.stream_client.add("me", "ws://x/streams/c", [(1, '"a"'), (2, '"b"'), (3, '"c"')])
    store.stream_client.confirm("me", "ws://x/streams/c", 2)
    with open_store(db_url) as reopened:
        outbox = reopened.stream_client.load_outbox("me", "ws://x/streams/c")
    assert (outbox.pending, outbox.last_seq, outbox.acked) == ([(3, '"c"')], 3, 2)
    assert store.stream_client.load_outbox("other", "ws://x/streams/c").last_seq == 0


def test_the_first_instance_to_store_owns_a_producer_id(store: Store) -> None:
    """Another instance's batch under the id is refused and stores nothing; a row from before
    instances were recorded is adopted by the first instance that publishes under it."""
    store.streams.append("c", "shop-1", 1, ['"A1"', '"A2"'], instance="a")
    with pytest.raises(ClientIdConflict, match=r"'shop-1'.*up to seq 2"):
        store.streams.append("c", "shop-1", 3, ['"EVE"'], instance="eve")
    with pytest.raises(ClientIdConflict):
        store.streams.append("c", "shop-1", 3, ['"anon"'])  # no instance at all
    assert store.streams.append("c", "shop-1", 3, ['"A3"'], instance="a").stored == 3
    assert [m.data for m in store.streams.read("c", 0, 10)] == ['"A1"', '"A2"', '"A3"']
    store.streams.append("c", "legacy", 1, ['"x"'])  # written without an instance
    assert store.streams.producer("c", "legacy") == ProducerRecord(1, None)
    store.streams.append("c", "legacy", 2, ['"y"'], instance="new")
    assert store.streams.producer("c", "legacy") == ProducerRecord(2, "new")


def test_open_producer_keeps_the_instance_and_fences_the_previous_process(store: Store) -> None:
    """The instance nonce is made once; each open takes the producer over, and a process that
    lost it can no longer number messages from the shared counter."""
    repo = store.stream_client
    first = repo.open_producer("shop-1", "u")
    repo.add("shop-1", "u", [(1, '"a"')], holder=first.holder)
    second = repo.open_producer("shop-1", "u")
    assert second.instance == first.instance and second.holder != first.holder
    assert (second.last_seq, second.pending) == (1, [(1, '"a"')])
    with pytest.raises(ClientIdConflict, match="another process"):
        repo.add("shop-1", "u", [(2, '"stale"')], holder=first.holder)
    repo.add("shop-1", "u", [(2, '"b"')], holder=second.holder)
    assert repo.load_outbox("shop-1", "u").pending == [(1, '"a"'), (2, '"b"')]
    assert repo.open_producer("other", "u").instance != first.instance


def test_cursor_set_get_reset(store: Store) -> None:
    """A consumer's position is per channel and can be forgotten."""
    repo = store.stream_client
    assert repo.cursor("c1", "u") is None
    repo.set_cursor("c1", "u", 5)
    repo.set_cursor("c1", "u", 7)
    repo.set_cursor("c1", "v", 1)
    assert (repo.cursor("c1", "u"), repo.cursor("c1", "v")) == (7, 1)
    repo.reset_cursor("c1", "u")
    assert repo.cursor("c1", "u") is None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2"]), st.integers(0, 4), st.integers(1, 5)),
        min_size=1,
        max_size=25,
    )
)
def test_any_replay_pattern_stores_each_message_once_in_order(
    store: Store, batches: list[tuple[str, int, int]]
) -> None:
    """Producers resending overlapping batches (as after reconnects) never store a message twice."""
    channel = f"c-{uuid.uuid4().hex}"  # one store serves every example: a fresh channel each
    sent = {"p1": 0, "p2": 0}  # the highest client seq each producer has made up
    for producer, back, size in batches:
        stored = store.streams.producer_seq(channel, producer)
        first = max(1, stored + 1 - back)  # a replay starts at or before the next new seq
        items = [f'"{producer}-{seq}"' for seq in range(first, first + size)]
        result = store.streams.append(channel, producer, first, items)
        assert result.stored == max(stored, first + size - 1)
        sent[producer] = max(sent[producer], first + size - 1)
    log = [m.data.strip('"') for m in store.streams.read(channel, 0, 10_000)]
    for producer, last in sent.items():
        mine = [entry for entry in log if entry.startswith(producer)]
        assert mine == [f"{producer}-{seq}" for seq in range(1, last + 1)]
    assert [m.seq for m in store.streams.read(channel, 0, 10_000)] == list(range(1, len(log) + 1))
