"""Smart picks (beyond MPS): black, uniform and blurred frames replaced by the best frame of
the window, measured in the decode; the time used and the reason reported."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_server.media.picks import Measure, choose, parse_measures
from tests.conftest import put
from tests.helpers.media import ffmpeg, frame_times, mean_diff, reference_frame
from tests.integration.test_async_jobs import events_until_done, submit_request
from tests.integration.test_sync_snapshots import request


@pytest.fixture(scope="session")
def flawed(media_dir: Path) -> Path:
    """1 s black, 1 s grey, 1 s blurred picture, 1 s sharp picture (25 fps)."""
    out = media_dir / "flawed.mp4"
    src = "size=320x180:rate=25:duration=1"
    ffmpeg(
        "-f", "lavfi", "-i", f"color=black:{src}", "-f", "lavfi", "-i", f"color=0x808080:{src}",
        "-f", "lavfi", "-i", f"testsrc2={src}", "-f", "lavfi", "-i", f"testsrc2={src}",
        "-filter_complex", "[2]gblur=sigma=8[b];[0][1][b][3]concat=n=4:v=1,format=yuv420p",
        "-c:v", "libx264", "-g", "25", str(out),
    )  # fmt: skip
    return out


def m(t: float, yavg: float = 120, spread: float = 100, blur: float = 4) -> Measure:
    return Measure(t, yavg, spread, blur, 0.8)


def test_choose_rules() -> None:
    good = [m(0.0), m(0.04, blur=3), m(0.08)]
    assert choose(good, 0.04, 8).time_s is None  # the frame shown is fine
    assert choose([m(0.0, yavg=16), m(0.04, blur=5), m(0.08, blur=3)], 0.0, 8) == choose(
        [m(0.0, yavg=16), m(0.04, blur=5), m(0.08, blur=3)], 0.01, 8
    )
    pick = choose([m(0.0, yavg=16), m(0.04, blur=5), m(0.08, blur=3)], 0.0, 8)
    assert (pick.time_s, pick.reason) == (0.08, "black")
    assert choose([m(0.0, spread=2), m(1.0)], 0.0, 8).reason == "uniform"
    assert choose([m(0.0, blur=math.nan), m(1.0)], 0.0, 8).reason == "blurred"
    assert choose([m(0.0, blur=12), m(1.0, blur=9)], 0.0, 8).time_s is None  # nothing better
    # Ties go to the nearest frame.
    assert choose([m(0.0, yavg=0), m(0.2, blur=3), m(0.6, blur=3)], 0.1, 8).time_s == 0.2
    assert choose([m(0.0, yavg=0), m(0.2, blur=3), m(0.3, blur=3)], 0.28, 8).time_s is None


def test_parse_measures() -> None:
    log = "\n".join(
        [
            "[Parsed_metadata_5 @ 0x1] frame:0    pts:0       pts_time:1.5",
            "[Parsed_metadata_5 @ 0x1] lavfi.signalstats.YLOW=53",
            "[Parsed_metadata_5 @ 0x1] lavfi.signalstats.YAVG=120.9",
            "[Parsed_metadata_5 @ 0x1] lavfi.signalstats.YHIGH=195",
            "[Parsed_metadata_5 @ 0x1] lavfi.blur=-nan",
            "[Parsed_metadata_5 @ 0x1] lavfi.entropy.normalized_entropy.normal.Y=0.85",
        ]
    )
    (one,) = parse_measures(log, 0.5)
    assert (one.time_s, one.yavg, one.spread, one.entropy) == (1.0, 120.9, 142, 0.85) and math.isnan(one.blur)


async def test_blurred_frame_replaced_sync(client: SnapshotClient, data_dir: Path, bucket: str, flawed: Path) -> None:
    put(data_dir, bucket, "in/flawed.mp4", flawed)
    req = request(bucket, "in%2Fflawed.mp4", "sp/a.png", time=2500)
    req.snapshot_config.smart_pick.CopyFrom(res.SmartPick(window=2000))
    job = (await client.submit(req)).snapshot_job
    image = job.images[0]
    assert image.replaced == "blurred" and image.requested_time == 2500
    assert 3000 <= image.time <= 3500
    index = min(range(len(times := frame_times(flawed))), key=lambda i: abs(times[i] - image.time / 1000))
    shot = Image.open(data_dir / bucket / image.object)
    assert mean_diff(shot, reference_frame(flawed, index)) < 1.5
    # Without SmartPick: the blurred frame, as asked.
    job = (await client.submit(request(bucket, "in%2Fflawed.mp4", "sp/b.png", time=2500))).snapshot_job
    assert job.images[0].replaced == "" and job.images[0].time == 2480


async def test_black_and_uniform_in_a_sequence(
    client: SnapshotClient, data_dir: Path, bucket: str, flawed: Path
) -> None:
    put(data_dir, bucket, "in/flawed.mp4", flawed)
    req = submit_request(bucket, "in%2Fflawed.mp4", out="sq/{Count}.jpg")
    req.snapshot_config.time_array.time_point_list.extend([500, 1500, 3500])
    req.snapshot_config.smart_pick.CopyFrom(res.SmartPick(window=6000))
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    assert [i.replaced for i in done.images] == ["black", "uniform", ""]
    for image in done.images:
        assert image.time >= 3000  # sharp picture
    assert done.images[2].time == 3480
    # A window holding no better frame keeps the original.
    req = request(bucket, "in%2Fflawed.mp4", "sp/c.jpg", time=500)
    req.snapshot_config.smart_pick.CopyFrom(res.SmartPick(window=1000))
    job = (await client.submit(req)).snapshot_job
    assert job.images[0].replaced == "" and job.images[0].time == 480


def _black_then_content(folder: Path, rate: int, black_s: int) -> Path:
    """``black_s`` s of black, then 3 s of sharp content, at ``rate`` fps."""
    out = folder / f"black-then-content-{rate}.mp4"
    if not out.exists():
        ffmpeg(
            "-f", "lavfi", "-i", f"color=black:size=320x180:rate={rate}:duration={black_s}",
            "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate={rate}:duration=3",
            "-filter_complex", "[0][1]concat=n=2:v=1,format=yuv420p",
            "-c:v", "libx264", "-g", str(rate), str(out),
        )  # fmt: skip
    return out


@pytest.mark.parametrize(("rate", "black_s", "time_ms", "window"), [(60, 2, 2300, 0), (25, 4, 4300, 3000)])
async def test_long_window_judges_the_frame_at_the_time(
    client: SnapshotClient,
    data_dir: Path,
    bucket: str,
    media_dir: Path,
    rate: int,
    black_s: int,
    time_ms: int,
    window: int,
) -> None:
    """Windows of 120 and 75 frames: every frame's measures are read (their log lines, ~2 KB
    a frame, once lost their middle, and the last black frame before the cut was judged)."""
    video = _black_then_content(media_dir, rate, black_s)
    put(data_dir, bucket, f"in/btc-{rate}.mp4", video)
    req = request(bucket, f"in%2Fbtc-{rate}.mp4", f"sp/btc-{rate}.png", time=time_ms)
    req.snapshot_config.smart_pick.CopyFrom(res.SmartPick(window=window) if window else res.SmartPick())
    image = (await client.submit(req)).snapshot_job.images[0]
    assert image.replaced == "" and image.requested_time == time_ms
    assert abs(image.time - time_ms) < 1000 / rate, image.time
    index = min(range(len(times := frame_times(video))), key=lambda i: abs(times[i] - time_ms / 1000))
    shot = Image.open(data_dir / bucket / image.object)
    assert mean_diff(shot, reference_frame(video, index)) < 1.5


async def test_missing_measures_fail_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fewer measures than frames out of the graph: a service fault, never a pick from part
    of the window."""
    from mps_snapshot_server.domain.errors import ServiceFault
    from mps_snapshot_server.media import picks, process
    from mps_snapshot_server.media.argv import Source
    from mps_snapshot_server.media.probe import MediaInfo

    frame = "frame:0    pts:0       pts_time:1\nlavfi.signalstats.YAVG=120\n"

    async def fake_run(command: list[str], limits: object, cwd: Path) -> process.Result:
        graph = command[command.index("-filter:v") + 1]
        (cwd / graph.rsplit("file=", 1)[1]).write_text(frame)
        (cwd / command[command.index("-progress") + 1]).write_text("frame=2\nprogress=end\n")
        return process.Result(0, b"", "")

    monkeypatch.setattr(picks, "run_ffmpeg", fake_run)
    info = MediaInfo(4.0, 320, 180, 0, 25, 1, "mov", "h264")  # type: ignore[arg-type]
    limits = process.Limits(wall_seconds=5, cpu_seconds=5, address_space_bytes=2**30)
    with pytest.raises(ServiceFault, match="measured 1 of the 2 frames"):
        await picks.measure(
            "ffmpeg", Source("file:x.mp4", ("file",)), info, time_s=1.0, window_s=2.0, workdir=tmp_path, limits=limits
        )
