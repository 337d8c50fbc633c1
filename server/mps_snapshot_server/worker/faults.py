"""Telling the service's own faults from bad content.

ffmpeg reports a read error the same way whether the file is damaged or the storage it
reads from went away, and a write error whether the frame is bad or the disk is full. When
a run ends with ResourceContentBad, the input is checked again: if its storage cannot be
reached, or the work disk is full, the fault is the server's (retried for async jobs,
UNAVAILABLE for sync calls), not the caller's.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from mps_snapshot_server.domain.errors import DiskFull, MpsError, ResourceContentBad, ServiceFault
from mps_snapshot_server.storage.base import ObjectStore

#: Below this much free space a failed write is taken for a full disk.
_NEARLY_FULL_BYTES = 1024 * 1024


async def disk_full(path: Path) -> bool:
    try:
        st = await asyncio.to_thread(os.statvfs, path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES


async def explain(error: ResourceContentBad, store: ObjectStore, bucket: str, key: str, work: Path) -> MpsError:
    """``error``, or the service fault that caused it."""
    try:
        await store.head(bucket, key)
    except ServiceFault as fault:
        return fault
    except MpsError:
        return error  # gone or forbidden now: the content error stands
    if await disk_full(work):
        return DiskFull(
            "The server's work disk is full, so the snapshot could not be written; this is not a fault of "
            "the input; retry later.",
            retry_after=5.0,
        )
    return error


def from_exception(exc: BaseException) -> MpsError | None:
    """The service fault an unexpected exception stands for, if any (a full disk met by a
    work folder, a sprite canvas or a text file being written)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            "The server's work disk is full; this is not a fault of the input; retry later.", retry_after=5.0
        )
    return None
