"""Jobs and pipelines in an SQLite file (WAL, synchronous=FULL: a committed job
survives a crash of the process or the machine)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from mps_snapshot_server.domain.errors import StoreUnavailable
from mps_snapshot_server.domain.models import Job, JobState, Pipeline
from mps_snapshot_server.store import codec
from mps_snapshot_server.store.base import JobQuery, LocalLocks, decode_page_token, encode_page_token
from mps_snapshot_server.store.base import us as _us

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_us DESC);
CREATE INDEX IF NOT EXISTS jobs_by_pipeline ON jobs (pipeline_id, created_us DESC);
CREATE TABLE IF NOT EXISTS client_tokens (
    principal TEXT NOT NULL,
    token TEXT NOT NULL,
    digest TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    PRIMARY KEY (principal, token)
);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY, at_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pipelines (
    id TEXT PRIMARY KEY,
    created_us INTEGER NOT NULL,
    doc TEXT NOT NULL
);
"""


#: The old name of JobQuery, kept for importers.


class SqliteStore:
    """One connection used from worker threads, one statement at a time.

    sqlite3 calls block, so each runs in a thread; a lock serialises them because the
    connection is shared.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._token_locks = LocalLocks()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)
        #: Called (on the event loop) with the error text whenever a statement fails for a
        #: reason of the server's (the health monitor listens).
        self.fault_listeners: list[Callable[[str], None]] = []

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn(self._conn)
                except sqlite3.OperationalError:
                    # A failed statement inside an explicit transaction leaves it open.
                    if self._conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                    raise

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.OperationalError as exc:
            # "database or disk is full", "disk I/O error", "database is locked": the
            # server's fault, not the caller's; nothing was committed, so a retry is safe.
            for listener in self.fault_listeners:
                listener(str(exc))
            raise StoreUnavailable(
                "The job store cannot be written right now (the server's disk may be full); nothing was "
                "recorded; retry later.",
                retry_after=5.0,
            ) from exc

    async def ping(self) -> bool:
        """True when the store can commit a write (a read alone passes on a full disk)."""

        def write(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO heartbeat (id, at_us) VALUES (1, ?)", (int(time.time() * 1e6),))

        try:
            await self._call(write)
        except (sqlite3.Error, StoreUnavailable):
            return False
        return True

    async def close(self) -> None:
        await self._call(lambda c: c.close())

    # Jobs

    async def put_job(self, job: Job) -> None:
        """Insert or replace a job; returns once the write is durable."""
        row = (job.id, job.pipeline_id, job.state.value, _us(job.creation_time), codec.dumps(job))
        await self._call(
            lambda c: c.execute(
                "INSERT INTO jobs (id, pipeline_id, state, created_us, doc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, doc=excluded.doc",
                row,
            )
        )

    async def get_jobs(self, ids: list[str]) -> dict[str, Job]:
        marks = ",".join("?" * len(ids))
        rows = await self._call(lambda c: c.execute(f"SELECT doc FROM jobs WHERE id IN ({marks})", ids).fetchall())
        jobs = [codec.loads(Job, r[0]) for r in rows]
        return {j.id: j for j in jobs}

    async def get_job(self, job_id: str) -> Job | None:
        return (await self.get_jobs([job_id])).get(job_id)

    async def list_jobs(self, flt: JobQuery, page_size: int, token: str) -> tuple[list[Job], str]:
        """A page of jobs, newest first, and the token of the next page ('' at the end)."""
        where: list[str] = ["1=1"]
        args: list[str | int] = []
        if flt.state:
            where.append("state = ?")
            args.append(flt.state)
        if flt.pipeline_id:
            where.append("pipeline_id = ?")
            args.append(flt.pipeline_id)
        if flt.created_from:
            where.append("created_us >= ?")
            args.append(_us(flt.created_from))
        if flt.created_to:
            where.append("created_us <= ?")
            args.append(_us(flt.created_to))
        if token:
            created, last_id = decode_page_token(token)
            where.append("(created_us < ? OR (created_us = ? AND id < ?))")
            args += [created, created, last_id]
        sql = (
            f"SELECT id, created_us, doc FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY created_us DESC, id DESC LIMIT ?"
        )
        rows = await self._call(lambda c: c.execute(sql, [*args, page_size + 1]).fetchall())
        more = len(rows) > page_size
        rows = rows[:page_size]
        jobs = [codec.loads(Job, r[2]) for r in rows]
        next_token = encode_page_token(rows[-1][1], rows[-1][0]) if more and rows else ""
        return jobs, next_token

    async def jobs_in_states(self, states: tuple[JobState, ...]) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT doc FROM jobs WHERE state IN ({marks}) ORDER BY created_us, id", [s.value for s in states]
            ).fetchall()
        )
        return [codec.loads(Job, r[0]) for r in rows]

    async def count_unfinished(self, pipeline_id: str) -> int:
        row = await self._call(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM jobs WHERE pipeline_id = ? AND state IN (?, ?)",
                (pipeline_id, JobState.SUBMITTED.value, JobState.SNAPSHOTING.value),
            ).fetchone()
        )
        return int(row[0])

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        """Jobs per (state, pipeline id), for the metrics gauge."""
        rows = await self._call(
            lambda c: c.execute("SELECT state, pipeline_id, COUNT(*) FROM jobs GROUP BY state, pipeline_id").fetchall()
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    # Idempotency tokens

    async def get_token(self, principal: str, token: str, since: datetime) -> tuple[str, str] | None:
        """(digest, job id) of a token used since ``since``."""
        row = await self._call(
            lambda c: c.execute(
                "SELECT digest, job_id FROM client_tokens WHERE principal = ? AND token = ? AND created_us >= ?",
                (principal, token, _us(since)),
            ).fetchone()
        )
        return (str(row[0]), str(row[1])) if row else None

    async def put_token(
        self, principal: str, token: str, digest: str, job_id: str, now: datetime, expired_before: datetime
    ) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM client_tokens WHERE created_us < ?", (_us(expired_before),))
            c.execute(
                "INSERT OR REPLACE INTO client_tokens VALUES (?, ?, ?, ?, ?)",
                (principal, token, digest, job_id, _us(now)),
            )

        await self._call(write)

    def token_lock(self, principal: str, token: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._token_locks.hold(principal, token)

    # Pipelines

    async def put_pipeline(self, pipeline: Pipeline) -> None:
        row = (pipeline.id, _us(pipeline.creation_time), codec.dumps(pipeline))
        await self._call(
            lambda c: c.execute(
                "INSERT INTO pipelines (id, created_us, doc) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET doc=excluded.doc",
                row,
            )
        )

    async def delete_pipeline(self, pipeline_id: str) -> None:
        await self._call(lambda c: c.execute("DELETE FROM pipelines WHERE id = ?", (pipeline_id,)))

    async def list_pipelines(self) -> list[Pipeline]:
        rows = await self._call(lambda c: c.execute("SELECT doc FROM pipelines ORDER BY created_us, id").fetchall())
        return [codec.loads(Pipeline, r[0]) for r in rows]
