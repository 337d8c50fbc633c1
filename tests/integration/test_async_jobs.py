"""Asynchronous jobs end to end: planning rules on real video, pipelines, watch streams,
cancellation, the process cap, and notifications."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from PIL import Image, ImageStat

from mps_snapshot_client import IncorrectStateError, MpsApiError, SnapshotClient, ThrottlingError
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from tests.conftest import put
from tests.helpers.media import Video, closest_frame, index_at

EventKind = sps.SnapshotJobEvent


def submit_request(
    bucket: str, key: str, out: str = "seq/{Count}.jpg", pipeline_id: str = "", **config: Any
) -> sps.SubmitSnapshotJobRequest:
    return sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(bucket=bucket, location="oss-cn-hangzhou", object=key),
        snapshot_config=res.SnapshotConfig(
            output_file=res.OSSFile(bucket=bucket, location="oss-cn-hangzhou", object=out), **config
        ),
        pipeline_id=pipeline_id,
        user_data="job-1",
    )


async def events_until_done(client: SnapshotClient, job_id: str, timeout: float = 60) -> list[sps.SnapshotJobEvent]:
    return [e async for e in client.watch(job_id, timeout=timeout)]


def live_ffmpeg(marker: str) -> list[int]:
    """PIDs of ffmpeg/ffprobe processes whose command line mentions ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            state != "Z"
            and cmd
            and os.path.basename(cmd[0]) in (b"ffmpeg", b"ffprobe")
            and marker.encode() in b" ".join(cmd)
        ):
            pids.append(int(entry))
    return pids


