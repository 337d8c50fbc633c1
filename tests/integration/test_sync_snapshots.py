"""Synchronous snapshots end to end: real server, real ffmpeg, pixels checked against
frames ffmpeg decodes exactly."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from PIL import Image

from mps_snapshot_client import ResourceContentBadError, SnapshotClient, SnapshotTimeOutError
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from tests.conftest import put
from tests.helpers.media import Video, closest_frame, index_at, mean_diff, reference_frame


def request(bucket: str, key: str, out: str, **config: object) -> sps.SubmitSnapshotJobRequest:
    return sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(bucket=bucket, location="oss-cn-hangzhou", object=key),
        snapshot_config=res.SnapshotConfig(
            output_file=res.OSSFile(bucket=bucket, location="oss-cn-hangzhou", object=out), **config
        ),  # type: ignore[arg-type]
    )


def open_output(data_dir: Path, bucket: str, job: res.SnapshotJob) -> Image.Image:
    assert len(job.images) == 1
    path = data_dir / bucket / job.images[0].object
    img = Image.open(path)
    assert img.format == "JPEG"
    return img


@pytest.mark.parametrize("time_ms", [0, 40, 1000, 1030, 1039, 4980, 5020, 7999, 9960, 9999])
async def test_exact_frame_is_the_one_shown_at_the_time(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], time_ms: int
) -> None:
    video = videos["main"]
    put(data_dir, bucket, "in/main.mp4", video.path)
    response = await client.submit(request(bucket, "in%2Fmain.mp4", "out/{Count}.jpg", time=time_ms))
    job = response.snapshot_job
    assert job.state == "Success" and job.count == 1
    img = open_output(data_dir, bucket, job)
    assert img.size == (640, 360)
    expected = video.frame_index(time_ms / 1000)
    best, diffs = closest_frame(img, video.path, [expected - 1, expected, expected + 1])
    assert best == expected, diffs
    assert diffs[expected] < 3.0, diffs
    assert job.images[0].time == pytest.approx(expected * 40, abs=0.05)
    assert job.images[0].requested_time == time_ms


@pytest.mark.parametrize("time_ms", [0, 1001, 2500, 4171, 5900])
async def test_exact_frame_at_an_odd_frame_rate(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], time_ms: int
) -> None:
    video = videos["odd_rate"]  # 23.976 fps: frames every 41.708 ms
    put(data_dir, bucket, "odd.mp4", video.path)
    job = (await client.submit(request(bucket, "odd.mp4", "o.jpg", time=time_ms))).snapshot_job
    img = open_output(data_dir, bucket, job)
    expected = video.frame_index(time_ms / 1000)
    best, diffs = closest_frame(img, video.path, [expected - 1, expected, expected + 1])
    assert best == expected, diffs
    assert job.images[0].time == pytest.approx(float(expected / video.rate) * 1000, abs=0.05)


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("main", {}, (640, 360)),
        ("main", {"width": 320}, (320, 180)),
        ("main", {"height": 90}, (160, 90)),
        ("main", {"width": 100, "height": 100}, (100, 100)),
        ("hd", {"width": 8}, (8, 5)),
        ("hd", {"height": 4096}, (7282, 4096)),
        ("tiny", {}, (176, 144)),
        ("anamorphic", {}, (640, 360)),
        ("anamorphic", {"width": 320}, (320, 180)),
    ],
)
async def test_output_size_follows_the_display_aspect_ratio(
    client: SnapshotClient,
    data_dir: Path,
    bucket: str,
    videos: dict[str, Video],
    name: str,
    size: dict[str, int],
    expected: tuple[int, int],
) -> None:
    put(data_dir, bucket, "v.mp4", videos[name].path)
    job = (await client.submit(request(bucket, "v.mp4", "s.jpg", time=1000, **size))).snapshot_job
    assert open_output(data_dir, bucket, job).size == expected
    assert (job.images[0].width, job.images[0].height) == expected


async def test_rotation_metadata_is_honoured(
    client: SnapshotClient, data_dir: Path, bucket: str, rotated: Path, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "phone.mp4", rotated)
    job = (await client.submit(request(bucket, "phone.mp4", "p.jpg", time=1000))).snapshot_job
    img = open_output(data_dir, bucket, job)
    assert img.size == (144, 176)  # portrait, as a player shows it
    # The display matrix turns the picture a quarter turn counter-clockwise.
    frame = reference_frame(videos["tiny"].path, 15)
    assert mean_diff(img, frame.transpose(Image.Transpose.ROTATE_90)) < 8.0
    assert mean_diff(img, frame.transpose(Image.Transpose.ROTATE_270)) > 50.0


async def test_file_with_audio(client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    video = videos["audio"]
    put(data_dir, bucket, "talk.mkv", video.path)
    job = (await client.submit(request(bucket, "talk.mkv", "t.jpg", time=2000))).snapshot_job
    img = open_output(data_dir, bucket, job)
    assert img.size == (320, 240)
    # x264's delay puts the first video frame at 23 ms in Matroska: the frame shown at
    # 2000 ms is the one starting at 1990 ms.
    expected = index_at(video.path, 2.0)
    assert expected == 59
    assert closest_frame(img, video.path, [58, 59, 60])[0] == expected
    assert job.images[0].time == pytest.approx(1990, abs=0.05)


@pytest.mark.parametrize(("time_ms", "keyframe_s"), [(2900, 2.0), (3100, 4.0), (0, 0.0), (9000, 8.0), (60_000, 8.0)])
async def test_intra_takes_the_nearest_keyframe(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], time_ms: int, keyframe_s: float
) -> None:
    video = videos["main"]  # keyframes every 2 s
    put(data_dir, bucket, "k.mp4", video.path)
    job = (await client.submit(request(bucket, "k.mp4", "k.jpg", time=time_ms, frame_type="intra"))).snapshot_job
    assert job.state == "Success"
    assert job.images[0].time == pytest.approx(keyframe_s * 1000, abs=0.05)
    index = int(keyframe_s * 25)
    best, diffs = closest_frame(open_output(data_dir, bucket, job), video.path, [index - 1, index, index + 1])
    assert best == index, diffs


async def test_normal_past_the_end_fails_and_names_the_duration(
    client: SnapshotClient, app: App, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "short.mp4", videos["main"].path)
    with pytest.raises(ResourceContentBadError) as caught:
        await client.submit(request(bucket, "short.mp4", "late.jpg", time=10_000))
    err = caught.value
    assert err.status == grpc.StatusCode.INVALID_ARGUMENT
    assert err.code == "InvalidParameter.ResourceContentBad"
    assert "10000 ms long" in err.message
    assert err.job_id and err.request_id
    job = await client.get(err.job_id)
    assert job.state == "Fail" and job.code == "InvalidParameter.ResourceContentBad"
    assert not (data_dir / bucket / "late.jpg").exists()


async def test_placeholders_and_url_encoded_keys(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "a/b/clip one.mp4", videos["tiny"].path)
    out = "%7BObjectPrefix%7D%7BFileName%7D-%7BExtName%7D-%7BSnapshotTime%7D-%7BCount%7D.jpg"
    job = (await client.submit(request(bucket, "a%2Fb%2Fclip%20one.mp4", out, time=1500))).snapshot_job
    assert job.images[0].object == "a/b/clip one-mp4-1500-00001.jpg"
    assert (data_dir / bucket / "a/b/clip one-mp4-1500-00001.jpg").is_file()
    assert job.snapshot_config.output_file.object == out  # echoed as sent


async def test_response_echoes_the_request_and_is_queryable(
    client: SnapshotClient, app: App, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "e.mp4", videos["tiny"].path)
    before = datetime.now(UTC).replace(microsecond=0)
    req = request(bucket, "e.mp4", "e.jpg", time=500, width=88)
    req.user_data = "testid-001"
    response = await client.submit(req)
    job = response.snapshot_job
    assert re.fullmatch(r"[0-9a-f]{32}", job.id)
    assert re.fullmatch(r"[0-9A-F-]{36}", response.request_id)
    assert job.request_id == response.request_id
    assert job.state == "Success" and job.count == 1 and job.code == "" and job.message == ""
    assert job.user_data == "testid-001"
    assert job.pipeline_id == app.pipelines.default.id
    assert job.input.bucket == bucket and job.input.object == "e.mp4" and job.input.location == "oss-cn-hangzhou"
    assert job.snapshot_config.time == 500 and job.snapshot_config.width == 88
    assert not job.snapshot_config.HasField("height")
    created = job.creation_time.ToDatetime(tzinfo=UTC)
    assert before <= created <= datetime.now(UTC) + timedelta(seconds=1)
    from google.protobuf import json_format

    doc = json.loads(json_format.MessageToJson(response))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["SnapshotJob"]["CreationTime"])
    queried = await client.query([job.id, "0" * 32])
    assert [j.id for j in queried.snapshot_job_list] == [job.id]
    assert list(queried.non_exist_snapshot_job_ids) == ["0" * 32]
    assert queried.snapshot_job_list[0] == job


async def test_jobs_survive_a_restart(tmp_path: Path, videos: dict[str, Video]) -> None:
    settings = load(env={}, listen="127.0.0.1:0", data_dir=tmp_path)
    put(tmp_path, "keep", "v.mp4", videos["tiny"].path)
    first = App(settings)
    await first.start()
    async with SnapshotClient(f"127.0.0.1:{first.port}") as c:
        job = (await c.submit(request("keep", "v.mp4", "v.jpg", time=100))).snapshot_job
    await first.stop(0)
    second = App(settings)
    await second.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{second.port}") as c:
            assert (await c.get(job.id)) == job
            assert (await c.query(state="Success")).snapshot_job_list[0].id == job.id
    finally:
        await second.stop(0)


async def test_server_time_limit_gives_snapshot_timeout(tmp_path: Path, videos: dict[str, Video]) -> None:
    settings = load(env={}, listen="127.0.0.1:0", data_dir=tmp_path, sync_timeout_s=0.05)
    put(tmp_path, "slow", "hd.mp4", videos["hd"].path)
    app = App(settings)
    await app.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{app.port}") as c:
            with pytest.raises(SnapshotTimeOutError) as caught:
                await c.submit(request("slow", "hd.mp4", "never.jpg", time=3000))
            assert caught.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
            assert caught.value.code == "SnapshotTimeOut"
            job = await c.get(caught.value.job_id)
            assert job.state == "Fail" and job.code == "SnapshotTimeOut"
        assert not (tmp_path / "slow" / "never.jpg").exists()
        assert app.engine.running == 0
        assert list((tmp_path / ".tmp").iterdir()) == []
    finally:
        await app.stop(0)


async def test_client_deadline_is_honoured_and_the_job_recorded(
    client: SnapshotClient, app: App, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "hd.mp4", videos["hd"].path)
    with pytest.raises(SnapshotTimeOutError):
        await client.submit(request(bucket, "hd.mp4", "late.jpg", time=3500), timeout=0.2)
    page = await client.query(state="Fail", page_size=5)
    assert any(j.input.bucket == bucket and j.code == "SnapshotTimeOut" for j in page.snapshot_job_list)
    assert not (data_dir / bucket / "late.jpg").exists()


MPS_EXAMPLE = {
    "Action": "SubmitSnapshotJob",
    "Input": '{"Bucket":"BUCKET","Location":"example-location","Object":"example%2Ftest.flv"}',
    "SnapshotConfig": {
        "OutputFile": {
            "Bucket": "BUCKET",
            "Location": "example-location",
            "Object": "{Count}.jpg",
            "RoleArn": "acs:ram::1:role/testrole",
        },
        "Time": "5",
        "FrameType": "normal",
        "Width": "8",
        "Height": "8",
    },
    "UserData": "testid-001",
}


async def test_mps_json_is_accepted_verbatim(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "example/test.flv", videos["tiny"].path)
    doc = json.loads(json.dumps(MPS_EXAMPLE).replace("BUCKET", bucket))
    job = (await client.submit(doc)).snapshot_job
    assert job.state == "Success"
    assert job.images[0].object == "00001.jpg"
    assert Image.open(data_dir / bucket / "00001.jpg").size == (8, 8)
    assert job.snapshot_config.output_file.role_arn == "acs:ram::1:role/testrole"


async def test_cli_submits_mps_json(
    app: App, data_dir: Path, bucket: str, videos: dict[str, Video], tmp_path: Path
) -> None:
    put(data_dir, bucket, "example/test.flv", videos["tiny"].path)
    doc = json.loads(json.dumps(MPS_EXAMPLE).replace("BUCKET", bucket))
    doc["SnapshotConfig"] = json.dumps(doc["SnapshotConfig"])  # MPS sends it as a JSON string
    (tmp_path / "req.json").write_text(json.dumps(doc))
    # The server runs on this test's event loop, so the CLI must not block it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mps_snapshot_client",
        "submit",
        str(tmp_path / "req.json"),
        "--target",
        f"127.0.0.1:{app.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    body = json.loads(stdout)
    assert body["SnapshotJob"]["State"] == "Success"
    # The CLI's JSON writes 64-bit integers as numbers, like every other size (docs/api.md).
    assert body["SnapshotJob"]["SnapshotConfig"]["Time"] == 5
