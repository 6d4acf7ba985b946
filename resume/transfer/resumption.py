"""Which earlier transfer a run continues: one rule for WebSocket and tus uploads.

The newest transfer of the same source file to the same server under the same remote name is
resumed, unless it was cancelled, or is completed (then the file is only checked, or sent
again if it changed), or ``--restart`` gives it up. A source that changed since its
unfinished transfer began is never mixed: :class:`resume.errors.SourceChanged`.
"""

from __future__ import annotations

from dataclasses import dataclass

from resume.errors import SourceChanged
from resume.store.states import TransferState
from resume.store.transfers import LockOwner, TransferRecord, TransferRepository, lock_key
from resume.transfer.plan import FileJob
from resume.transfer.source import Fingerprint

RESTART_HINT = "run the same command with --restart to send it again from the start"


def fingerprint_of(record: TransferRecord) -> Fingerprint:
    """The source fingerprint a transfer recorded when it began."""
    return Fingerprint(size=record.size, mtime_ns=record.mtime_ns, inode=record.inode)


@dataclass(frozen=True, slots=True)
class Found:
    """What an earlier run left for one file."""

    record: TransferRecord | None  # the transfer to continue; None: start a new one
    finished: bool = False  # ``record`` is a completed transfer of this very file
    dropped: TransferRecord | None = None  # an unfinished one ``restart`` gave up


def find_transfer(
    repo: TransferRepository,
    job: FileJob,
    fingerprint: Fingerprint,
    *,
    url: str,
    server: str | None = None,
    restart: bool = False,
) -> Found:
    """The transfer ``job`` continues, by the rule in this module's docstring.

    A transfer given up by ``restart`` is marked cancelled here; the caller drops it on the
    server too.
    """
    record = repo.latest_for(str(job.path), url, job.name, server=server)
    dropped = None
    if (
        record is not None
        and restart
        and record.state not in (TransferState.COMPLETED, TransferState.CANCELLED)
    ):
        repo.update(record.file_id, state=TransferState.CANCELLED, last_error="restarted")
        record, dropped = None, record
    if record is not None and record.state is TransferState.COMPLETED:
        if fingerprint_of(record) == fingerprint and not restart:
            return Found(record, finished=True)
        record = None  # a new version of a file sent before: a new transfer
    if record is not None and record.state is TransferState.CANCELLED:
        record = None
    if record is not None and fingerprint_of(record) != fingerprint:
        raise SourceChanged(
            f"{job.path} changed since its transfer {record.file_id[:8]} began "
            f"({fingerprint_of(record).differences(fingerprint)}); {RESTART_HINT}"
        )
    return Found(record, dropped=dropped)


def lock_file(
    repo: TransferRepository, job: FileJob, server: str, owner: LockOwner
) -> tuple[str, str | None]:
    """Take the lock on sending ``job`` to ``server``: ``(key, None)``, or ``(key, why not)``
    while another live run holds it (one rule for WebSocket and tus uploads)."""
    key = lock_key(str(job.path), server, job.name)
    holder = repo.lock(key, owner)
    if holder is None:
        return key, None
    where = "" if holder.host == owner.host else f" on {holder.host}"
    return key, f"another upload of {job.path} is running (pid {holder.pid}{where})"
