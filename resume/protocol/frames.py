"""Wire encoding shared by the upload and stream protocols. Sans-I/O.

Control messages are JSON objects in WebSocket text frames, each with a ``"type"`` key. Bulk
data travels in binary frames that start with a small fixed header (never base64).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Any

from resume.errors import ProtocolError

SUBPROTOCOL = "resume.v1"
# A stream channel's name, the last part of ws://HOST:PORT/streams/NAME (checked by both ends).
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STREAMS_PREFIX = "/streams/"


class CloseCode(enum.IntEnum):
    """WebSocket close codes `resume` sends (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: come back later
    PROTOCOL_ERROR = 1002  # a frame or message that breaks the protocol
    UNSUPPORTED_DATA = 1003  # binary where text is expected, or the reverse
    INVALID_PAYLOAD = 1007  # text that is not valid JSON / UTF-8
    POLICY_VIOLATION = 1008  # refused: bad name, over a limit, not allowed
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # a bug or a failed disk on the server: retry later
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


def encode(message: Mapping[str, Any]) -> str:
    """Serialize a control message to compact JSON."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def decode(data: str | bytes) -> dict[str, Any]:
    """Parse a control message; raise :class:`ProtocolError` with the close code to use."""
    if not isinstance(data, str):
        raise ProtocolError(
            "expected a JSON text frame, got binary", close_code=CloseCode.UNSUPPORTED_DATA
        )
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON: {exc}", close_code=CloseCode.INVALID_PAYLOAD) from exc
    except RecursionError as exc:  # nesting deeper than the parser's stack: hostile input
        raise ProtocolError("JSON nested too deeply", close_code=CloseCode.INVALID_PAYLOAD) from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(
            'a control message is a JSON object with a string "type"',
            close_code=CloseCode.PROTOCOL_ERROR,
        )
    return message


def channel_problem(url: str) -> str | None:
    """Why ``url`` is not a stream channel URL a server accepts, or None if it is."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("ws", "wss") or not rest:
        return "expected ws://HOST:PORT/streams/NAME"
    _, slash, path = rest.partition("/")
    path = (slash + path).split("?", 1)[0]
    if not path.startswith(STREAMS_PREFIX):
        return "expected ws://HOST:PORT/streams/NAME"
    name = path[len(STREAMS_PREFIX) :]
    if not CHANNEL_NAME.match(name):
        return (
            f"bad channel name {name!r}: 1-128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return None


def field(message: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``message[name]``, checked to be of ``kind``; raise :class:`ProtocolError` if not.

    ``bool`` is never accepted where ``int`` is asked for (JSON ``true`` is not a number).
    """
    value = message.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(
            f"{message.get('type')!r} message: field {name!r} must be {expected}, got {value!r}",
            close_code=CloseCode.PROTOCOL_ERROR,
        )
    return value


def is_seq(value: Any, *, minimum: int = 0) -> bool:
    """Whether ``value`` is a seq: an integer (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def seq_field(message: Mapping[str, Any], name: str, *, minimum: int = 0) -> int:
    """``message[name]``, checked to be a seq; raise :class:`ProtocolError` (1002) if not."""
    value: Any = message.get(name)
    if not is_seq(value, minimum=minimum):
        raise ProtocolError(
            f"{message.get('type')!r}: {name!r} must be an integer >= {minimum}, got {value!r}",
            close_code=CloseCode.PROTOCOL_ERROR,
        )
    return int(value)
