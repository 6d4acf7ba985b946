"""tuspyserver (PyPI), a FastAPI app under uvicorn, as a real tus peer on 127.0.0.1.

    python tests/interop/tuspy_server.py FILES_DIR [PORT [CERTFILE KEYFILE]]

Prints ``listening on http://127.0.0.1:PORT/files/`` once the socket is bound (port 0 picks a
free one), then serves until killed. With CERTFILE and KEYFILE it serves https://.
"""

from __future__ import annotations

import socket
import sys


def main(
    files_dir: str, port: int = 0, certfile: str | None = None, keyfile: str | None = None
) -> None:
    import uvicorn
    from fastapi import FastAPI
    from tuspyserver import create_tus_router

    app = FastAPI()
    app.include_router(create_tus_router(prefix="files", files_dir=files_dir))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    scheme = "https" if certfile else "http"
    print(f"listening on {scheme}://127.0.0.1:{sock.getsockname()[1]}/files/", flush=True)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, ssl_certfile=certfile, ssl_keyfile=keyfile
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0, *sys.argv[3:5])
