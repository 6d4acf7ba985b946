"""Use the upload engine from Python: send a file, see what resumed, handle the outcomes.

    python examples/upload_api.py FILE ws://127.0.0.1:8765

Run it, interrupt it with Ctrl-C, run it again: the second run sends only what the server
does not hold yet; a third finds it on the server and sends nothing. State lives in
./upload-example.db. Every name used here comes from the top-level package (docs/api.md).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import resume


async def main(path: str, url: str) -> int:
    options = resume.UploadOptions(
        chunk_size=4 * 2**20,  # 4 MiB chunks
        window=8,  # up to 8 chunks in flight: memory ~ 32 MiB
        backoff=resume.Backoff(base=0.5, cap=10.0),  # reconnect delays: full jitter, capped
        give_up_after=120.0,  # stop retrying after the server was unreachable for 2 minutes
        overwrite=False,  # a file of that name already on the server is refused, not replaced
    )
    with resume.open_store("upload-example.db") as store:
        uploader = resume.Uploader(store, url, options)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, uploader.stop)  # finish in-flight chunks, stop
        try:
            results = await uploader.run(resume.collect_jobs([path]))
        except resume.Interrupted:
            print("interrupted; run again to resume")
            return 130
        except resume.RetryableError as exc:  # the server stayed unreachable past give_up_after
            print(f"server unreachable, state saved: {exc}")
            return 1
        except resume.FatalError as exc:  # refused (401), disk full on the server, protocol
            print(f"failed: {exc}")
            return 1
    for result in results:
        if result.state == "failed":  # this file only: unreadable, changed, refused by name
            print(f"{result.job.name}: not sent: {result.error}")
            continue
        print(
            f"{result.job.name}: {result.state}, {result.size} bytes, "
            f"{result.resumed_from} already on the server, {result.bytes_sent} sent, "
            f"xxh3-128 {result.checksum}"
        )
    return 0 if all(r.state != "failed" for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
