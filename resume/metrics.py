"""What `resume serve` counts, in the Prometheus text format (``GET /metrics``).

Every server app owns one :class:`ServerMetrics` with its own registry, so several apps in one
process (tests, an embedding program) never share or collide on a metric. Labels take values
from small fixed sets only (the endpoint kind, a refusal code, the kind of commit): never a
file name, channel name, client id or peer address, so the number of series stays bounded
however many clients come and go.

Name                                         Type       Labels
resume_connections_total                     counter    endpoint (upload, streams)
resume_connections_open                      gauge      endpoint
resume_uploads_in_progress                   gauge
resume_uploads_completed_total               counter
resume_uploads_failed_total                  counter    reason (a refusal code, or "protocol")
resume_upload_received_bytes_total           counter
resume_upload_fsync_seconds                  histogram
resume_store_commit_seconds                  histogram  kind (upload, stream)
resume_stream_messages_appended_total        counter
resume_stream_messages_delivered_total       counter
resume_stream_gaps_total                     counter
resume_auth_refused_total                    counter
resume_disk_free_bytes                       gauge
resume_build_info                            gauge      version
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from resume import __version__

ENDPOINTS = ("upload", "streams")
COMMIT_KINDS = ("upload", "stream")
# Why an upload failed, as the wire's refusal codes name it (resume.protocol.upload.ErrorCode),
# plus "protocol" for a client that broke the protocol. Anything else is counted as "other".
FAILURE_REASONS = (
    "bad_name",
    "too_large",
    "mismatch",
    "unknown_file",
    "incomplete",
    "checksum_mismatch",
    "disk_full",
    "storage",
    "exists",
    "name_in_use",
    "forbidden",
    "limit",
    "protocol",
    "other",
)
# fsyncs and commits: from a fast SSD (sub-millisecond) to a stalled network disk (seconds)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The counters, gauges and histograms of one server app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.connections = Counter(
            "resume_connections",
            "WebSocket connections accepted, by endpoint",
            ["endpoint"],
            registry=registry,
        )
        self.connections_open = Gauge(
            "resume_connections_open",
            "WebSocket connections open now, by endpoint",
            ["endpoint"],
            registry=registry,
        )
        self.uploads_in_progress = Gauge(
            "resume_uploads_in_progress",
            "files being received by a connection now",
            registry=registry,
        )
        self.uploads_completed = Counter(
            "resume_uploads_completed",
            "files verified and moved to their final name",
            registry=registry,
        )
        self.uploads_failed = Counter(
            "resume_uploads_failed",
            "upload requests refused or ended by an error, by reason",
            ["reason"],
            registry=registry,
        )
        self.bytes_received = Counter(
            "resume_upload_received_bytes",
            "chunk bytes received, verified and written to partial files",
            registry=registry,
        )
        self.fsync_seconds = Histogram(
            "resume_upload_fsync_seconds",
            "time to fsync a partial file before its chunks are acked",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "resume_store_commit_seconds",
            "time of the store transaction that makes received data durable, by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stream_appended = Counter(
            "resume_stream_messages_appended",
            "stream messages stored (replayed duplicates not counted)",
            registry=registry,
        )
        self.stream_delivered = Counter(
            "resume_stream_messages_delivered",
            "stream messages sent to subscribers (a re-sent message counts again)",
            registry=registry,
        )
        self.stream_gaps = Counter(
            "resume_stream_gaps",
            "gaps reported to subscribers: messages trimmed before they took them",
            registry=registry,
        )
        self.auth_refused = Counter(
            "resume_auth_refused",
            "requests refused for a missing or wrong credential",
            registry=registry,
        )
        self.disk_free = Gauge(
            "resume_disk_free_bytes",
            "free bytes on the file system of the server's root",
            registry=registry,
        )
        build = Gauge(
            "resume_build_info", "the running version of resume", ["version"], registry=registry
        )
        build.labels(__version__).set(1)
        # Every labelled series exists from the start, so a scrape shows zeros, not nothing.
        for endpoint in ENDPOINTS:
            self.connections.labels(endpoint)
            self.connections_open.labels(endpoint)
        for reason in FAILURE_REASONS:
            self.uploads_failed.labels(reason)
        for kind in COMMIT_KINDS:
            self.commit_seconds.labels(kind)

    def upload_failed(self, reason: str) -> None:
        """Count a failed upload request; ``reason`` outside the known set counts as other."""
        self.uploads_failed.labels(reason if reason in FAILURE_REASONS else "other").inc()

    def endpoint_label(self, path: str) -> str | None:
        """The ``endpoint`` label for a request path, or None for paths not counted."""
        name = path.split("?", 1)[0].lstrip("/").split("/", 1)[0]
        return name if name in ENDPOINTS else None

    def watch_uploads(self, count: Callable[[], int]) -> None:
        """Read ``resume_uploads_in_progress`` from ``count`` at every scrape."""
        self.uploads_in_progress.set_function(count)

    def watch_disk(self, path: Path) -> None:
        """Read ``resume_disk_free_bytes`` for the file system holding ``path`` at every scrape."""
        self.disk_free.set_function(lambda: shutil.disk_usage(path).free)

    def render(self) -> bytes:
        """The current values in the Prometheus text exposition format."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ServerMetrics"]
