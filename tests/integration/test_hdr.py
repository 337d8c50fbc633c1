"""HDR to SDR: PQ and HLG test media generated from an SDR master with the tags set; the
snapshot is compared with a reference tone-map (the documented chain run by ffmpeg alone)
and with the master, and ToneMap false gives the untouched (grey) frame."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from mps_snapshot_client import SnapshotClient
from mps_snapshot_server.media import hdr
from mps_snapshot_server.media.probe import MediaInfo
from tests.conftest import put
from tests.helpers.media import ffmpeg, mean_diff
from tests.integration.test_sync_snapshots import request

MASTER = "testsrc2=size=320x180:rate=25:duration=2"


def _hdr_video(folder: Path, transfer: str) -> Path:
    out = folder / f"{transfer}.mp4"
    if not out.exists():
        ffmpeg(
            "-f", "lavfi", "-i", MASTER,
            "-vf",
            "format=yuv420p,zscale=tin=bt709:min=bt709:pin=bt709:rin=tv:"
            f"t={transfer}:m=bt2020nc:p=bt2020:r=tv:npl=100,format=yuv420p10le",
            "-c:v", "libx264", "-g", "25",
            "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc",
            str(out),
        )  # fmt: skip
    return out


def _png(*args: str) -> Image.Image:
    return Image.open(io.BytesIO(ffmpeg(*args, "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"))).convert(
        "RGB"
    )


def test_detection_from_the_stream_tags() -> None:
    base = MediaInfo(2.0, 320, 180, 0, 25, 1, "mov", "h264")  # type: ignore[arg-type]
    assert hdr.tone_map_chain(base) is None
    for transfer in ("smpte2084", "arib-std-b67"):
        pq = MediaInfo(2.0, 320, 180, 0, 25, 1, "mov", "h264", color_transfer=transfer)  # type: ignore[arg-type]
        chain = hdr.tone_map_chain(pq)
        assert chain is not None and f"tin={transfer}" in chain and "zscale=t=bt709:m=bt709" in chain


@pytest.mark.parametrize("transfer", ["smpte2084", "arib-std-b67"])
async def test_hdr_snapshot_is_tone_mapped(
    client: SnapshotClient, data_dir: Path, bucket: str, media_dir: Path, transfer: str
) -> None:
    video = _hdr_video(media_dir, transfer)
    put(data_dir, bucket, f"in/{transfer}.mp4", video)
    job = (await client.submit(request(bucket, f"in%2F{transfer}.mp4", f"hdr/{transfer}.png", time=1000))).snapshot_job
    shot = Image.open(data_dir / bucket / job.images[0].object).convert("RGB")
    info = MediaInfo(2.0, 320, 180, 0, 25, 1, "mov", "h264", color_transfer=transfer)  # type: ignore[arg-type]
    chain = hdr.tone_map_chain(info)
    assert chain is not None
    reference = _png("-ss", "1", "-i", str(video), "-vf", chain)
    master = _png("-ss", "1", "-f", "lavfi", "-i", MASTER)
    untouched = _png("-ss", "1", "-i", str(video))
    assert mean_diff(shot, reference) < 2.0
    # Tone-mapped, the snapshot is far closer to the SDR master than the raw HDR decode.
    assert mean_diff(shot, master) < 35 < mean_diff(untouched, master) - 30
    job = (
        await client.submit(
            request(bucket, f"in%2F{transfer}.mp4", f"hdr/{transfer}-raw.png", time=1000, tone_map=False)
        )
    ).snapshot_job
    raw = Image.open(data_dir / bucket / job.images[0].object).convert("RGB")
    assert mean_diff(raw, untouched) < 2.0


@pytest.mark.parametrize("transfer", ["smpte2084", "arib-std-b67"])
@pytest.mark.parametrize(("color", "rgb"), [("#808080", (128, 128, 128)), ("#ff0000", (255, 0, 0))])
async def test_hdr_pad_color_is_not_tone_mapped(
    client: SnapshotClient,
    data_dir: Path,
    bucket: str,
    media_dir: Path,
    transfer: str,
    color: str,
    rgb: tuple[int, int, int],
) -> None:
    video = _hdr_video(media_dir, transfer)  # 320x180: padded to 200x200, bars of 44 rows
    put(data_dir, bucket, f"in/{transfer}.mp4", video)
    out = f"hdr/pad-{transfer}-{color[1:]}.jpg"
    req = request(bucket, f"in%2F{transfer}.mp4", out, time=1000, width=200, height=200, fit="pad")
    req.snapshot_config.pad_color = color
    job = (await client.submit(req)).snapshot_job
    img = Image.open(data_dir / bucket / job.images[0].object).convert("RGB")
    assert img.size == (200, 200)
    for y in (20, 180):  # the middle of the top and bottom bars
        for x in (50, 100, 150):
            pixel = img.getpixel((x, y))
            assert isinstance(pixel, tuple)
            assert all(abs(int(p) - c) <= 3 for p, c in zip(pixel, rgb, strict=True)), (x, y, pixel, rgb)
