"""Every request rule, through the real server: the MPS code, the gRPC status, the field
at fault, and that no ffmpeg process was started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from tests.conftest import put
from tests.helpers.media import Video


def build(
    bucket: str,
    *,
    input_: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    user_data: str = "",
    pipeline_id: str = "",
    **config: Any,
) -> sps.SubmitSnapshotJobRequest:
    inp = {"bucket": bucket, "location": "oss-cn-hangzhou", "object": "v.mp4", **(input_ or {})}
    out = {"bucket": bucket, "location": "oss-cn-hangzhou", "object": "o-{Count}.jpg", **(output or {})}
    cfg = res.SnapshotConfig(output_file=res.OSSFile(**out), **config)
    return sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(**inp), snapshot_config=cfg, user_data=user_data, pipeline_id=pipeline_id
    )


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

CASES: list[tuple[str, dict[str, Any], grpc.StatusCode, str, str]] = [
    ("width too small", {"width": 7}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.width"),
    ("width too large", {"width": 4097}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.width"),
    ("height too small", {"height": 0}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.height"),
    ("negative time", {"time": -1}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.time"),
    ("unknown frame type", {"frame_type": "fast"}, INVALID, "InvalidParameter", "snapshot_config.frame_type"),
    ("unknown format", {"format": "gif"}, INVALID, "InvalidParameter", "snapshot_config.format"),
    ("vtt needs a sequence", {"format": "vtt"}, INVALID, "InvalidParameter", "snapshot_config.format"),
    (
        "png quality",
        {"format": "png", "quality": 80, "output": {"object": "o.png"}},
        INVALID,
        "InvalidParameter",
        "snapshot_config.quality",
    ),
    ("fit pad one side", {"fit": "pad", "width": 320}, INVALID, "InvalidParameter", "snapshot_config.fit"),
    ("pad colour no pad", {"pad_color": "white"}, INVALID, "InvalidParameter", "snapshot_config.pad_color"),
    (
        "png under jpg",
        {"format": "png", "output": {"object": "o.jpg"}},
        INVALID,
        "InvalidParameter.Format",
        "snapshot_config.output_file.object",
    ),
    (
        "vtt without cells",
        {
            "format": "jpg,vtt",
            "tile_out": res.TileOut(lines=2, columns=2, is_keep_cell_pic=False),
            "tile_output_file": res.OSSFile(bucket="snapbucket", location="oss-cn-hangzhou", object="t.jpg"),
        },
        INVALID,
        "InvalidParameter.Format",
        "snapshot_config.format",
    ),
    ("black level", {"black_level": 20}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.black_level"),
    (
        "pixel threshold",
        {"pixel_black_threshold": 256},
        INVALID,
        "InvalidParameter.OutOfRange",
        "snapshot_config.pixel_black_threshold",
    ),
    ("num zero", {"num": 0}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.num"),
    ("interval negative", {"interval": -1}, INVALID, "InvalidParameter.OutOfRange", "snapshot_config.interval"),
    ("bad bucket", {"input_": {"bucket": "Bad_Bucket"}}, INVALID, "InvalidParameter.BucketNameInvalid", "input.bucket"),
    (
        "short bucket",
        {"output": {"bucket": "ab"}},
        INVALID,
        "InvalidParameter.BucketNameInvalid",
        "snapshot_config.output_file.bucket",
    ),
    ("bad location", {"input_": {"location": "oss cn"}}, INVALID, "InvalidParameter.LocationInvalid", "input.location"),
    (
        "dot-dot key",
        {"input_": {"object": "a%2F..%2F..%2Fetc%2Fpasswd"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "input.object",
    ),
    (
        "absolute key",
        {"input_": {"object": "%2Fetc%2Fpasswd"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "input.object",
    ),
    ("NUL in key", {"input_": {"object": "a%00b.mp4"}}, INVALID, "InvalidParameter.ObjectKeyInvalid", "input.object"),
    (
        "URL as key",
        {"input_": {"object": "http://127.0.0.1/x.mp4"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "input.object",
    ),
    ("leading dash", {"input_": {"object": "-i.mp4"}}, INVALID, "InvalidParameter.ObjectKeyInvalid", "input.object"),
    ("long key", {"input_": {"object": "k" * 1025}}, INVALID, "InvalidParameter.ObjectKeyInvalid", "input.object"),
    (
        "bad encoding",
        {"input_": {"object": "%ff%fe.mp4"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "input.object",
    ),
    (
        "empty output",
        {"output": {"object": ""}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "snapshot_config.output_file.object",
    ),
    (
        "output escapes",
        {"output": {"object": "..%2Fx.jpg"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "snapshot_config.output_file.object",
    ),
    (
        "unknown placeholder",
        {"output": {"object": "{Foo}.jpg"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "snapshot_config.output_file.object",
    ),
    (
        "workflow placeholder",
        {"output": {"object": "{RunId}.jpg"}},
        INVALID,
        "InvalidParameter.ObjectKeyInvalid",
        "snapshot_config.output_file.object",
    ),
    ("user data chars", {"user_data": "a b"}, INVALID, "InvalidParameter", "user_data"),
    ("user data start", {"user_data": "-abc"}, INVALID, "InvalidParameter", "user_data"),
    ("user data size", {"user_data": "a" * 1025}, INVALID, "InvalidParameter.OutOfRange", "user_data"),
    (
        "sequence without Count",
        {"num": 3, "output": {"object": "same.jpg"}},
        INVALID,
        "InvalidParameter",
        "snapshot_config.output_file.object",
    ),
    (
        "too many points",
        {"time_array": res.TimeArray(time_point_list=[float(i) for i in range(101)])},
        INVALID,
        "InvalidParameter.TimeArray",
        "snapshot_config.time_array.time_point_list",
    ),
    (
        "three decimals",
        {"time_array": res.TimeArray(time_point_list=[1.234])},
        INVALID,
        "InvalidParameter.TimeArray",
        "snapshot_config.time_array.time_point_list[0]",
    ),
    (
        "random colour",
        {
            "tile_out": res.TileOut(color="random"),
            "tile_output_file": res.OSSFile(bucket="tiles-x", object="t-{TileCount}.jpg"),
        },
        INVALID,
        "InvalidParameter",
        "snapshot_config.tile_out.color",
    ),
    (
        "tile without file",
        {"tile_out": res.TileOut()},
        INVALID,
        "InvalidParameter.NullValue",
        "snapshot_config.tile_output_file",
    ),
    (
        "grid too large",
        {
            "tile_out": res.TileOut(lines=10001),
            "tile_output_file": res.OSSFile(bucket="tiles-x", object="t-{TileCount}.jpg"),
        },
        INVALID,
        "InvalidParameter.OutOfRange",
        "snapshot_config.tile_out.lines",
    ),
    ("missing input object", {"input_": {"object": "nope.mp4"}}, NOT_FOUND, "InvalidParameter.ResourceNotFound", ""),
    (
        "missing input bucket",
        {"input_": {"bucket": "no-such-bucket"}},
        NOT_FOUND,
        "InvalidParameter.ResourceNotFound",
        "",
    ),
    ("unknown pipeline", {"pipeline_id": "0" * 32}, NOT_FOUND, "InvalidParameter.ResourceNotFound", ""),
]


@pytest.mark.parametrize(("name", "change", "status", "code", "field"), CASES, ids=[c[0] for c in CASES])
async def test_invalid_request_is_refused_before_any_work(
    client: SnapshotClient,
    app: App,
    data_dir: Path,
    bucket: str,
    videos: dict[str, Video],
    name: str,
    change: dict[str, Any],
    status: grpc.StatusCode,
    code: str,
    field: str,
) -> None:
    put(data_dir, bucket, "v.mp4", videos["tiny"].path)
    started = app.engine.started
    jobs_before = len((await client.query(page_size=300)).snapshot_job_list)
    with pytest.raises(MpsApiError) as caught:
        await client.submit(build(bucket, **change))
    err = caught.value
    assert (err.status, err.code) == (status, code), err.message
    if field:
        assert field in [v.field for v in err.violations], err.violations
    assert err.request_id and err.request_id in err.message
    assert len(err.message) > 30  # says what to fix, not just "invalid"
    assert app.engine.started == started  # no ffprobe/ffmpeg ran
    assert len((await client.query(page_size=300)).snapshot_job_list) == jobs_before  # nothing recorded
    assert sorted(p.name for p in (data_dir / bucket).iterdir()) == ["v.mp4"]


async def test_all_violations_are_reported_together(client: SnapshotClient, bucket: str) -> None:
    with pytest.raises(MpsApiError) as caught:
        await client.submit(build(bucket, width=1, height=99999, frame_type="x", user_data="?"))
    fields = {v.field for v in caught.value.violations}
    assert fields == {"snapshot_config.width", "snapshot_config.height", "snapshot_config.frame_type", "user_data"}


async def test_missing_input_and_config(client: SnapshotClient) -> None:
    with pytest.raises(MpsApiError) as caught:
        await client.submit(sps.SubmitSnapshotJobRequest())
    assert caught.value.status == INVALID
    assert {v.field for v in caught.value.violations} == {"input", "snapshot_config"}


async def test_content_that_is_not_video(client: SnapshotClient, data_dir: Path, bucket: str) -> None:
    (data_dir / bucket / "junk.mp4").write_bytes(b"\x00\x01not a video" * 1000)
    with pytest.raises(MpsApiError) as caught:
        await client.submit(build(bucket, input_={"object": "junk.mp4"}))
    assert caught.value.code == "InvalidParameter.ResourceContentBad"
    assert caught.value.status == INVALID
    assert "/" not in caught.value.message.split("(RequestId")[0].replace("n/a", "")  # no server paths leaked
    assert not any(p.name.startswith("o-") for p in (data_dir / bucket).iterdir())


async def test_query_rules(client: SnapshotClient) -> None:
    with pytest.raises(MpsApiError) as caught:
        await client.query([f"{i:032x}" for i in range(11)])
    assert caught.value.status == INVALID
    with pytest.raises(MpsApiError) as caught:
        await client.query(page_size=301)
    assert caught.value.code == "InvalidParameter.OutOfRange"
    with pytest.raises(MpsApiError) as caught:
        await client.query(state="Running")
    assert caught.value.status == INVALID
    with pytest.raises(MpsApiError) as caught:
        await client.query(page_token="garbage!")
    assert caught.value.status == INVALID


async def test_cancel_and_watch_of_unknown_or_finished_jobs(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    with pytest.raises(MpsApiError) as caught:
        await client.cancel("f" * 32)
    assert caught.value.status == NOT_FOUND
    put(data_dir, bucket, "v.mp4", videos["tiny"].path)
    job = (await client.submit(build(bucket, time=100))).snapshot_job
    with pytest.raises(MpsApiError) as caught:
        await client.cancel(job.id)
    assert caught.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.code == "IncorrectJobState"
    events = [e async for e in client.watch(job.id)]
    assert len(events) == 1 and events[0].snapshot_job.state == "Success"
    with pytest.raises(MpsApiError) as caught:
        _ = [e async for e in client.watch("e" * 32)]
    assert caught.value.status == NOT_FOUND
