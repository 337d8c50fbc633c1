"""Progress for the CLI: a live bar (rich) on a terminal, plain lines when piped.

A job's bar shows its state, images done of those planned, sprites, and the time since it
was created; piped, each change is one line (``job ID State images 3/10 sprites 0/1 2.1 s``)
so logs and scripts read it easily.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from mps_snapshot_client.api import resources_pb2 as res


def _elapsed(job: res.SnapshotJob) -> float:
    if not job.HasField("creation_time"):
        return 0.0
    start = job.creation_time.ToDatetime().timestamp()
    end = job.finish_time.ToDatetime().timestamp() if job.HasField("finish_time") else time.time()
    return max(0.0, end - start)


def _counts(job: res.SnapshotJob) -> tuple[int, int, int, int]:
    """(images done, images planned, sprites done, sprites planned); planned is 0 when unknown."""
    images = len(job.images) or job.count
    return images, job.images_planned, len(job.sprites) or job.tile_count, job.sprites_planned


def plain_line(job: res.SnapshotJob) -> str:
    images, images_total, sprites, sprites_total = _counts(job)
    parts = [f"job {job.id} {job.state}", f"images {images}/{images_total or '?'}"]
    if sprites_total or sprites:
        parts.append(f"sprites {sprites}/{sprites_total or '?'}")
    parts.append(f"{_elapsed(job):.1f} s")
    if job.code:
        parts.append(f"{job.code}: {job.message}")
    return "  ".join(parts)


class JobProgress:
    """Shows one job's progress; feed it each version of the job with ``update``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.console = Console(file=stream)
        self.live = self.console.is_terminal
        self._last = ""
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[state]:<11}"),
                BarColumn(),
                TextColumn("images {task.completed:.0f}/{task.fields[images_total]}"),
                TextColumn("{task.fields[sprites]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, job: res.SnapshotJob) -> None:
        images, images_total, sprites, sprites_total = _counts(job)
        if self._progress is None:
            line = plain_line(job)
            # Piped: one line per change, not per repeated event.
            if line.rsplit("  ", 1)[0] != self._last.rsplit("  ", 1)[0]:
                print(line, file=self.stream, flush=True)
            self._last = line
            return
        sprite_text = f"sprites {sprites}/{sprites_total or '?'}" if (sprites or sprites_total) else ""
        # Only sprites planned (no single images kept): the bar follows the sprites.
        done, total = (sprites, sprites_total) if not images_total and sprites_total else (images, images_total)
        shown_total = images_total or "?"
        if self._task is None:
            self._task = self._progress.add_task(
                job.id, total=total or None, completed=done, state=job.state, images_total=shown_total,
                sprites=sprite_text,
            )  # fmt: skip
        else:
            self._progress.update(
                self._task, total=total or None, completed=done, state=job.state, images_total=shown_total,
                sprites=sprite_text,
            )  # fmt: skip
        if job.state in ("Success", "Fail", "Cancelled") and total:
            self._progress.update(self._task, completed=total if job.state == "Success" else done)


class CopyProgress:
    """Bytes copied by ``put``: a bar with speed on a terminal, one summary line when piped."""

    def __init__(self, stream: IO[str], total: int, label: str) -> None:
        self.console = Console(file=stream)
        self.stream = stream
        self.total = total
        self.label = label
        self.copied = 0
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> CopyProgress:
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn(self.label),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task("copy", total=self.total)
            self._progress.start()
        return self

    def advance(self, nbytes: int) -> None:
        """Called from the copying thread (rich's Progress is thread-safe)."""
        self.copied += nbytes
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.copied)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif kind is None:
            seconds = time.monotonic() - self.started
            print(f"copied {self.copied} of {self.total} bytes in {seconds:.1f} s", file=self.stream, flush=True)