async def test_interval_sequence_names_counts_and_frames(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    video = videos["main"]
    put(data_dir, bucket, "in.mp4", video.path)
    response = await client.submit(submit_request(bucket, "in.mp4", time=1000, interval=2, num=10))
    job = response.snapshot_job
    assert job.state == "Submitted" and job.count == 0
    events = await events_until_done(client, job.id)
    final = events[-1].snapshot_job
    assert final.state == "Success", final.message
    assert final.count == 5  # 1, 3, 5, 7, 9 s; the rest is past the 10 s end
    assert [i.object for i in final.images] == [f"seq/{n:05d}.jpg" for n in range(1, 6)]
    assert sorted(p.name for p in (data_dir / bucket / "seq").iterdir()) == [f"{n:05d}.jpg" for n in range(1, 6)]
    for image, seconds in zip(final.images, [1, 3, 5, 7, 9], strict=True):
        assert image.time == pytest.approx(seconds * 1000, abs=0.05)
        img = Image.open(data_dir / bucket / image.object)
        expected = seconds * 25
        assert closest_frame(img, video.path, [expected - 1, expected, expected + 1])[0] == expected
    kinds = [e.kind for e in events]
    assert kinds[0] == EventKind.KIND_INITIAL
    assert kinds.count(EventKind.KIND_IMAGE_WRITTEN) == 5
    states = [e.snapshot_job.state for e in events]
    assert states == sorted(states, key=["Submitted", "Snapshoting", "Success"].index)
    done = [e.progress.images_done for e in events]
    assert done == sorted(done) and done[-1] == 5
    assert events[-1].progress.images_planned == 5
    assert final.attempts == 1 and final.user_data == "job-1"


async def test_interval_zero_spreads_num_over_the_video(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    job = (await client.submit(submit_request(bucket, "in.mp4", interval=0, num=4))).snapshot_job
    final = (await events_until_done(client, job.id))[-1].snapshot_job
    assert [i.time for i in final.images] == pytest.approx(
        [0, 2480, 5000, 7480], abs=0.05
    )  # frames shown at 0/2.5/5/7.5 s


async def test_num_one_is_an_async_single_snapshot(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    job = (
        await client.submit(submit_request(bucket, "in.mp4", out="one.jpg", time=4000, num=1, interval=3))
    ).snapshot_job
    assert job.state == "Submitted"
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success" and final.count == 1 and final.images[0].object == "one.jpg"


async def test_time_array_any_order_with_duplicates(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    video = videos["odd_rate"]
    put(data_dir, bucket, "in.mp4", video.path)
    points = [5000, 1000.5, 1000.5, 3000.25]
    job = (
        await client.submit(
            submit_request(
                bucket, "in.mp4", out="{SnapshotTime}-{Count}.jpg", time_array=res.TimeArray(time_point_list=points)
            )
        )
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success" and final.count == 4
    assert [i.requested_time for i in final.images] == [1000.5, 1000.5, 3000.25, 5000]
    assert [i.object for i in final.images] == ["1000-00001.jpg", "1000-00002.jpg", "3000-00003.jpg", "5000-00004.jpg"]
    for image in final.images:
        expected = index_at(video.path, image.requested_time / 1000)
        img = Image.open(data_dir / bucket / image.object)
        assert closest_frame(img, video.path, [expected - 1, expected, expected + 1])[0] == expected


async def test_time_array_past_the_end_fails_the_job(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    job = (
        await client.submit(submit_request(bucket, "in.mp4", time_array=res.TimeArray(time_point_list=[1000, 60000])))
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Fail" and final.code == "InvalidParameter.TimeArray"
    assert "TimeArray greater than video duration" in final.message
    assert sorted(p.name for p in (data_dir / bucket).iterdir()) == ["in.mp4"]


async def test_intra_sequence_skips_points_without_a_near_keyframe(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)  # keyframes every 2 s
    job = (await client.submit(submit_request(bucket, "in.mp4", interval=1, num=10, frame_type="intra"))).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success"
    # Points at odd seconds are 1 s from the nearest keyframe, more than half the 1 s step.
    assert [i.time for i in final.images] == pytest.approx([0, 2000, 4000, 6000, 8000], abs=0.05)
    assert [i.requested_time for i in final.images] == [0, 2000, 4000, 6000, 8000]
    assert [i.object for i in final.images] == [f"seq/{n:05d}.jpg" for n in range(1, 6)]


async def test_black_frames_are_skipped_for_the_first_image(
    client: SnapshotClient, data_dir: Path, bucket: str, black_start: Path
) -> None:
    put(data_dir, bucket, "in.mp4", black_start)
    job = (await client.submit(submit_request(bucket, "in.mp4", interval=1, num=3, black_level=90))).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success", final.message
    first = Image.open(data_dir / bucket / final.images[0].object).convert("L")
    assert final.images[0].time == pytest.approx(2000, abs=0.05)
    assert ImageStat.Stat(first).mean[0] > 40
    second = Image.open(data_dir / bucket / final.images[1].object).convert("L")
    assert ImageStat.Stat(second).mean[0] < 25  # only the first image is filtered, as MPS does
    plain = (
        await client.submit(submit_request(bucket, "in.mp4", out="plain/{Count}.jpg", interval=1, num=2))
    ).snapshot_job
    assert (await client.wait(plain.id, timeout=60)).images[0].time == 0


async def test_pipelines_pause_resume_and_full_queue(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["tiny"].path)
    pipeline = await client.add_pipeline("paused-one", max_concurrent_jobs=1, queue_capacity=2)
    assert pipeline.state == "Active" and pipeline.queue_capacity == 2
    await client.update_pipeline(pipeline.id, name="paused-one", state="Paused")
    ids = [
        (
            await client.submit(
                submit_request(bucket, "in.mp4", out=f"p{i}/{{Count}}.jpg", pipeline_id=pipeline.id, num=1)
            )
        ).snapshot_job.id
        for i in range(2)
    ]
    with pytest.raises(ThrottlingError) as caught:
        await client.submit(submit_request(bucket, "in.mp4", out="p9/{Count}.jpg", pipeline_id=pipeline.id, num=1))
    assert caught.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.code == "Throttling.PipelineQueueFull"
    assert caught.value.retry_delay is not None and caught.value.retry_delay > 0
    listed = await client.query(pipeline_id=pipeline.id)
    assert sorted(j.id for j in listed.snapshot_job_list) == sorted(ids)  # the refused one left no trace
    await asyncio.sleep(1.0)
    assert {j.state for j in (await client.query(ids)).snapshot_job_list} == {"Submitted"}
    with pytest.raises(IncorrectStateError):
        await client.delete_pipeline(pipeline.id)  # unfinished jobs
    await client.update_pipeline(pipeline.id, name="paused-one", state="Active")
    for job_id in ids:
        assert (await client.wait(job_id, timeout=60)).state == "Success"
    await client.delete_pipeline(pipeline.id)
    assert list((await client.query_pipelines([pipeline.id])).non_exist_pids) == [pipeline.id]


async def test_pipeline_service(client: SnapshotClient, app: App) -> None:
    created = [await client.add_pipeline(f"search-{i}") for i in range(3)]
    await client.update_pipeline(created[1].id, name="renamed", state="Paused")
    found = await client.query_pipelines([created[1].id, "0" * 32])
    assert [p.name for p in found.pipeline_list] == ["renamed"] and list(found.non_exist_pids) == ["0" * 32]
    paused = await client.search_pipelines("Paused", page_size=100)
    assert created[1].id in [p.id for p in paused.pipeline_list]
    everything = await client.search_pipelines("All", page_number=1, page_size=2)
    assert len(everything.pipeline_list) == 2 and everything.total_count >= 4
    with pytest.raises(MpsApiError) as caught:
        await client.update_pipeline(created[0].id, name="x", state="Sleeping")
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(MpsApiError) as caught:
        await client.delete_pipeline(app.pipelines.default.id)
    assert caught.value.status == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(MpsApiError) as caught:
        await client.query_pipelines([])
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    for p in created:
        await client.delete_pipeline(p.id)


async def test_several_watchers_and_one_leaving(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["hd"].path)
    job = (await client.submit(submit_request(bucket, "in.mp4", interval=1, num=4))).snapshot_job

    async def leaver() -> None:
        async for _ in client.watch(job.id):
            return  # leaves after the first event

    results = await asyncio.gather(events_until_done(client, job.id), events_until_done(client, job.id), leaver())
    a, b = results[0], results[1]
    assert a[-1].snapshot_job.state == b[-1].snapshot_job.state == "Success"
    assert [e.progress.images_done for e in a if e.kind == EventKind.KIND_IMAGE_WRITTEN] == [1, 2, 3, 4]
    assert [e.progress.images_done for e in b if e.kind == EventKind.KIND_IMAGE_WRITTEN] == [1, 2, 3, 4]
    late = await events_until_done(client, job.id)
    assert len(late) == 1 and late[0].kind == EventKind.KIND_INITIAL and late[0].snapshot_job.count == 4


async def test_cancel_a_running_job(
    client: SnapshotClient, app: App, data_dir: Path, bucket: str, slow_video: Video
) -> None:
    put(data_dir, bucket, "slow.mp4", slow_video.path)
    job = (await client.submit(submit_request(bucket, "slow.mp4", time=1000, interval=1, num=25))).snapshot_job
    async for event in client.watch(job.id, timeout=60):
        if event.kind == EventKind.KIND_IMAGE_WRITTEN:
            break
    cancelled = await client.cancel(job.id)
    assert cancelled.state == "Cancelled" and cancelled.count == 0
    await asyncio.sleep(0.2)
    assert live_ffmpeg(bucket) == []
    assert sorted(p.name for p in (data_dir / bucket).iterdir()) == ["slow.mp4"]  # outputs taken back
    assert not any(p.name.startswith(job.id) for p in app.engine.tmp_dir.iterdir())
    with pytest.raises(IncorrectStateError):
        await client.cancel(job.id)


async def test_cancel_a_queued_job(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["tiny"].path)
    pipeline = await client.add_pipeline("to-cancel", max_concurrent_jobs=1)
    await client.update_pipeline(pipeline.id, name="to-cancel", state="Paused")
    job = (
        await client.submit(submit_request(bucket, "in.mp4", pipeline_id=pipeline.id, num=1, out="c.jpg"))
    ).snapshot_job
    assert (await client.cancel(job.id)).state == "Cancelled"
    await client.update_pipeline(pipeline.id, name="to-cancel", state="Active")
    await asyncio.sleep(0.5)
    assert (await client.get(job.id)).state == "Cancelled"
    assert not (data_dir / bucket / "c.jpg").exists()


async def test_process_cap_holds_under_twenty_queued_jobs(tmp_path: Path, videos: dict[str, Video]) -> None:
    settings = load(
        env={}, listen="127.0.0.1:0", data_dir=tmp_path, max_ffmpeg_processes=2, pipeline_max_concurrent_jobs=6
    )
    put(tmp_path, "cap", "in.mp4", videos["hd"].path)
    app = App(settings)
    await app.start()
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(live_ffmpeg(str(tmp_path))))
            await asyncio.sleep(0.01)

    try:
        async with SnapshotClient(f"127.0.0.1:{app.port}") as c:
            sampler = asyncio.create_task(sample())
            ids = [
                (
                    await c.submit(submit_request("cap", "in.mp4", out=f"j{i}/{{Count}}.jpg", interval=1, num=3))
                ).snapshot_job.id
                for i in range(20)
            ]
            finals = await asyncio.gather(*(c.wait(i, timeout=120) for i in ids))
            stop.set()
            await sampler
        assert {f.state for f in finals} == {"Success"}
        assert all(f.count == 3 for f in finals)
        assert app.engine.peak_running == 2
        assert 1 <= peak <= 2
    finally:
        await app.stop(0)


class Receiver:
    """An HTTP endpoint the tests run, failing the first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.requests: list[tuple[dict[str, Any], str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((body, request.headers.get("X-Mps-Message-Id", "")))
        if len(self.requests) <= self.fail:
            return web.Response(status=500)
        return web.Response(status=204)


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def make(fail: int = 0) -> Receiver:
        receiver = Receiver(fail)
        application = web.Application()
        application.router.add_post("/mns", receiver.handle)
        runner = web.AppRunner(application)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/mns"
        runners.append(runner)
        return receiver

    yield make
    for runner in runners:
        await runner.cleanup()


async def wait_for(predicate: Any, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the server over gRPC
            await asyncio.sleep(0.05)


async def test_notification_after_success_with_retries(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], receiver_factory: Any
) -> None:
    receiver = await receiver_factory(fail=2)
    pipeline = await client.add_pipeline(
        "notified", notify_config=res.NotifyConfig(http_url=receiver.url, topic="mts-topic-1")
    )
    put(data_dir, bucket, "a/in.mp4", videos["main"].path)
    job = (
        await client.submit(
            submit_request(
                bucket,
                "a%2Fin.mp4",
                out="{ObjectPrefix}{FileName}-{Count}.jpg",
                pipeline_id=pipeline.id,
                time_array=res.TimeArray(time_point_list=[3000, 1000]),
            )
        )
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success"

    async def delivered() -> bool:
        return (await client.get(job.id)).mns_message_result.message_id != ""

    await wait_for(delivered)
    assert len(receiver.requests) == 3  # failed twice, then acknowledged
    bodies = [b for b, _ in receiver.requests]
    assert len({mid for _, mid in receiver.requests}) == 1 and bodies[0] == bodies[2]  # same message each time
    body = bodies[-1]
    assert body["JobId"] == body["jobId"] == job.id
    assert body["Type"] == body["type"] == "Snapshot"
    assert body["State"] == body["state"] == "Success"
    assert body["UserData"] == "job-1" and body["RequestId"] == job.request_id
    assert body["Count"] == 2 and body["TimeArray"] == [1000.0, 3000.0]
    assert body["UrlPattern"] == f"oss://{bucket}/a/in-{{Count}}.jpg"
    assert body["LastUrl"] == f"oss://{bucket}/a/in-00002.jpg"
    after = await client.get(job.id)
    assert after.mns_message_result.message_id == body["MessageId"] == receiver.requests[0][1]
    assert after.state == "Success" and after.count == 2
    await client.delete_pipeline(pipeline.id)


async def test_notification_of_failure_and_a_dead_endpoint(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], receiver_factory: Any
) -> None:
    receiver = await receiver_factory(fail=1000)
    pipeline = await client.add_pipeline("dead-end", notify_config=res.NotifyConfig(http_url=receiver.url))
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    job = (
        await client.submit(
            submit_request(bucket, "in.mp4", pipeline_id=pipeline.id, time_array=res.TimeArray(time_point_list=[99000]))
        )
    ).snapshot_job
    assert (await client.wait(job.id, timeout=60)).state == "Fail"

    async def gave_up() -> bool:
        return (await client.get(job.id)).mns_message_result.error_code != ""

    await wait_for(gave_up)
    after = await client.get(job.id)
    assert after.state == "Fail" and after.code == "InvalidParameter.TimeArray"  # unchanged by delivery
    assert after.mns_message_result.error_code == "HttpStatus"
    assert len(receiver.requests) == 6
    body = receiver.requests[0][0]
    assert body["code"] == "InvalidParameter.TimeArray" and "duration" in body["msg"] and body["Msg"] == body["msg"]
    assert json.dumps(body)  # plain JSON
    await client.delete_pipeline(pipeline.id)


async def test_query_pages_newest_first(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["tiny"].path)
    pipeline = await client.add_pipeline("paging")
    ids = []
    for i in range(5):
        ids.append(
            (
                await client.submit(submit_request(bucket, "in.mp4", out=f"q{i}.jpg", pipeline_id=pipeline.id, num=1))
            ).snapshot_job.id
        )
        await asyncio.sleep(0.01)
    for job_id in ids:
        await client.wait(job_id, timeout=60)
    seen: list[str] = []
    token = ""
    while True:
        page = await client.query(pipeline_id=pipeline.id, page_size=2, page_token=token)
        assert len(page.snapshot_job_list) <= 2
        seen += [j.id for j in page.snapshot_job_list]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    assert [j.id async for j in client.iter_jobs(pipeline_id=pipeline.id, page_size=3)] == list(reversed(ids))
    assert len((await client.query(pipeline_id=pipeline.id, state="Success")).snapshot_job_list) == 5
    assert (await client.query(pipeline_id=pipeline.id, state="Fail")).snapshot_job_list == []
    await client.delete_pipeline(pipeline.id)
