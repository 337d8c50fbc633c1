"""The job service and the worker wired as the server wires them, on the in-memory store,
local storage and real ffmpeg, without gRPC: sync and async jobs through the one runner,
Scheduler.drain() instead of sleeps, cancellation, and a service fault retried."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from mps_snapshot_server.config import Settings
from mps_snapshot_server.domain.errors import ResourceContentBad, TransientError
from mps_snapshot_server.domain.models import (
    FrameType,
    JobEventKind,
    JobState,
    ObjectRef,
    PipelineState,
    SnapshotConfig,
    SnapshotRequest,
)
from mps_snapshot_server.media.engine import MediaEngine
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.service.jobs import JobService
from mps_snapshot_server.service.pipelines import PipelineChanges, PipelineRegistry
from mps_snapshot_server.storage.local import LocalStore
from mps_snapshot_server.storage.router import Route, StorageRouter
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.store.memory import MemoryStore
from mps_snapshot_server.worker.notify import HttpNotifier, NotificationService
from mps_snapshot_server.worker.runner import JobRunner
from mps_snapshot_server.worker.scheduler import Scheduler
from tests.conftest import put
from tests.helpers.media import Video, index_at, mean_diff, reference_frame


@dataclasses.dataclass
class Wired:
    jobs: JobService
    scheduler: Scheduler
    runner: JobRunner
    local: LocalStore
    data: Path
    pipelines: PipelineRegistry


@pytest_asyncio.fixture
async def wired(tmp_path: Path, videos: dict[str, Video]) -> AsyncIterator[Wired]:
    s = Settings(data_dir=tmp_path / "data", max_ffmpeg_processes=2, fault_retry_backoff_s=0.05)
    store = MemoryStore()
    ledger = JobLedger(store)
    local = LocalStore(s.data_dir)
    router = StorageRouter([Route("*", local)])
    telemetry = Telemetry()
    engine = MediaEngine.from_settings(s, telemetry)
    engine.sweep()  # makes the work folder, as the server does at start-up
    engine.start_warm()
    pipelines = PipelineRegistry(store, default_max_jobs=2, default_capacity=10)
    await pipelines.load()
    notifications = NotificationService(
        ledger=ledger, registry=pipelines, notifier=HttpNotifier(), metrics=telemetry.metrics, attempts=1, backoff_s=0
    )
    runner = JobRunner(
        ledger=ledger,
        engine=engine,
        router=router,
        ffmpeg_timeout_s=s.ffmpeg_timeout_s,
        sync_timeout_s=s.sync_timeout_s,
        max_sprite_pixels=s.max_sprite_pixels,
        notify_wanted=notifications.wanted,
    )
    scheduler = Scheduler(
        ledger=ledger,
        runner=runner,
        registry=pipelines,
        notifications=notifications,
        tracing=telemetry.tracing,
        max_attempts=3,
        retry_backoff_s=s.fault_retry_backoff_s,
    )
    pipelines.listeners.append(scheduler.on_pipeline_change)
    jobs = JobService(
        ledger=ledger,
        runner=runner,
        queue=scheduler,
        engine=engine,
        pipelines=pipelines,
        sync_timeout_s=s.sync_timeout_s,
        max_sprite_pixels=s.max_sprite_pixels,
        telemetry=telemetry,
    )
    await scheduler.start()
    put(s.data_dir, "videos", "main.mp4", videos["main"].path)
    try:
        yield Wired(jobs, scheduler, runner, local, s.data_dir, pipelines)
    finally:
        await scheduler.stop(0)
        await engine.close()


def _request(**config: object) -> SnapshotRequest:
    return SnapshotRequest(
        input=ObjectRef(bucket="videos", object="main.mp4"),
        config=SnapshotConfig(output_file=ObjectRef(bucket="shots", object="a/{Count}.jpg"), **config),  # type: ignore[arg-type]
    )


async def test_a_sync_snapshot_runs_inline_and_is_committed_once(wired: Wired, videos: dict[str, Video]) -> None:
    watched: list[JobEventKind] = []
    original = wired.jobs.ledger.save

    async def counting_save(job, kind=JobEventKind.STATE):  # type: ignore[no-untyped-def]
        watched.append(kind)
        return await original(job, kind)

    wired.jobs.ledger.save = counting_save  # type: ignore[method-assign]
    job = await wired.jobs.submit(_request(time=3000), request_id="r1", time_remaining=None)
    assert (job.state, job.attempts, job.count, job.is_async) == (JobState.SUCCESS, 1, 1, False)
    assert watched == [JobEventKind.STATE]  # one commit: the final state
    image = Image.open(wired.data / "shots" / "a" / "00001.jpg").convert("RGB")
    main = videos["main"]
    assert mean_diff(image, reference_frame(main.path, index_at(main.path, 3.0))) < 3.0
    assert job.images[0].time_ms == pytest.approx(3000.0, abs=1)
    assert await wired.jobs.get(job.id) == job


async def test_a_failed_sync_snapshot_is_recorded_and_raised(wired: Wired) -> None:
    with pytest.raises(ResourceContentBad, match="past the end") as caught:
        await wired.jobs.submit(_request(time=60_000), request_id="r2", time_remaining=None)
    failed = await wired.jobs.get(caught.value.job_id)
    assert (failed.state, failed.code, failed.images) == (JobState.FAIL, "InvalidParameter.ResourceContentBad", ())
    assert not any(wired.data.glob("shots/**/*.jpg"))


async def test_async_jobs_run_on_the_same_runner_and_drain(wired: Wired) -> None:
    submitted = [
        await wired.jobs.submit(_request(time=1000, interval=2, num=3), request_id=f"a{i}", time_remaining=None)
        for i in range(3)
    ]
    assert all(j.state is JobState.SUBMITTED for j in submitted)
    await wired.scheduler.drain(60)
    for job in submitted:
        done = await wired.jobs.get(job.id)
        assert (done.state, done.count, done.attempts) == (JobState.SUCCESS, 3, 1)
        assert [i.requested_time_ms for i in done.images] == [1000.0, 3000.0, 5000.0]
    intra = await wired.jobs.submit(
        _request(time=1000, interval=4, num=2, frame_type=FrameType.INTRA.value), request_id="k", time_remaining=None
    )
    await wired.scheduler.drain(60)
    done = await wired.jobs.get(intra.id)
    # Keyframes every 2 s (GOP 50 at 25 fps): the nearest to 1 s and 5 s.
    assert done.state is JobState.SUCCESS and [i.time_ms for i in done.images] == [0.0, 4000.0]


async def test_a_queued_job_is_cancelled_before_it_runs(wired: Wired) -> None:
    default = wired.pipelines.default
    await wired.pipelines.update(default.id, PipelineChanges(default.name, PipelineState.PAUSED.value))
    job = await wired.jobs.submit(_request(time=0, num=2, interval=1), request_id="c", time_remaining=None)
    cancelled = await wired.jobs.cancel(job.id)
    assert (cancelled.state, cancelled.count) == (JobState.CANCELLED, 0)
    await wired.pipelines.update(default.id, PipelineChanges(default.name, PipelineState.ACTIVE.value))
    await wired.scheduler.drain(30)
    assert (await wired.jobs.get(job.id)).state is JobState.CANCELLED


async def test_a_service_fault_is_retried_and_the_job_then_succeeds(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage fails once while the job runs: the attempt ends Submitted with the fault's
    code, the job runs again after the backoff, and ends Success on its second attempt."""
    real_head = LocalStore.head
    calls = {"n": 0}

    async def flaky_head(self: LocalStore, bucket: str, key: str):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the submit's HEAD passes; the run's first one fails
            raise TransientError("storage unreachable (test)")
        return await real_head(self, bucket, key)

    monkeypatch.setattr(LocalStore, "head", flaky_head)
    seen: list[tuple[JobState, str]] = []
    job = await wired.jobs.submit(_request(time=0, num=2, interval=1), request_id="f", time_remaining=None)
    async for _ in _watch_until_done(wired, job.id, seen):
        pass
    final = await wired.jobs.get(job.id)
    assert (final.state, final.attempts, final.count) == (JobState.SUCCESS, 2, 2)
    assert (JobState.SUBMITTED, "TransientNetWorkError") in seen


async def _watch_until_done(  # type: ignore[no-untyped-def]
    wired: Wired, job_id: str, seen: list[tuple[JobState, str]]
):
    async for kind, job in wired.jobs.watch(job_id):
        seen.append((job.state, job.code))
        yield kind, job
