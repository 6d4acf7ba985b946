"""Logging for `resume serve`: plain lines for people, one JSON object per line for shippers.

Third-party libraries (Alembic, websockets, uvicorn, SQLAlchemy, asyncio) are held at WARNING unless
asked for: their INFO lines (Alembic's plugin setup, websockets' own "connection open") repeat
what `resume` already says, without the peer address. ``-vv`` lets them through.

Fields passed with ``extra=`` (``peer``, ``path``, ``file_id``...) become keys of the JSON
object; in the text format they are already in the message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
THIRD_PARTY = ("alembic", "websockets", "sqlalchemy", "asyncio", "aiosqlite", "uvicorn")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def peer(connection: object) -> str:
    """``host:port`` of a connection's other end (``[v6]:port`` for IPv6), or ``-``."""
    address = getattr(connection, "remote_address", None)
    if not address:
        return "-"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def quiet_third_party(*, unless: bool = False) -> None:
    """Hold third-party loggers at WARNING (``unless`` true: leave them to the root level)."""
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.NOTSET if unless else logging.WARNING)


def configure(
    *,
    log_format: LogFormat = "text",
    level: str = "info",
    third_party: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Send every log record to ``stream`` (stderr) in ``log_format``, replacing earlier setup.

    ``level`` applies to `resume`'s own loggers; third-party loggers stay at WARNING (or above,
    with a higher ``level``) unless ``third_party`` is true.
    """
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    logging.getLogger("resume").setLevel(numeric)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(numeric if third_party else max(numeric, logging.WARNING))


__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "configure", "peer", "quiet_third_party"]
