"""A synchronous snapshot is not starved by asynchronous work holding every ffmpeg slot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_server.app import App
from tests.conftest import put
from tests.helpers.media import Video
from tests.integration.test_async_jobs import submit_request


async def test_sync_snapshot_succeeds_while_async_batches_hold_every_slot(
    app: App, client: SnapshotClient, data_dir: Path, bucket: str, heavy: Path, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "heavy.mp4", heavy)
    put(data_dir, bucket, "small.mp4", videos["main"].path)
    # 8 points at 5.9 s: seek batches of 4 inputs, each decoding the whole GOP (seconds per
    # batch), more batches queued than there are slots.
    jobs = []
    for n in range(2):
        points = res.TimeArray(time_point_list=[5900] * 8)
        request = submit_request(bucket, "heavy.mp4", out=f"busy{n}/{{Count}}.jpg", time_array=points)
        jobs.append((await client.submit(request)).snapshot_job.id)
    engine = app.engine
    deadline = time.monotonic() + 30
    while not (engine.running >= engine.max_processes and engine.waiting) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert engine.running >= engine.max_processes and engine.waiting, "the async jobs never filled the slots"
    try:
        started = time.monotonic()
        job = await client.snapshot(
            bucket=bucket, object="small.mp4", output_bucket=bucket, output_object="sync.jpg", time_ms=4000
        )
        took = time.monotonic() - started
        assert job.state == "Success" and job.images[0].object == "sync.jpg"
        # Well inside the 5-s limit although every shared slot was busy with long batches
        # and more were queued (without the priority it waits 3-4 s, or times out).
        assert engine.running >= engine.max_processes  # the async work was still going
        assert took < 2.5, f"the sync snapshot took {took:.2f} s"
    finally:
        for job_id in jobs:
            try:
                await client.cancel(job_id)
            except MpsApiError:  # it may have ended already
                pass
    for job_id in jobs:
        final = await client.wait(job_id, timeout=60)
        assert final.state in ("Cancelled", "Success")
