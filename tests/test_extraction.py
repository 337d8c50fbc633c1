"""The extraction planner's decisions (pure), and both extraction shapes on real video:
every frame is still exactly the one shown at its time."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from client import SnapshotClient
from client.api import resources_pb2 as res
from server.domain.extraction import Mode, batch_size, plan_extraction
from server.media import showinfo
from server.media.argv import Encoding, ExactPoint, Source, capture_argv, pass_argv
from tests.conftest import put
from tests.media import Video, closest_frame, index_at
from tests.test_async_jobs import submit_request


def test_sparse_points_become_seek_batches_spread_over_the_cores() -> None:
    plan = plan_extraction([i * 6000.0 for i in range(100)], gop_s=2.0, frame_size=(1920, 1080), processes=2)
    assert plan.mode is Mode.SEEK
    assert all(len(c.indexes) <= 8 for c in plan.chunks)
    assert [i for c in plan.chunks for i in c.indexes] == list(range(100))
    small = plan_extraction([0.0, 6000.0, 12000.0], gop_s=2.0, frame_size=(1920, 1080), processes=2)
    assert len(small.chunks) == 2  # both cores busy even for three points


def test_dense_points_become_passes() -> None:
    plan = plan_extraction([i * 1200.0 for i in range(100)], gop_s=2.0, frame_size=(1920, 1080), processes=2)
    assert plan.mode is Mode.PASS and len(plan.chunks) == 2
    assert [i for c in plan.chunks for i in c.indexes] == list(range(100))
    assert (
        plan_extraction(
            [i * 1200.0 for i in range(10)], gop_s=2.0, frame_size=(64, 36), processes=2, dense_allowed=False
        ).mode
        is Mode.SEEK
    )


def test_passes_stay_within_ffmpegs_expression_limit() -> None:
    plan = plan_extraction([i * 600.0 for i in range(1000)], gop_s=2.0, frame_size=(160, 90), processes=2)
    assert plan.mode is Mode.PASS
    assert max(len(c.indexes) for c in plan.chunks) <= 90
    assert [i for c in plan.chunks for i in c.indexes] == list(range(1000))


def test_batch_size_follows_the_frame_size() -> None:
    assert batch_size(1920, 1080) == 8
    assert batch_size(3840, 2160) == 2
    assert batch_size(320, 180) == 16


def test_batch_argv_and_showinfo_mapping(tmp_path: Path) -> None:
    src = Source("file:/data/b/v.mp4", ("file",))
    points = [ExactPoint(1.0, (0.96, 1.0)), ExactPoint(5.0, (4.96, 5.0))]
    argv = capture_argv("ffmpeg", src, points, Encoding(160, None), tmp_path, threads=1)
    assert argv.count("-i") == 2 and argv.count("-protocol_whitelist") == 2 and "-nostdin" in argv
    graphs = [argv[i + 1] for i, a in enumerate(argv) if a == "-filter:v"]
    assert len(graphs) == 2
    assert graphs[1].startswith("showinfo@a1=checksum=0,trim=end=5.000010,select='between(t,4.960000,5.000000)',")
    assert graphs[1].endswith("showinfo@p1=checksum=0")
    dense = pass_argv(
        "ffmpeg",
        src,
        start_s=0.9,
        duration_s=2.0,
        windows=[(0.96, 1.0005)],
        intra=False,
        enc=Encoding(),
        outdir=tmp_path,
    )
    assert "select='between(t,0.960000,1.000500)'" in dense[dense.index("-filter:v") + 1]
    log = (
        "[showinfo@p1 @ 0x1] config in time_base: 1/100, frame_rate: 25/1\n"
        "[showinfo@p0 @ 0x2] config in time_base: 1/1000, frame_rate: 25/1\n"
        "[showinfo@p1 @ 0x1] n:   0 pts:    304 pts_time:3.04    pos: 1 fmt:yuv420p iskey:0 type:P\n"
        "[showinfo@p0 @ 0x2] n:   0 pts:   1000 pts_time:1       pos: 2 fmt:yuv420p iskey:1 type:I\n"
    )
    assert {k: [(f.time_s, f.key) for f in v] for k, v in showinfo.frames_by_name(log).items()} == {
        "p1": [(3.04, False)],
        "p0": [(1.0, True)],
    }


async def test_dense_time_points_take_one_pass_and_stay_exact(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    video = videos["main"]  # GOP 2 s: points 40-500 ms apart are dense
    put(data_dir, bucket, "in.mp4", video.path)
    points = [1000, 1040, 1100, 1500, 2000, 2020.5, 2020.5, 2500, 3010, 3900]
    job = (
        await client.submit(
            submit_request(bucket, "in.mp4", width=320, time_array=res.TimeArray(time_point_list=points))
        )
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success" and final.count == len(points)
    for image in final.images:
        expected = index_at(video.path, image.requested_time / 1000)
        assert image.time == pytest.approx(expected * 40, abs=0.05)
        img = Image.open(data_dir / bucket / image.object)
        assert img.size == (320, 180)
        assert closest_frame(img, video.path, [expected - 1, expected, expected + 1])[0] == expected


async def test_sparse_sequence_in_seek_batches_stays_exact(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    video = videos["odd_rate"]
    put(data_dir, bucket, "in.mp4", video.path)
    job = (await client.submit(submit_request(bucket, "in.mp4", time=123, interval=2, num=3))).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert [i.requested_time for i in final.images] == [123, 2123, 4123]
    for image in final.images:
        expected = index_at(video.path, image.requested_time / 1000)
        img = Image.open(data_dir / bucket / image.object)
        assert closest_frame(img, video.path, [expected - 1, expected, expected + 1])[0] == expected


def test_keyframe_interval_estimate() -> None:
    from server.media.probe import keyframe_interval

    assert keyframe_interval("0.000000,K_\n0.033,__\n2.000000,K_\n4.000000,K_\n") == 2.0
    assert keyframe_interval("0.0,K_\n" + "".join(f"{i / 30:.6f},__\n" for i in range(1, 200))) == pytest.approx(
        199 / 30
    )  # one keyframe in the packets read: the span is a lower bound
    assert keyframe_interval("") == 1.0


async def test_subtitles_and_unusual_audio_do_not_stop_the_probe(
    client: SnapshotClient, data_dir: Path, bucket: str, media_dir: Path
) -> None:
    from tests.media import ffmpeg

    srt = media_dir / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:02,000\nhello\n")
    path = media_dir / "subs.mov"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=3",
        "-i",
        str(srt),
        "-c:v",
        "libx264",
        "-c:a",
        "pcm_u8",
        "-c:s",
        "mov_text",
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        str(path),
    )
    put(data_dir, bucket, "subs.mov", path)
    from tests.test_sync_snapshots import request

    job = (await client.submit(request(bucket, "subs.mov", "s.jpg", time=1000))).snapshot_job
    assert job.state == "Success" and job.images[0].time == 1000


async def test_a_dense_job_of_many_points_is_split_into_passes(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    video = videos["main"]
    put(data_dir, bucket, "in.mp4", video.path)
    job = (await client.submit(submit_request(bucket, "in.mp4", interval=0, num=150, width=64))).snapshot_job
    final = await client.wait(job.id, timeout=120)
    assert final.state == "Success", final.message
    assert final.count == 150
    for image in final.images[::37]:
        expected = index_at(video.path, image.requested_time / 1000)
        assert image.time == pytest.approx(expected * 40, abs=0.05)
