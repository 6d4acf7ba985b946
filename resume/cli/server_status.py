"""``resume server-status`` (also ``resume serve --list``): what a server root holds.

From the server's store (read-only, safe while it runs): partial uploads with their size, how
much is durable, age and idle time; channels with their retained messages and producers. If a
server is running on the root (its lock says where it listens), its ``GET /status`` adds what
only it knows: who is sending each partial (the owner's address) and the connections open to
each channel (its consumers and producers right now).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from resume.cli.format import format_bytes, iso_utc, relative_time
from resume.errors import UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from resume.rootlock import LockInfo
    from resume.store.inventory import ChannelSummary, PartialUpload

STATUS_TIMEOUT = 5.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "server-status",
        help="list a server root's partial uploads and channels",
        description=(
            "Show what the server on ROOT holds: partial uploads (size, durable bytes, age, "
            "idle time, and the address sending each while the server runs) and channels "
            "(retained messages, seq range, producers, open connections). Reads ROOT/.resume/ "
            "without disturbing a running server; live details come from the running "
            "server's GET /status (with --token if it needs one)."
        ),
    )
    parser.add_argument("--root", required=True, type=Path, help="the server's --root")
    parser.add_argument(
        "--token",
        default=os.environ.get("RESUME_TOKEN"),
        help="the server's token, for the live details (default: $RESUME_TOKEN)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("RESUME_SERVER_DB"),
        help="the server's --db, if it has one (default: $RESUME_SERVER_DB)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the inventory of ``args.root`` (``args.token``, ``args.json``)."""
    from resume.rootlock import read_info
    from resume.server import STATE_DIR
    from resume.store import open_store
    from resume.store.inventory import channels, partial_uploads

    root = args.root.expanduser().absolute()
    state_dir = root / STATE_DIR
    db: str | Path = getattr(args, "db", None) or state_dir / "server.db"
    if isinstance(db, Path) and not db.exists():
        raise UsageError(f"no resume server state under {root} (no {db})")
    with open_store(db, readonly=True) as store:
        partials = partial_uploads(store.engine)
        logs = channels(store.engine)
    holder = read_info(state_dir)
    live, live_error = fetch_live(holder, args.token) if holder else (None, None)
    if args.json:
        document = as_json(holder, partials, logs, live, live_error)
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)
    if holder is None:
        console.print(f"server: not running on {root}")
    else:
        console.print(f"server: running (pid {holder.pid}) at {holder.url or '?'}")
    if live_error:
        console.print(f"live details unavailable: {live_error}")
    console.print(partials_table(partials, live))
    console.print(channels_table(logs, live))
    return 0


def fetch_live(holder: LockInfo, token: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The running server's ``GET /status``, or None and why not."""
    import http.client  # here: every `resume` command imports this module, few call this

    if not holder.url:
        return None, "the server has not finished starting"
    parts = urlsplit(holder.url)
    host = parts.hostname or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if parts.scheme == "wss":
        # The local server's own certificate is not issued for 127.0.0.1: accept the one it
        # presents only if it is the certificate recorded in the lock (pinned by its hash).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port, timeout=STATUS_TIMEOUT, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=STATUS_TIMEOUT)
    try:
        connection.connect()
        if parts.scheme == "wss":
            sock = connection.sock
            der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
            if der is None or hashlib.sha256(der).hexdigest() != holder.cert_sha256:
                return None, "the server's certificate is not the one it recorded at start"
        connection.request("GET", "/status", headers=headers)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return None, f"cannot reach {holder.url}: {exc}"
    finally:
        connection.close()
    if response.status == 401:
        return None, "the server needs a token (--token or $RESUME_TOKEN)"
    if response.status != 200:
        return None, f"{holder.url}/status answered HTTP {response.status}"
    try:
        return json.loads(body), None
    except ValueError:
        return None, f"{holder.url}/status did not answer JSON"


def _owners(live: dict[str, Any] | None) -> dict[str, str]:
    if not live:
        return {}
    return {u["file_id"]: u.get("owner") or "-" for u in live.get("uploads", [])}


def _connected(live: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    return (live or {}).get("channels", {})


def as_json(
    holder: LockInfo | None,
    partials: list[PartialUpload],
    logs: list[ChannelSummary],
    live: dict[str, Any] | None,
    live_error: str | None,
) -> dict[str, Any]:
    """The ``--json`` document."""
    owners = _owners(live)
    connected = _connected(live)
    return {
        "server": {
            "running": holder is not None,
            "pid": holder.pid if holder else None,
            "url": holder.url if holder else None,
            "live_error": live_error,
        },
        "partials": [
            {
                "file_id": p.file_id,
                "name": p.name,
                "size": p.size,
                "received": p.received,
                "created_at": iso_utc(p.created_at),
                "updated_at": iso_utc(p.timestamp),
                "owner": owners.get(p.file_id),
            }
            for p in partials
        ],
        "channels": [
            {
                "channel": c.name,
                "first": c.first,
                "last": c.last,
                "retained": c.retained,
                "producers": c.producers,
                "updated_at": iso_utc(c.timestamp),
                "connections": connected.get(c.name, []) if live is not None else None,
            }
            for c in logs
        ],
        "connections": live.get("connections") if live else None,
    }


def partials_table(partials: list[PartialUpload], live: dict[str, Any] | None) -> Table:
    """Partial uploads for people."""
    from rich.table import Table

    from resume.store.models import utcnow

    table = Table(title="partial uploads" + ("" if partials else " (none)"), title_justify="left")
    for column in ("file id", "name", "received", "size", "age", "idle", "owner"):
        table.add_column(column, no_wrap=True)
    now = utcnow()
    owners = _owners(live)
    for p in partials:
        percent = 100.0 if p.size == 0 else 100.0 * p.received / p.size
        table.add_row(
            p.file_id[:8],
            p.name,
            f"{format_bytes(p.received)} ({percent:.0f}%)",
            format_bytes(p.size),
            relative_time(p.created_at, now).removesuffix(" ago"),
            relative_time(p.timestamp, now).removesuffix(" ago"),
            owners.get(p.file_id, "-" if live is not None else "?"),
        )
    return table


def channels_table(logs: list[ChannelSummary], live: dict[str, Any] | None) -> Table:
    """Channels for people."""
    from rich.table import Table

    from resume.store.models import utcnow

    table = Table(title="channels" + ("" if logs else " (none)"), title_justify="left")
    for column in ("channel", "messages", "seqs", "producers", "connected", "last write"):
        table.add_column(column, no_wrap=True)
    now = utcnow()
    connected = _connected(live)
    for c in logs:
        peers = connected.get(c.name, [])
        table.add_row(
            c.name,
            str(c.retained),
            f"{c.first}..{c.last}" if c.retained else "-",
            str(c.producers),
            str(len(peers)) if live is not None else "?",
            relative_time(c.timestamp, now),
        )
    return table
