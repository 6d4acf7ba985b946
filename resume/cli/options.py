"""Options several commands share, spelled once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resume.cli.format import parse_duration
from resume.errors import UsageError

if TYPE_CHECKING:
    from resume.net.backoff import Backoff

DB_HELP = (
    "state database: a SQLAlchemy URL or a file path "
    "(default: $RESUME_DB, else $XDG_STATE_HOME/resume/state.db)"
)


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """``--db URL``: which state database to use."""
    parser.add_argument("--db", metavar="URL", help=DB_HELP)


def add_token_option(parser: argparse.ArgumentParser) -> None:
    """``--token T``: the bearer token the server requires."""
    parser.add_argument(
        "--token",
        default=os.environ.get("RESUME_TOKEN"),
        help="bearer token the server requires (default: $RESUME_TOKEN)",
    )


def add_retry_options(parser: argparse.ArgumentParser) -> None:
    """``--max-retry-delay`` and ``--give-up-after``: how the reconnect loop backs off."""
    parser.add_argument(
        "--max-retry-delay",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between reconnection attempts (default 30)",
    )
    parser.add_argument(
        "--give-up-after",
        metavar="AGE",
        help="stop retrying after the server was unreachable this long, e.g. 10m (default: never)",
    )


def retry_policy(args: argparse.Namespace) -> tuple[Backoff, float | None]:
    """The backoff and give-up time that :func:`add_retry_options` asked for."""
    from resume.net.backoff import Backoff

    if args.max_retry_delay <= 0:
        raise UsageError("--max-retry-delay must be positive")
    try:
        give_up = parse_duration(args.give_up_after) if args.give_up_after else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return Backoff(base=min(0.5, args.max_retry_delay), cap=args.max_retry_delay), give_up


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """TLS (``--cacert``, ``--insecure``, ``--cert``, ``--key``) and ``--use-env-proxy``."""
    group = parser.add_argument_group("TLS and proxies (wss:// and https:// URLs)")
    group.add_argument(
        "--cacert",
        metavar="FILE",
        type=Path,
        help="trust only the CA certificates in this PEM file (a private CA or a self-signed "
        "server); default: the system's trust store",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="do NOT verify the server's certificate (testing only: prints a warning)",
    )
    group.add_argument(
        "--cert", metavar="FILE", type=Path, help="client certificate (PEM), for mutual TLS"
    )
    group.add_argument(
        "--key", metavar="FILE", type=Path, help="private key of --cert, unless it is in that file"
    )
    group.add_argument(
        "--use-env-proxy",
        action="store_true",
        help="connect through the proxy in $WSS_PROXY, $WS_PROXY, $SOCKS_PROXY, $HTTPS_PROXY or "
        "$HTTP_PROXY, honouring $NO_PROXY (default: connect directly)",
    )


def connection_settings(args: argparse.Namespace, url: str | None = None) -> dict[str, Any]:
    """``ssl`` and ``use_env_proxy`` for :class:`ConnectOptions`, from the options above.

    With ``url``, TLS options on a ``ws://`` or ``http://`` URL are refused: they would
    silently do nothing.
    """
    from resume.tls import INSECURE_WARNING, client_context

    wants_tls = args.cacert or args.insecure or args.cert or args.key
    if url is not None and wants_tls and not url.startswith(("wss://", "https://")):
        raise UsageError("--cacert, --insecure, --cert and --key need a wss:// or https:// URL")
    context = None
    if wants_tls:
        context = client_context(
            cacert=args.cacert, insecure=args.insecure, certfile=args.cert, keyfile=args.key
        )
    if args.insecure:
        print(f"resume: {INSECURE_WARNING}", file=sys.stderr, flush=True)
    return {"ssl": context, "use_env_proxy": args.use_env_proxy}
