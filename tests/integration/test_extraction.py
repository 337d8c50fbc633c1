"""The extraction planner's decisions (pure), and both extraction shapes on real video:
every frame is still exactly the one shown at its time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_server.domain.extraction import Mode, batch_size, plan_extraction
from mps_snapshot_server.media import showinfo
from mps_snapshot_server.media.argv import Encoding, ExactPoint, Source, capture_argv, pass_argv
from tests.conftest import put
from tests.helpers.media import Video, closest_frame, index_at
from tests.integration.test_async_jobs import submit_request


def test_sparse_points_become_seek_batches_spread_over_the_cores() -> None:
    plan = plan_extraction(
        [i * 6000.0 for i in range(100)], gop_s=2.0, frame_size=(1920, 1080), processes=2, budget_mb=300
    )
    assert plan.mode is Mode.SEEK
    assert all(len(c.indexes) <= 3 for c in plan.chunks)
    assert [i for c in plan.chunks for i in c.indexes] == list(range(100))
    small = plan_extraction([0.0, 6000.0, 12000.0], gop_s=2.0, frame_size=(1920, 1080), processes=2, budget_mb=300)
    assert len(small.chunks) == 2  # both cores busy even for three points


def test_dense_points_become_passes() -> None:
    plan = plan_extraction(
        [i * 1200.0 for i in range(100)], gop_s=2.0, frame_size=(1920, 1080), processes=2, budget_mb=300
    )
    assert plan.mode is Mode.PASS and len(plan.chunks) == 2
    assert [i for c in plan.chunks for i in c.indexes] == list(range(100))
    assert (
        plan_extraction(
            [i * 1200.0 for i in range(10)],
            gop_s=2.0,
            frame_size=(64, 36),
            processes=2,
            dense_allowed=False,
            budget_mb=300,
        ).mode
        is Mode.SEEK
    )


def test_passes_stay_within_ffmpegs_expression_limit() -> None:
    plan = plan_extraction(
        [i * 600.0 for i in range(1000)], gop_s=2.0, frame_size=(160, 90), processes=2, budget_mb=300
    )
    assert plan.mode is Mode.PASS
    assert max(len(c.indexes) for c in plan.chunks) <= 90
    assert [i for c in plan.chunks for i in c.indexes] == list(range(1000))


def test_batch_size_keeps_a_job_within_its_memory_budget() -> None:
    # 300 MB for the job's processes, two at once: 150 MB each, 43 MB of it the process itself.
    assert batch_size(1920, 1080, processes=2, budget_mb=300) == 3
    assert batch_size(3840, 2160, processes=2, budget_mb=300) == 1
    assert batch_size(320, 180, processes=2, budget_mb=300) == 16
    assert batch_size(1920, 1080, processes=1, budget_mb=300) == 8
    assert batch_size(1920, 1080, processes=2, budget_mb=600) == 8


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
    from mps_snapshot_server.media.probe import keyframe_interval

    assert keyframe_interval("0.000000,K_\n0.033,__\n2.000000,K_\n4.000000,K_\n") == 2.0
    assert keyframe_interval("0.0,K_\n" + "".join(f"{i / 30:.6f},__\n" for i in range(1, 200))) == pytest.approx(
        199 / 30
    )  # one keyframe in the packets read: the span is a lower bound
    assert keyframe_interval("") == 1.0


async def test_subtitles_and_unusual_audio_do_not_stop_the_probe(
    client: SnapshotClient, data_dir: Path, bucket: str, media_dir: Path
) -> None:
    from tests.helpers.media import ffmpeg

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
    from tests.integration.test_sync_snapshots import request

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


def test_key_index_is_the_flagged_packets_at_exact_times() -> None:
    from mps_snapshot_server.media.probe import parse_key_index

    csv = "1/15360\n0,-1024,K__\n512,-512,___\n30720,29696,K_\n-512,-1536,K_\nN/A,N/A,K_\n61440,N/A,K__\n"
    # Times are pts x time base minus the presentation start; distinct and ascending.
    index = parse_key_index(csv, 0.0)
    assert index.times == (-512 / 15360, 0.0, 2.0, 4.0)
    assert index.dts == {-512 / 15360: -1536, 0.0: -1024, 2.0: 29696}  # none known for 4.0
    assert parse_key_index(csv, 2.0).times[1:] == (-2.0, 0.0, 2.0)
    assert parse_key_index("0,0,K_\n", 0.0).times == ()  # no time base, no index


def test_keyframe_plan_passes_dense_keyframes_and_seeks_sparse_ones() -> None:
    from mps_snapshot_server.domain.extraction import plan_keyframes

    index = [i * 2.0 for i in range(300)]
    # Every keyframe wanted: keyframe-only passes, one per core, each within the expression limit.
    every = plan_keyframes(index[:200], index, frame_size=(1920, 1080), processes=2, duration_s=600, budget_mb=300)
    assert {c.mode for c in every.chunks} == {Mode.KEYPASS}
    assert len(every.chunks) == 3 and max(len(c.indexes) for c in every.chunks) <= 90
    assert [i for c in every.chunks for i in c.indexes] == list(range(200))
    # One keyframe in three (6-s steps, 2-s GOP), 10-minute file: decoding all of them is cheaper
    # than opening the input for each one.
    third = plan_keyframes(index[::3], index, frame_size=(1920, 1080), processes=2, duration_s=600, budget_mb=300)
    assert {c.mode for c in third.chunks} == {Mode.KEYPASS}
    # A few keyframes far apart: seeks, batched within the memory budget.
    sparse = plan_keyframes(index[::30], index, frame_size=(1920, 1080), processes=2, duration_s=600, budget_mb=300)
    assert {c.mode for c in sparse.chunks} == {Mode.SEEK}
    assert [i for c in sparse.chunks for i in c.indexes] == list(range(10))


@pytest.mark.parametrize(("interval", "num", "mode"), [(1, 12, Mode.KEYPASS), (3, 4, Mode.KEYPASS), (2, 8, Mode.SEEK)])
async def test_intra_jobs_take_each_chosen_keyframe_from_the_index(
    client: SnapshotClient,
    data_dir: Path,
    bucket: str,
    media_dir: Path,
    interval: int,
    num: int,
    mode: Mode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keyframes every 37 frames at 25 fps (1.48 s, B-frames): each point gets the keyframe
    nearest it, whether the planner passes over the keyframes or seeks to them, and the image
    is that keyframe's picture."""
    from mps_snapshot_server.domain import extraction
    from tests.helpers.media import make_video

    if mode is Mode.SEEK:  # keyframes made dear to decode (and none dropped): the planner seeks to each one
        from mps_snapshot_server.media.engine import MediaEngine

        async def no_input_filters(self: MediaEngine, handle: Any) -> bool:
            return False

        monkeypatch.setattr(extraction, "KEY_DECODE_MS", 1e9)
        monkeypatch.setattr(MediaEngine, "filters_input_packets", no_input_filters)
    plans: list[Mode] = []
    real = extraction.plan_keyframes

    def spy(*args: Any, **kwargs: Any) -> extraction.ExtractionPlan:
        plan = real(*args, **kwargs)
        plans.extend(c.mode for c in plan.chunks)
        return plan

    monkeypatch.setattr(extraction, "plan_keyframes", spy)

    video = make_video(media_dir / "gop37.mp4", size="320x180", rate="25", seconds=16, gop=37)
    put(data_dir, bucket, "in.mp4", video.path)
    keys = [k * 37 for k in range(11)]  # frame numbers of the keyframes
    job = (
        await client.submit(
            submit_request(
                bucket, "in.mp4", out=f"i{interval}/{{Count}}.jpg", interval=interval, num=num, frame_type="intra"
            )
        )
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success", final.message
    taken = []
    for image in final.images:
        nearest = min(keys, key=lambda k: (abs(k / 25 - image.requested_time / 1000), k))
        assert abs(nearest / 25 * 1000 - image.requested_time) <= interval * 500 + 0.001
        assert image.time == pytest.approx(nearest * 40, abs=0.05)
        img = Image.open(data_dir / bucket / image.object)
        assert closest_frame(img, video.path, [nearest - 1, nearest, nearest + 1])[0] == nearest
        taken.append(nearest)
    # Every point within half a step of a keyframe got one, each keyframe once.
    wanted = []
    for n in range(num):
        t = n * interval
        k = min(keys, key=lambda k: (abs(k / 25 - t), k))
        if abs(k / 25 - t) <= interval / 2 + 1e-6 and k not in wanted:
            wanted.append(k)
    assert taken == wanted
    assert plans and set(plans) == {mode}


def test_keyframe_pass_argv_picks_by_position_and_can_drop_other_keyframes(tmp_path: Path) -> None:
    from mps_snapshot_server.media.argv import keypass_argv
    from mps_snapshot_server.media.capture import major_version

    src = Source("file:/data/b/v.mp4", ("file",))
    argv = keypass_argv("ffmpeg", src, seek_s=6.0, picks=[0, 3], enc=Encoding(), outdir=tmp_path)
    graph = argv[argv.index("-filter:v") + 1]
    assert graph.startswith("select='eq(key,1)',showinfo@a0=checksum=0,select='eq(n,0)+eq(n,3)',")
    assert argv[argv.index("-discard") + 1] == "nokey" and argv[argv.index("-frames:v") + 1] == "2"
    assert "-bsf:v" not in argv
    dropping = keypass_argv(
        "ffmpeg", src, seek_s=6.0, picks=[0, 1], enc=Encoding(), outdir=tmp_path, keep_dts=[91136, 183296]
    )
    # An input option (before -i), built from the index's integers only.
    bsf = dropping.index("-bsf:v")
    assert bsf < dropping.index("-i")
    assert dropping[bsf + 1] == "noise=drop='not(eq(dts\\,91136)+eq(dts\\,183296))'"
    assert major_version("ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026") == 5
    assert major_version("ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright") == 9
    assert major_version("ffmpeg version N-112233-gabcdef") == 0
