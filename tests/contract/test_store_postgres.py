"""The PostgreSQL store's coordination on a real server: claims (SKIP LOCKED, per-pipeline
limits, Paused), leases and fencing, the queue bound, cancel requests, nonces, rate
buckets, and migrations run by several replicas at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mps_snapshot_server.domain.models import Job, JobState, PipelineState
from mps_snapshot_server.store.leases import LeaseLost, current_lease
from mps_snapshot_server.store.postgres import MIGRATIONS, PostgresStore
from tests.contract.test_store_contract import job, pipeline
from tests.helpers.pgutil import temp_database


@pytest_asyncio.fixture
async def dsn() -> AsyncIterator[str]:
    async with temp_database() as url:
        yield url


@pytest_asyncio.fixture
async def store(dsn: str) -> AsyncIterator[PostgresStore]:
    pg = await PostgresStore.open(dsn, origin="r1", pool_size=12)
    try:
        yield pg
    finally:
        await pg.close()


async def test_replicas_starting_together_migrate_once(dsn: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(dsn, origin=f"r{n}") for n in range(4)))
    try:
        async with stores[0]._pool.acquire() as c:
            versions = [r[0] for r in await c.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [v for v, _ in MIGRATIONS]
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_claims_take_distinct_jobs_within_the_pipeline_limit(store: PostgresStore) -> None:
    await store.put_pipeline(dataclasses.replace(pipeline(1), max_concurrent_jobs=3, id="p1"))
    for n in range(6):
        await store.insert_if_room(job(n), 100)
    claims = await asyncio.gather(*(store.claim(f"w{n}", 30, 3) for n in range(8)))
    taken = [c for c in claims if c is not None]
    assert len(taken) == 3  # MaxConcurrentJobs, however many claim at once
    assert sorted(c.job.id for c in taken) == ["job000", "job001", "job002"]  # oldest first, each once
    assert all(c.job.state is JobState.SNAPSHOTING and c.job.attempts == 1 for c in taken)
    assert {c.lease.attempt for c in taken} == {1}


async def test_paused_pipelines_are_not_claimed(store: PostgresStore) -> None:
    await store.put_pipeline(dataclasses.replace(pipeline(1), id="p1", state=PipelineState.PAUSED))
    await store.insert_if_room(job(1), 100)
    assert await store.claim("w", 30, 3) is None
    await store.put_pipeline(dataclasses.replace(pipeline(1), id="p1"))
    claim = await store.claim("w", 30, 3)
    assert claim is not None and claim.job.id == "job001"


async def test_the_queue_bound_holds_under_concurrent_submits(store: PostgresStore) -> None:
    await store.put_pipeline(dataclasses.replace(pipeline(1), id="p1"))
    results = await asyncio.gather(*(store.insert_if_room(job(n), 5) for n in range(20)))
    assert sum(1 for r in results if r is None) == 5
    assert await store.count_unfinished("p1") == 5


async def test_an_expired_lease_passes_on_and_fences_the_old_owner(store: PostgresStore) -> None:
    await store.put_pipeline(dataclasses.replace(pipeline(1), id="p1"))
    await store.insert_if_room(job(1), 100)
    first = await store.claim("old", 1.0, 3)
    assert first is not None
    assert await store.claim("new", 1.0, 3) is None  # held
    await asyncio.sleep(1.2)
    second = await store.claim("new", 30, 3)
    assert second is not None and second.lease.attempt == 2 and second.job.attempts == 2
    assert not await store.renew(first.lease) and first.lease.lost
    token = current_lease.set(first.lease)
    try:
        with pytest.raises(LeaseLost):
            await store.put_job(dataclasses.replace(first.job, state=JobState.SUCCESS))
    finally:
        current_lease.reset(token)
    token = current_lease.set(second.lease)
    try:
        await store.put_job(dataclasses.replace(second.job, state=JobState.SUCCESS))
    finally:
        current_lease.reset(token)
    final = await store.get_job("job001")
    assert final is not None and final.state is JobState.SUCCESS and final.attempts == 2
    # An unleased write cannot touch a held job either.
    await store.insert_if_room(job(2), 100)
    held = await store.claim("new", 30, 3)
    assert held is not None
    await store.put_job(dataclasses.replace(held.job, state=JobState.FAIL))
    still = await store.get_job("job002")
    assert still is not None and still.state is JobState.SNAPSHOTING


async def test_a_job_interrupted_on_every_attempt_is_claimed_exhausted(store: PostgresStore) -> None:
    await store.put_pipeline(dataclasses.replace(pipeline(1), id="p1"))
    await store.insert_if_room(job(1), 100)
    for attempt in (1, 2):
        claim = await store.claim(f"r{attempt}", 1.0, 2)
        assert claim is not None and not claim.exhausted and claim.job.attempts == attempt
        await asyncio.sleep(1.1)
    last = await store.claim("r3", 30, 2)
    assert last is not None and last.exhausted and last.job.attempts == 2


async def test_cancel_requests(store: PostgresStore) -> None:
    await store.put_pipeline(dataclasses.replace(pipeline(1), id="p1"))
    await store.insert_if_room(job(1), 100)
    await store.insert_if_room(job(2), 100)

    def cancelled(j: Job) -> Job:
        return dataclasses.replace(j, state=JobState.CANCELLED)

    outcome, queued = await store.request_cancel("job001", cancelled)
    assert outcome == "cancelled" and queued is not None and queued.state is JobState.CANCELLED
    running = await store.claim("w", 30, 3)
    assert running is not None and running.job.id == "job002"
    outcome, _ = await store.request_cancel("job002", cancelled)
    assert outcome == "requested"
    assert await store.renew(running.lease) is True  # the owner learns it at its next renewal
    assert (await store.request_cancel("nope", cancelled))[0] == "missing"


async def test_nonces_and_rate_buckets_are_shared(dsn: str, store: PostgresStore) -> None:
    other = await PostgresStore.open(dsn, origin="r2")
    try:
        assert await store.use_nonce("key", "n1", 60)
        assert not await other.use_nonce("key", "n1", 60)
        assert await other.use_nonce("key", "n2", 60)
        waits = [await (store if n % 2 else other).take_token("alice", "submit", 10, 10) for n in range(12)]
        assert waits[:10] == [0.0] * 10 and all(w > 0 for w in waits[10:])
        assert await store.take_token("bob", "submit", 10, 10) == 0.0  # per principal
    finally:
        await other.close()
