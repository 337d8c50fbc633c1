"""The persistence ports: what the job service, the scheduler and the pipeline registry
need from a store. SQLite (embedded, single process), memory (tests) and PostgreSQL
(several replicas) implement them; tests/test_store_contract.py holds all three to the
same behaviour."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from mps_snapshot_server.domain.errors import InvalidParameter
from mps_snapshot_server.domain.models import Job, JobState, Pipeline


@dataclass(frozen=True)
class JobQuery:
    """The filters of QuerySnapshotJobList (empty/None: no filter)."""

    state: str = ""
    pipeline_id: str = ""
    created_from: datetime | None = None
    created_to: datetime | None = None


class JobStore(Protocol):
    #: Called with a description when a write fails for the store's own reasons (disk full,
    #: I/O error), so health can report it.
    fault_listeners: list[Callable[[str], None]]

    async def ping(self) -> bool:
        """True when the store can record jobs (health follows it)."""
        ...

    async def close(self) -> None: ...

    async def put_job(self, job: Job) -> None:
        """Insert or replace a job; returns once the write is durable."""
        ...

    async def get_jobs(self, ids: list[str]) -> dict[str, Job]: ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(self, flt: JobQuery, page_size: int, token: str) -> tuple[list[Job], str]:
        """A page of jobs, newest first (creation time, then id), and the next page's token
        ('' at the end); InvalidParameter for a token this store did not issue."""
        ...

    async def jobs_in_states(self, states: tuple[JobState, ...]) -> list[Job]:
        """Jobs in any of ``states``, oldest first."""
        ...

    async def count_unfinished(self, pipeline_id: str) -> int: ...

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        """Jobs per (state, pipeline id), for the metrics gauge."""
        ...

    async def get_token(self, principal: str, token: str, since: datetime) -> tuple[str, str] | None:
        """(request digest, job id) of a ClientToken used since ``since``."""
        ...

    async def put_token(
        self, principal: str, token: str, digest: str, job_id: str, now: datetime, expired_before: datetime
    ) -> None: ...

    def token_lock(self, principal: str, token: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held around the check-then-submit of one ClientToken, so retries of one token
        create one job. Per process for the embedded stores; cluster-wide for PostgreSQL."""
        ...


class PipelineStore(Protocol):
    async def put_pipeline(self, pipeline: Pipeline) -> None: ...

    async def delete_pipeline(self, pipeline_id: str) -> None: ...

    async def list_pipelines(self) -> list[Pipeline]:
        """All pipelines, oldest first."""
        ...


class Store(JobStore, PipelineStore, Protocol):
    """One backend holding both (they share a transaction domain in PostgreSQL)."""


class LocalLocks:
    """The embedded stores' token locks: per process, which is all they allow."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, principal: str, token: str) -> AsyncIterator[None]:
        key = (principal, token)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]


def encode_page_token(created_us: int, job_id: str) -> str:
    raw = json.dumps([created_us, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        return int(created), str(job_id)
    except (ValueError, TypeError):
        raise InvalidParameter.field(
            "next_page_token", "NextPageToken is not one this server returned; start again without it."
        ) from None


def us(ts: datetime) -> int:
    """Microseconds since the epoch: the stores' sort key for creation times."""
    return int(ts.timestamp() * 1_000_000)
