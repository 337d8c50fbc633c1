"""One contract for every job/pipeline store: memory, SQLite and PostgreSQL behave alike
for what the services rely on (round trips, paging order and filters, idempotency
tokens, pipelines)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from mps_snapshot_server.domain.errors import InvalidParameter
from mps_snapshot_server.domain.models import (
    Job,
    JobState,
    NotifyConfig,
    ObjectRef,
    Pipeline,
    PipelineState,
    SnapshotRequest,
)
from mps_snapshot_server.store.base import JobQuery, Store
from mps_snapshot_server.store.memory import MemoryStore
from mps_snapshot_server.store.postgres import PostgresStore
from mps_snapshot_server.store.sqlite import SqliteStore
from tests.helpers.pgutil import temp_database

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest_asyncio.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        sqlite = SqliteStore(tmp_path / "db.sqlite")
        yield sqlite
        await sqlite.close()
    else:
        async with temp_database() as dsn:
            pg = await PostgresStore.open(dsn, origin="test")
            try:
                yield pg
            finally:
                await pg.close()


def job(n: int, *, state: JobState = JobState.SUBMITTED, pipeline: str = "p1", minutes: int | None = None) -> Job:
    return Job(
        id=f"job{n:03d}",
        request=SnapshotRequest(input=ObjectRef(bucket="b", object=f"in{n}.mp4"), user_data=f"u{n}"),
        state=state,
        creation_time=T0 + timedelta(minutes=n if minutes is None else minutes),
        request_id=f"r{n}",
        pipeline_id=pipeline,
        is_async=True,
    )


def pipeline(n: int, state: PipelineState = PipelineState.ACTIVE) -> Pipeline:
    return Pipeline(
        id=f"pipe{n}",
        name=f"P{n}",
        state=state,
        speed="Standard",
        speed_level=0,
        role="",
        notify_config=NotifyConfig(http_url="http://127.0.0.1:1/n"),
        max_concurrent_jobs=2,
        queue_capacity=10,
        creation_time=T0 + timedelta(seconds=n),
        is_default=n == 1,
    )


async def test_a_job_round_trips_and_updates_in_place(store: Store) -> None:
    original = job(1)
    await store.put_job(original)
    assert await store.get_job("job001") == original
    done = dataclasses.replace(original, state=JobState.SUCCESS, count=3, finish_time=T0 + timedelta(hours=1))
    await store.put_job(done)
    assert await store.get_job("job001") == done
    assert await store.get_job("nope") is None
    assert await store.get_jobs(["job001", "nope"]) == {"job001": done}


async def test_pages_are_newest_first_and_filters_combine(store: Store) -> None:
    for n in range(1, 8):
        await store.put_job(
            job(n, pipeline="p1" if n % 2 else "p2", state=JobState.SUCCESS if n > 4 else JobState.SUBMITTED)
        )
    await store.put_job(job(8, minutes=7))  # same creation time as job007: ordered by id
    seen: list[str] = []
    token = ""
    while True:
        page, token = await store.list_jobs(JobQuery(), 3, token)
        seen += [j.id for j in page]
        if not token:
            break
    assert seen == ["job008", "job007", "job006", "job005", "job004", "job003", "job002", "job001"]
    page, token = await store.list_jobs(JobQuery(state="Success", pipeline_id="p1"), 10, "")
    assert [j.id for j in page] == ["job007", "job005"] and token == ""
    window = JobQuery(created_from=T0 + timedelta(minutes=2), created_to=T0 + timedelta(minutes=3))
    assert [j.id for j in (await store.list_jobs(window, 10, ""))[0]] == ["job003", "job002"]
    with pytest.raises(InvalidParameter):
        await store.list_jobs(JobQuery(), 3, "not-a-token")


async def test_open_jobs_by_state_and_pipeline(store: Store) -> None:
    await store.put_job(job(3, state=JobState.SNAPSHOTING))
    await store.put_job(job(1))
    await store.put_job(job(2, state=JobState.FAIL))
    await store.put_job(job(4, pipeline="p2"))
    found = await store.jobs_in_states((JobState.SUBMITTED, JobState.SNAPSHOTING))
    assert [j.id for j in found] == ["job001", "job003", "job004"]
    assert await store.count_unfinished("p1") == 2
    assert await store.count_unfinished("p9") == 0


async def test_client_tokens_are_remembered_for_their_window(store: Store) -> None:
    now = T0 + timedelta(days=1)
    await store.put_token("alice", "t1", "d1", "job001", T0, T0 - timedelta(days=1))
    assert await store.get_token("alice", "t1", T0 - timedelta(hours=1)) == ("d1", "job001")
    assert await store.get_token("bob", "t1", T0 - timedelta(hours=1)) is None
    assert await store.get_token("alice", "t1", T0 + timedelta(minutes=1)) is None  # older than the window
    await store.put_token("alice", "t2", "d2", "job002", now, T0 + timedelta(minutes=1))  # sweeps t1
    assert await store.get_token("alice", "t1", T0 - timedelta(days=9)) is None
    assert await store.get_token("alice", "t2", T0) == ("d2", "job002")


async def test_the_token_lock_serialises_one_token(store: Store) -> None:
    order: list[str] = []

    async def holder(name: str) -> None:
        async with store.token_lock("alice", "t"):
            order.append(name + "+")
            await asyncio.sleep(0.05)
            order.append(name + "-")

    await asyncio.gather(holder("a"), holder("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


async def test_pipelines_round_trip_oldest_first(store: Store) -> None:
    for n in (2, 1, 3):
        await store.put_pipeline(pipeline(n))
    paused = dataclasses.replace(pipeline(2), state=PipelineState.PAUSED, max_concurrent_jobs=5)
    await store.put_pipeline(paused)
    assert await store.list_pipelines() == [pipeline(1), paused, pipeline(3)]
    await store.delete_pipeline("pipe1")
    await store.delete_pipeline("pipe9")
    assert [p.id for p in await store.list_pipelines()] == ["pipe2", "pipe3"]
    assert await store.ping()
