"""The tus baseline: `tuspyserver` (FastAPI, under uvicorn) and the `tuspy` client.

python benchmarks/tus_peer.py server DIR PORT
python benchmarks/tus_peer.py client FILE URL CHUNK_SIZE   # prints seconds for the upload
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def server(directory: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from tuspyserver import create_tus_router

    app = FastAPI()
    app.include_router(create_tus_router(prefix="files", files_dir=directory))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def client(path: Path, url: str, chunk_size: int) -> float:
    from tusclient import client as tus

    started = time.perf_counter()
    uploader = tus.TusClient(url).uploader(str(path), chunk_size=chunk_size)
    uploader.upload()
    return time.perf_counter() - started


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        print(f"{client(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])):.6f}", flush=True)
