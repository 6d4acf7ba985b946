"""Use the upload engine from Python: send a file, see what resumed, handle the outcomes.

    python examples/upload_api.py FILE ws://127.0.0.1:8765

Run it, interrupt it with Ctrl-C, run it again: the second run sends only what the server
does not hold yet. State lives in ./upload-example.db.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from resume.errors import FatalError, Interrupted, RetryableError, SourceChanged
from resume.net.backoff import Backoff
from resume.store import open_store
from resume.transfer.plan import collect_jobs
from resume.transfer.upload import Uploader, UploadOptions


async def main(path: str, url: str) -> int:
    options = UploadOptions(
        chunk_size=4 * 2**20,  # 4 MiB chunks
        window=8,  # up to 8 chunks in flight: memory ~ 32 MiB
        backoff=Backoff(base=0.5, cap=10.0),  # reconnect delays: full jitter, capped at 10 s
        give_up_after=120.0,  # stop retrying after the server was unreachable for 2 minutes
    )
    with open_store("upload-example.db") as store:
        uploader = Uploader(store, url, options)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(2, uploader.stop)  # Ctrl-C: finish in-flight chunks, then stop
        try:
            results = await uploader.run(collect_jobs([Path(path)]))
        except Interrupted:
            print("interrupted; run again to resume")
            return 130
        except SourceChanged as exc:  # the file was edited since the transfer began
            print(f"refusing to mix versions: {exc}")
            return 1
        except RetryableError as exc:  # the server stayed unreachable past give_up_after
            print(f"server unreachable, state saved: {exc}")
            return 1
        except FatalError as exc:  # refused (401, bad name, too large), or verification failed
            print(f"failed: {exc}")
            return 1
    for result in results:
        print(
            f"{result.job.name}: {result.state}, {result.size} bytes, "
            f"{result.resumed_from} already on the server, {result.bytes_sent} sent, "
            f"xxh3-128 {result.checksum}"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
