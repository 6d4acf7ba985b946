"""``resume serve``: the peer for uploads and streams."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from resume.cli.format import parse_duration, parse_size
from resume.errors import UsageError

if TYPE_CHECKING:
    from resume.server import ServerConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the server that receives uploads and serves streams",
        description=(
            "Receive uploads into ROOT (partials live under ROOT/.resume/ until verified) and "
            "serve stream channels at /streams/NAME. Prints 'listening on ws://HOST:PORT' when "
            "ready. SIGTERM or SIGINT closes every connection with 1001 and exits 0."
        ),
    )
    parser.add_argument("--root", required=True, type=Path, help="directory that receives files")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("RESUME_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default: $RESUME_TOKEN; unset = no auth)",
    )
    parser.add_argument(
        "--max-size", metavar="SIZE", help="largest file accepted, e.g. 10GiB (default: no limit)"
    )
    parser.add_argument(
        "--expire",
        metavar="AGE",
        default="7d",
        help="remove partial uploads idle this long (default 7d; 0 = never)",
    )
    parser.add_argument(
        "--retention-count",
        type=int,
        default=1_000_000,
        help="stream messages kept per channel (default 1000000)",
    )
    parser.add_argument(
        "--retention-age",
        metavar="AGE",
        default="7d",
        help="how long stream messages are kept (default 7d)",
    )
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> ServerConfig:
    """Validate the command line into a :class:`ServerConfig`."""
    from resume.server import ServerConfig

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    try:
        max_size = parse_size(args.max_size) if args.max_size else None
        expire = parse_duration(args.expire)
        retention_age = parse_duration(args.retention_age)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.retention_count is not None and args.retention_count < 1:
        raise UsageError("--retention-count must be at least 1")
    return ServerConfig(
        root=args.root.expanduser().absolute(),
        host=args.host,
        port=args.port,
        token=args.token or None,
        max_file_size=max_size,
        expire=expire or None,
        retention_count=args.retention_count,
        retention_age=retention_age or None,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config.root.exists() and not config.root.is_dir():
        raise UsageError(f"--root {config.root} exists and is not a directory")
    _check_writable(config.root)
    asyncio.run(_serve(config))
    return 0


def _check_writable(root: Path) -> None:
    """The root and its ``.resume/`` must be writable: say so now, not as a port problem."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        state = root / ".resume"
        state.mkdir(exist_ok=True)
        probe = state / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--root {root} is not writable: {exc.strerror}") from exc


async def _serve(config: ServerConfig) -> None:
    from resume.server import run_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    try:
        await run_server(config, ready=ready, stop=stop)
    except OSError as exc:
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    print("server stopped", file=sys.stderr, flush=True)
