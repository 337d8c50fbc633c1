"""Animated previews (beyond MPS): WebP and GIF decoded back, frame counts, play times,
sizes and the frames themselves checked; the frame and byte bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from tests.conftest import put
from tests.helpers.media import Video, mean_diff, reference_frame
from tests.integration.test_async_jobs import events_until_done, submit_request
from tests.integration.test_outputs_beyond import content_type


def animated(bucket: str, key: str, out: str, **anim: Any) -> sps.SubmitSnapshotJobRequest:
    req = submit_request(bucket, key, out="anim/poster.jpg", time=0)
    req.snapshot_config.animated_out.CopyFrom(res.AnimatedOut(**anim))
    req.snapshot_config.animated_output_file.CopyFrom(
        res.OSSFile(bucket=bucket, location="oss-cn-hangzhou", object=out)
    )
    return req


@pytest.mark.parametrize(
    ("out", "fmt", "mime"), [("anim/a.webp", "WEBP", "image/webp"), ("anim/a.gif", "GIF", "image/gif")]
)
async def test_animated_preview(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], out: str, fmt: str, mime: str
) -> None:
    video = videos["main"]  # 640x360, 25 fps, 10 s
    put(data_dir, bucket, "in/main.mp4", video.path)
    req = animated(bucket, "in%2Fmain.mp4", out, start=2000, duration=2000, fps=5, width=160, quality=100)
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    a = done.animated
    assert (a.object, a.format, a.frame_count, a.width, a.height) == (out, fmt.lower(), 10, 160, 90)
    assert a.duration == pytest.approx(2000, abs=20)
    path = data_dir / bucket / out
    assert a.bytes == path.stat().st_size and content_type(data_dir, bucket, out) == mime
    with Image.open(path) as img:
        assert img.format == fmt and getattr(img, "n_frames", 1) == 10 and img.size == (160, 90)
        durations = []
        for n in (0, 9):
            img.seek(n)
            frame = img.convert("RGB")  # loads the frame, which sets its duration
            durations.append(img.info["duration"])
            # Frame n is the frame shown at 2 s + n/5 s: index 50 + 5n at 25 fps.
            diffs = {
                i: mean_diff(frame, reference_frame(video.path, i, (160, 90)))
                for i in (49 + 5 * n, 50 + 5 * n, 51 + 5 * n)
            }
            assert min(diffs, key=diffs.__getitem__) == 50 + 5 * n, diffs
        assert durations == [200, 200]
    # The poster snapshot was written as well: one image, not a sequence.
    assert [i.object for i in done.images] == ["anim/poster.jpg"]


async def test_animated_job_takes_one_poster_not_a_sequence(
    client: SnapshotClient, data_dir: Path, bucket: str, slow_video: Video
) -> None:
    # 30 s: a sequence at the default 10-s Interval would take 3 images.
    put(data_dir, bucket, "in/slow.mp4", slow_video.path)
    req = animated(bucket, "in%2Fslow.mp4", "anim/p.webp", duration=500, fps=4)
    req.snapshot_config.time = 3000
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    assert [(i.object, i.requested_time) for i in done.images] == [("anim/poster.jpg", 3000)]


async def test_animated_range_is_clipped_and_bounded(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    req = animated(bucket, "in%2Fmain.mp4", "anim/end.webp", start_percent=95, duration=5000, fps=10, height=36)
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    assert done.animated.frame_count == 5 and (done.animated.width, done.animated.height) == (64, 36)
    # Bytes: a preview over MaxBytes fails the job and leaves no object behind.
    req = animated(bucket, "in%2Fmain.mp4", "anim/big.webp", duration=3000, fps=10, width=640, max_bytes=1024)
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert done.state == "Fail" and "over the limit of 1024" in done.message
    assert not (data_dir / bucket / "anim/big.webp").exists()
    # Frames: more than 300 is refused at submit.
    with pytest.raises(MpsApiError, match="300"):
        await client.submit(animated(bucket, "in%2Fmain.mp4", "anim/x.webp", duration=60000, fps=30))
