"""ClientToken: retries of one Submit create one job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from mps_snapshot_client import MpsApiError, SnapshotClient
from tests.conftest import put
from tests.helpers.media import Video
from tests.integration.test_async_jobs import submit_request


async def test_fifty_concurrent_identical_submits_create_one_job(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["tiny"].path)
    before = len((await client.query(page_size=300)).snapshot_job_list)
    request = submit_request(bucket, "in.mp4", interval=1, num=2)
    request.client_token = "retry-me-0001"
    responses = await asyncio.gather(*(client.submit(request) for _ in range(50)))
    ids = {r.snapshot_job.id for r in responses}
    assert len(ids) == 1
    assert len((await client.query(page_size=300)).snapshot_job_list) == before + 1
    assert (await client.wait(ids.pop(), timeout=60)).state == "Success"
    later = await client.submit(request)  # after it finished: still the same job
    assert later.snapshot_job.id in {r.snapshot_job.id for r in responses}
    assert later.snapshot_job.state == "Success"


async def test_same_token_different_request_is_refused(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["tiny"].path)
    first = submit_request(bucket, "in.mp4", out="a.jpg", num=1)
    first.client_token = "token-two"
    await client.submit(first)
    second = submit_request(bucket, "in.mp4", out="b.jpg", num=1)
    second.client_token = "token-two"
    with pytest.raises(MpsApiError) as caught:
        await client.submit(second)
    assert caught.value.status == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.code == "IdempotentParameterMismatch"
    third = submit_request(bucket, "in.mp4", num=1)
    third.client_token = "x" * 65
    with pytest.raises(MpsApiError) as caught:
        await client.submit(third)
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT


async def test_sync_retry_returns_the_first_snapshot(
    client: SnapshotClient, app: object, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["tiny"].path)
    request = submit_request(bucket, "in.mp4", out="once.jpg", time=500)
    request.client_token = "sync-once"
    first = (await client.submit(request)).snapshot_job
    engine = app.engine  # type: ignore[attr-defined]
    # The session's server is shared: wait until no other test's job is using ffmpeg, so a
    # process started now could only be this retry's.
    quiet_since = time.monotonic()
    deadline = quiet_since + 60
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
        if engine.running or engine.waiting:
            quiet_since = time.monotonic()
        await asyncio.sleep(0.05)
    started = engine.started
    again = (await client.submit(request)).snapshot_job
    assert again == first and engine.started == started  # no ffmpeg ran
