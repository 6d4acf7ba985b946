"""``resume serve``: the peer for uploads and streams (and ``resume server-status``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from resume.cli import server_status
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
            "serve stream channels at /streams/NAME. Prints 'listening on ws://HOST:PORT' "
            "(wss:// with --certfile) when ready. Also answers GET /healthz, /readyz, /metrics "
            "(Prometheus) and /status. Refuses a non-loopback --host without --token, "
            "--client-ca or --allow-anonymous, and a ROOT another server is using. SIGTERM or "
            "SIGINT closes every connection with 1001 and exits 0. Operations guide: "
            "docs/operations.md."
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
        "--jwt-secret",
        metavar="SECRET",
        default=os.environ.get("RESUME_JWT_SECRET"),
        help=(
            "also accept JWTs signed with this HS256/384/512 secret (at least 32 bytes) as "
            "scoped tokens: claims sub, exp, channels, uploads (default: $RESUME_JWT_SECRET)"
        ),
    )
    parser.add_argument(
        "--jwt-public-key",
        metavar="FILE",
        type=Path,
        help="also accept JWTs verified with this PEM public key (RS*, PS*, ES*, EdDSA)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("RESUME_SERVER_DB"),
        help=(
            "the server's store: a SQLAlchemy URL or a file (default: $RESUME_SERVER_DB, else "
            "ROOT/.resume/server.db). With postgresql+psycopg://... several servers share it "
            "and one ROOT behind a load balancer (pip install 'resume-ws[postgres]'; "
            "docs/operations.md)"
        ),
    )
    parser.add_argument(
        "--lease",
        metavar="AGE",
        default="10s",
        help=(
            "several servers on one store: how long a server's hold on an upload or a producer "
            "lasts without renewal, i.e. how soon another server takes over from one that died "
            "(default 10s)"
        ),
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
        metavar="N",
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
    limits = parser.add_argument_group(
        "limits", "what one client may make the server hold (each refused with a clear error)"
    )
    limits.add_argument(
        "--idle-timeout",
        metavar="AGE",
        default="60s",
        help="close an upload connection that sends nothing this long (default 60s; 0 = never)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="connections served at once; more get HTTP 503 and retry later (default 1024)",
    )
    limits.add_argument(
        "--max-files-per-connection",
        type=int,
        default=16,
        metavar="N",
        help="unfinished uploads one connection may have begun (default 16)",
    )
    limits.add_argument(
        "--max-http-uploads",
        type=int,
        default=10_000,
        metavar="N",
        help="unfinished uploads over HTTP (tus) at once, all clients together; more are "
        "refused with 429 until some finish or expire (default 10000)",
    )
    limits.add_argument(
        "--max-reserved-per-connection",
        metavar="SIZE",
        help="bytes still to come of one connection's unfinished uploads (default: no limit "
        "beyond free disk space)",
    )
    limits.add_argument(
        "--max-queued",
        metavar="SIZE",
        default="32MiB",
        help="bytes of upload frames read ahead per connection (default 32MiB; at least one chunk)",
    )
    parser.add_argument(
        "--tail-memory",
        metavar="SIZE",
        default="64MiB",
        help="newest stream messages kept in memory over all channels (default 64MiB)",
    )
    parser.add_argument(
        "--publish-rate",
        metavar="N",
        type=float,
        help="stream messages per second each producer may publish (default: no limit)",
    )
    parser.add_argument(
        "--publish-bytes",
        metavar="SIZE",
        help="stream bytes per second each producer may publish, e.g. 1MiB (default: no limit)",
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="allow a non-loopback --host without --token or --client-ca (anyone can write)",
    )
    parser.add_argument(
        "--min-free-space",
        metavar="SIZE",
        default="256MiB",
        help="keep this much free under the root: /readyz fails below it and an upload that "
        "would go below it is refused with disk_full (default 256MiB)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="do not serve: list ROOT's partial uploads and channels (as `resume server-status`)",
    )
    parser.add_argument("--json", action="store_true", help="with --list: print JSON")
    parser.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (e.g. https://app.example.com, or *) use the HTTP "
        "upload endpoint /files (tus-js-client, Uppy); repeat for several",
    )
    tls_group = parser.add_argument_group("TLS")
    tls_group.add_argument(
        "--certfile", metavar="FILE", type=Path, help="serve wss://: certificate chain (PEM)"
    )
    tls_group.add_argument(
        "--keyfile", metavar="FILE", type=Path, help="private key (PEM), unless in --certfile"
    )
    tls_group.add_argument(
        "--client-ca",
        metavar="FILE",
        type=Path,
        help="require client certificates signed by a CA in this PEM file (mutual TLS)",
    )
    log_group = parser.add_argument_group("logging")
    log_group.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line for log shippers (default text)",
    )
    log_group.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="least severe level logged (default info: one line per connection and upload); "
        "-v is debug, -vv also lets third-party libraries log",
    )
    parser.set_defaults(run=run)
    server_status.add_parser(subparsers)


def config_from(args: argparse.Namespace) -> ServerConfig:
    """Validate the command line into a :class:`ServerConfig`."""
    from resume.server import ServerConfig
    from resume.transfer.receiver import UploadLimits

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    try:
        max_size = parse_size(args.max_size) if args.max_size else None
        min_free_space = parse_size(args.min_free_space)
        expire = parse_duration(args.expire)
        retention_age = parse_duration(args.retention_age)
        idle_timeout = parse_duration(args.idle_timeout)
        reserved = (
            parse_size(args.max_reserved_per_connection)
            if args.max_reserved_per_connection
            else None
        )
        queued = parse_size(args.max_queued)
        tail_memory = parse_size(args.tail_memory)
        publish_bytes = parse_size(args.publish_bytes) if args.publish_bytes else None
        lease = parse_duration(args.lease)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not lease > 0:
        raise UsageError("--lease must be positive")
    if args.retention_count is not None and args.retention_count < 1:
        raise UsageError("--retention-count must be at least 1")
    for option, value in (
        ("--max-connections", args.max_connections),
        ("--max-files-per-connection", args.max_files_per_connection),
        ("--max-http-uploads", args.max_http_uploads),
    ):
        if value < 1:
            raise UsageError(f"{option} must be at least 1")
    limits = UploadLimits(
        idle_timeout=idle_timeout or None,
        max_files_per_connection=args.max_files_per_connection,
        max_http_uploads=args.max_http_uploads,
        max_reserved_per_connection=reserved,
        max_queue_bytes=queued,
        min_free_bytes=min_free_space,
    )
    if args.publish_rate is not None and not args.publish_rate > 0:
        raise UsageError("--publish-rate must be positive")
    if publish_bytes is not None and publish_bytes < 1:
        raise UsageError("--publish-bytes must be positive")
    return ServerConfig(
        root=args.root.expanduser().absolute(),
        host=args.host,
        port=args.port,
        token=args.token or None,
        max_file_size=max_size,
        expire=expire or None,
        retention_count=args.retention_count,
        retention_age=retention_age or None,
        max_connections=args.max_connections,
        upload_limits=limits,
        jwt_secret=args.jwt_secret or None,
        jwt_public_key=args.jwt_public_key.expanduser() if args.jwt_public_key else None,
        tail_memory=tail_memory,
        publish_rate=args.publish_rate,
        publish_bytes=publish_bytes,
        certfile=args.certfile,
        keyfile=args.keyfile,
        client_ca=args.client_ca,
        allow_anonymous=args.allow_anonymous,
        min_free_space=min_free_space,
        cors_origins=tuple(args.cors_origin or ()),
        db=args.db or None,
        lease=lease,
    )


def run(args: argparse.Namespace) -> int:
    if args.list:
        return server_status.run(args)
    if args.json:
        raise UsageError("--json goes with --list")
    from resume import logs

    level = "debug" if args.verbose else args.log_level
    logs.configure(log_format=args.log_format, level=level, third_party=args.verbose >= 2)
    config = config_from(args)
    if config.root.exists() and not config.root.is_dir():
        raise UsageError(f"--root {config.root} exists and is not a directory")
    _check_writable(config.root)
    _raise_descriptor_limit()
    asyncio.run(_serve(config))
    return 0


def _raise_descriptor_limit() -> None:
    """Use every descriptor the system allows: connections and uploads each hold some."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
    except (ImportError, ValueError, OSError):
        pass  # keep the limit we have


def _check_writable(root: Path) -> None:
    """The root (or, if it does not exist yet, the directory it would be made in) must be
    writable: say so now, not as a port problem. Nothing is created here."""
    target = root / ".resume" if (root / ".resume").is_dir() else root
    while not target.exists() and target != target.parent:
        target = target.parent
    probe = target / f".resume-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--root {root} is not writable: {exc.strerror} ({target})") from exc


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
    logging.getLogger("resume.server").info("server stopped")
