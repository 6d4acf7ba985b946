"""Where the stream repositories used to live, kept so existing imports go on working.

The server's channel logs are in :mod:`resume.store.stream_log`; a client's outbox, seq counter
and cursors in :mod:`resume.store.stream_client`.
"""

from resume.store.stream_client import (
    ConsumerState,
    Outbox,
    ProducerState,
    StreamClientRepository,
)
from resume.store.stream_log import (
    Appended,
    ChannelHead,
    LoggedMessage,
    ProducerRecord,
    StreamLogRepository,
)

__all__ = [
    "Appended",
    "ChannelHead",
    "ConsumerState",
    "LoggedMessage",
    "Outbox",
    "ProducerRecord",
    "ProducerState",
    "StreamClientRepository",
    "StreamLogRepository",
]
