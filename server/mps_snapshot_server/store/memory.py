"""Jobs and pipelines in memory: for tests of the services and workers (no durability).
Objects are stored encoded, as the other stores do, so a caller never shares a mutable
value with the store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

from mps_snapshot_server.domain.models import Job, JobState, Pipeline
from mps_snapshot_server.store import codec
from mps_snapshot_server.store.base import JobQuery, LocalLocks, decode_page_token, encode_page_token, us


class MemoryStore:
    def __init__(self) -> None:
        self._jobs: dict[str, tuple[int, str, str, str]] = {}  # id -> (created_us, pipeline, state, doc)
        self._tokens: dict[tuple[str, str], tuple[str, str, int]] = {}
        self._pipelines: dict[str, tuple[int, str]] = {}
        self.closed = False
        self._token_locks = LocalLocks()
        self.fault_listeners: list[Callable[[str], None]] = []

    async def ping(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        self.closed = True

    async def put_job(self, job: Job) -> None:
        old = self._jobs.get(job.id)
        created = old[0] if old else us(job.creation_time)
        pipeline = old[1] if old else job.pipeline_id
        self._jobs[job.id] = (created, pipeline, job.state.value, codec.dumps(job))

    async def get_jobs(self, ids: list[str]) -> dict[str, Job]:
        return {i: codec.loads(Job, self._jobs[i][3]) for i in ids if i in self._jobs}

    async def get_job(self, job_id: str) -> Job | None:
        return (await self.get_jobs([job_id])).get(job_id)

    async def list_jobs(self, flt: JobQuery, page_size: int, token: str) -> tuple[list[Job], str]:
        after = decode_page_token(token) if token else None
        rows = sorted(((c, i, d) for i, (c, p, s, d) in self._jobs.items() if _matches(flt, c, p, s)), reverse=True)
        if after is not None:
            rows = [r for r in rows if (r[0], r[1]) < after]
        page = rows[:page_size]
        more = len(rows) > page_size
        next_token = encode_page_token(page[-1][0], page[-1][1]) if more and page else ""
        return [codec.loads(Job, d) for _, _, d in page], next_token

    async def jobs_in_states(self, states: tuple[JobState, ...]) -> list[Job]:
        wanted = {s.value for s in states}
        rows = sorted((c, i, d) for i, (c, _, s, d) in self._jobs.items() if s in wanted)
        return [codec.loads(Job, d) for _, _, d in rows]

    async def count_unfinished(self, pipeline_id: str) -> int:
        open_states = (JobState.SUBMITTED.value, JobState.SNAPSHOTING.value)
        return sum(1 for _, p, s, _ in self._jobs.values() if p == pipeline_id and s in open_states)

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for _, pipeline, state, _ in self._jobs.values():
            counts[(state, pipeline)] = counts.get((state, pipeline), 0) + 1
        return counts

    async def get_token(self, principal: str, token: str, since: datetime) -> tuple[str, str] | None:
        found = self._tokens.get((principal, token))
        if found is None or found[2] < us(since):
            return None
        return found[0], found[1]

    async def put_token(
        self, principal: str, token: str, digest: str, job_id: str, now: datetime, expired_before: datetime
    ) -> None:
        limit = us(expired_before)
        self._tokens = {k: v for k, v in self._tokens.items() if v[2] >= limit}
        self._tokens[(principal, token)] = (digest, job_id, us(now))

    def token_lock(self, principal: str, token: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._token_locks.hold(principal, token)

    async def put_pipeline(self, pipeline: Pipeline) -> None:
        old = self._pipelines.get(pipeline.id)
        self._pipelines[pipeline.id] = (old[0] if old else us(pipeline.creation_time), codec.dumps(pipeline))

    async def delete_pipeline(self, pipeline_id: str) -> None:
        self._pipelines.pop(pipeline_id, None)

    async def list_pipelines(self) -> list[Pipeline]:
        rows = sorted((c, i, d) for i, (c, d) in self._pipelines.items())
        return [codec.loads(Pipeline, d) for _, _, d in rows]


def _matches(flt: JobQuery, created: int, pipeline: str, state: str) -> bool:
    return (
        (not flt.state or state == flt.state)
        and (not flt.pipeline_id or pipeline == flt.pipeline_id)
        and (flt.created_from is None or created >= us(flt.created_from))
        and (flt.created_to is None or created <= us(flt.created_to))
    )
