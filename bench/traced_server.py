"""``mps-snapshot serve`` with timers around the steps of a synchronous snapshot (for bench.explain_sync).

    .venv/bin/python -m bench.traced_server serve --listen 127.0.0.1:0 --data-dir DIR   # env BENCH_TRACE_FILE

The server code is not changed: this wraps a few of its functions before starting it, and
appends one JSON line per finished step to $BENCH_TRACE_FILE: ``{"step": ..., "s": seconds,
"what": ..., "start": epoch seconds}``, plus ``"argv"`` of each ``run`` when $BENCH_TRACE_ARGV is
set (bench.bench_jobs uses that to show where a job's time goes). Steps: ``submit``
(JobService.submit, the whole server-side call), ``head``, ``probe``, ``run`` (one ffmpeg/ffprobe
process incl. its setpriv/prlimit wrapper, ``what`` is the program), ``put_file`` (publishing
the JPEG, with fsync) and ``put_job`` (the SQLite commit).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _emit(step: str, seconds: float, what: str = "", started: float = 0.0, argv: list[str] | None = None) -> None:
    path = os.environ.get("BENCH_TRACE_FILE")
    if path:
        event: dict[str, object] = {"step": step, "s": seconds, "what": what, "start": started}
        if argv is not None and os.environ.get("BENCH_TRACE_ARGV"):
            event["argv"] = argv
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def _timed(
    step: str, fn: Callable[..., Awaitable[T]], what: Callable[..., str] | None = None
) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        wall = time.time()
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            argv = [str(a) for a in args[0]] if step == "run" and args else None
            _emit(step, time.perf_counter() - started, what(*args, **kwargs) if what else "", wall, argv)

    return wrapper


def install() -> None:
    from mps_snapshot_server.media import process
    from mps_snapshot_server.service import jobs
    from mps_snapshot_server.storage.local import LocalStore
    from mps_snapshot_server.store.sqlite import SqliteStore
    from mps_snapshot_server.worker import runner

    targets: list[tuple[object, str, str, Callable[..., str] | None]] = [
        (process, "run", "run", lambda argv, **_: Path(str(argv[0])).name),
        (jobs.JobService, "submit", "submit", None),
        (runner.JobRunner, "_execute", "take_one", None),
        (LocalStore, "head", "head", None),
        (LocalStore, "put_file", "put_file", None),
        (SqliteStore, "put_job", "put_job", None),
    ]
    for owner, name, step, what in targets:
        setattr(owner, name, _timed(step, getattr(owner, name), what))


def main() -> int:
    install()
    from mps_snapshot_server.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
