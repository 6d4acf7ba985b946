"""Named crash points: a test hook that kills the process at one step, like a power cut.

``RESUME_CRASH_AT=NAME`` (or ``NAME:N`` for the N-th time the step is reached) is read once,
when this module is imported; at that step the process ends at once with ``os._exit`` —
no cleanup, no flush, nothing written after it — exactly what SIGKILL would leave. Unset, a
crash point costs one comparison. The steps are listed in :data:`STEPS`; a test kills a real
server at every one of them and shows the same upload command still completes.
"""

from __future__ import annotations

import os

CRASH_EXIT = 86  # what a crashed process exits with, so tests can tell it from a failure

STEPS = (
    "begin.claimed",  # ownership recorded, the partial not yet created
    "begin.partial_created",  # partial created and its directory synced, no reply yet
    "chunk.written",  # chunk bytes written, not synced
    "chunk.synced",  # chunk bytes fsynced, not recorded
    "chunk.recorded",  # chunk recorded in the store, not acked
    "publish.verified",  # whole file hashed, intent not recorded
    "publish.intent_recorded",  # PUBLISHING recorded, nothing renamed
    "publish.linked",  # linked under the final name, the partial name not removed
    "publish.renamed",  # in place under the final name, not recorded as completed
    "publish.recorded",  # recorded as completed, no `done` sent
    "cancel.recorded",  # cancellation recorded, the partial not removed
)


def _parse(value: str | None) -> tuple[str | None, int]:
    if not value:
        return None, 0
    name, _, count = value.partition(":")
    if name not in STEPS:
        raise SystemExit(
            f"RESUME_CRASH_AT: unknown crash point {name!r}; known: {', '.join(STEPS)}"
        )
    return name, int(count or 1)


_TARGET, _REMAINING = _parse(os.environ.get("RESUME_CRASH_AT"))


def crash_point(name: str) -> None:
    """Die here if ``RESUME_CRASH_AT`` names this step (and this is its N-th time)."""
    global _REMAINING
    if name != _TARGET:
        return
    _REMAINING -= 1
    if _REMAINING <= 0:
        os._exit(CRASH_EXIT)
