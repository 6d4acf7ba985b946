"""A process that drives the ledger against a real store until it is killed.

Usage: crash_child.py DB MODE
  pause   prepare chunks one by one, commit each, but after preparing chunk 3 print
          "prepared 3" and wait forever: the parent kills us between prepare and commit.
  hammer  prepare batches of 4 chunks, then commit each batch, in a loop, as fast as possible,
          printing "batch N" after each commit; the parent kills us at a random moment.
"""

from __future__ import annotations

import sys
import time

from resume.protocol.ledger import ChunkState
from resume.store import open_store

CHUNK = 4
CHUNKS = 10_000


def main(db: str, mode: str) -> None:
    store = open_store(db)
    repo = store.transfers
    record = repo.get("crash") or repo.create(
        file_id="crash", source_path="/c", name="c", url="ws://x",
        size=CHUNK * CHUNKS, mtime_ns=1, inode=1, chunk_size=CHUNK,
    )  # fmt: skip
    ledger = repo.load_ledger(record)
    if mode == "pause":
        for i in range(6):
            repo.save_chunks("crash", ledger, [ledger.prepare(i, f"h{i}")])
            if i == 3:
                print("prepared 3", flush=True)
                time.sleep(3600)
            repo.save_chunks("crash", ledger, [ledger.commit(i, f"h{i}")])
        return
    batch = 0
    pending = list(ledger.indexes(ChunkState.PENDING))
    while pending:
        group, pending = pending[:4], pending[4:]
        repo.save_chunks("crash", ledger, [ledger.prepare(i, f"h{i}") for i in group])
        repo.save_chunks("crash", ledger, [ledger.commit(i, f"h{i}") for i in group])
        batch += 1
        print(f"batch {batch}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
