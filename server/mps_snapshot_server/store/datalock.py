"""One server per data folder: an exclusive flock on ``<data folder>/.lock``.

The SQLite store, the work folders and the upload folder all belong to one process; a
second server on the same folder would re-run the first one's jobs and sweep its work.
The kernel drops the lock when the process dies, so a crash never leaves it stale."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SystemExit(
                f"refusing to start: another mps-snapshot server (pid {holder}) is using the data folder "
                f"{self.path.parent.resolve()}. One server owns a data folder; stop it first, give this one "
                "its own --data-dir, or run several replicas on PostgreSQL (database_url, see docs/deploy.md)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
