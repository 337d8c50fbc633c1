"""Outputs beyond MPS end to end (real server, real ffmpeg, outputs decoded): image formats
and quality, fit modes and no-upscale limits, times in percent, the automatic sprite grid;
plus unit tests of the pure rules (formats, fit geometry, percent)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_server.app import App
from mps_snapshot_server.domain import fit as fitting
from mps_snapshot_server.domain import formats, percent
from tests.conftest import put
from tests.helpers.media import Video, mean_diff, reference_frame
from tests.integration.test_async_jobs import events_until_done, submit_request
from tests.integration.test_sprites import tiled
from tests.integration.test_sync_snapshots import request

# --- pure rules ---------------------------------------------------------------------------------


def test_format_vocabulary_and_extension_default() -> None:
    assert formats.parse_format("") == formats.FormatChoice(None, False)
    assert formats.parse_format("VTT") == formats.FormatChoice(None, True)
    assert formats.parse_format("webp,vtt") == formats.FormatChoice(formats.ImageFormat.WEBP, True)
    assert formats.parse_format("vtt, PNG") == formats.FormatChoice(formats.ImageFormat.PNG, True)
    assert formats.parse_format("jpeg").image is formats.ImageFormat.JPEG
    for bad in ("gif", "webp,png", "vtt,vtt", "jpg,"):
        with pytest.raises(ValueError, match="use jpg"):
            formats.parse_format(bad)
    assert formats.from_extension("a/b.WEBP") is formats.ImageFormat.WEBP
    assert formats.from_extension("a/{Count}.png") is formats.ImageFormat.PNG
    assert formats.from_extension("a.b/noext") is formats.ImageFormat.JPEG
    assert formats.from_extension("x.{ExtName}") is formats.ImageFormat.JPEG
    assert formats.jpeg_qscale(None) == 2 and formats.jpeg_qscale(100) == 2 and formats.jpeg_qscale(1) == 31


def test_fit_geometry() -> None:
    g = fitting.geometry
    assert g((640, 360), 200, 200, fit=None, no_upscale=False) is None
    assert g((640, 360), 200, 200, fit=fitting.Fit.STRETCH, no_upscale=False) == fitting.Geometry((200, 200))
    assert g((640, 360), 200, 200, fit=fitting.Fit.PRESERVE, no_upscale=False) == fitting.Geometry((200, 112))
    pad = g((640, 360), 200, 200, fit=fitting.Fit.PAD, no_upscale=False, color=(255, 0, 0))
    assert pad == fitting.Geometry((200, 112), pad=(200, 200, 0, 44), color=(255, 0, 0)) and pad.size == (200, 200)
    crop = g((640, 360), 200, 200, fit=fitting.Fit.CROP, no_upscale=False)
    assert crop == fitting.Geometry((356, 200), crop=(200, 200, 78, 0))
    # Limits that never upscale.
    assert g((640, 360), 1000, 1000, fit=fitting.Fit.PRESERVE, no_upscale=True) == fitting.Geometry((640, 360))
    assert g((640, 360), 1280, None, fit=None, no_upscale=True) == fitting.Geometry((640, 360))
    assert g((640, 360), 320, None, fit=None, no_upscale=True) == fitting.Geometry((320, 180))
    assert g((640, 360), 1000, 300, fit=fitting.Fit.CROP, no_upscale=True).size == (640, 300)  # type: ignore[union-attr]
    assert g((640, 360), 800, 800, fit=None, no_upscale=True) == fitting.Geometry((640, 360))


def test_percent_rules() -> None:
    assert percent.at(50, 10_000) == 5000
    assert percent.at(99.99, 10_000) == 9999
    assert percent.auto_grid(10) == (3, 4)
    assert percent.auto_grid(16) == (4, 4)
    assert percent.auto_grid(1) == (1, 1)


# --- formats and quality ------------------------------------------------------------------------


def _stored(data_dir: Path, bucket: str, key: str) -> Image.Image:
    return Image.open(data_dir / bucket / key)


def content_type(data_dir: Path, bucket: str, key: str) -> str:
    return os.getxattr(data_dir / bucket / key, "user.mime_type").decode()


@pytest.mark.parametrize(
    ("out", "fmt", "extra", "pillow", "mime"),
    [
        ("f/a.png", "", {}, "PNG", "image/png"),
        ("f/a.webp", "", {}, "WEBP", "image/webp"),
        ("f/a.webp", "webp", {"lossless": True}, "WEBP", "image/webp"),
        ("f/a.img", "png", {}, "PNG", "image/png"),
        ("f/a.jpg", "", {}, "JPEG", "image/jpeg"),
        ("f/a.jpeg", "jpg", {"quality": 30}, "JPEG", "image/jpeg"),
    ],
)
async def test_sync_snapshot_formats(
    client: SnapshotClient,
    data_dir: Path,
    bucket: str,
    videos: dict[str, Video],
    out: str,
    fmt: str,
    extra: dict[str, Any],
    pillow: str,
    mime: str,
) -> None:
    video = videos["main"]
    put(data_dir, bucket, "in/main.mp4", video.path)
    job = (await client.submit(request(bucket, "in%2Fmain.mp4", out, time=1000, format=fmt, **extra))).snapshot_job
    assert job.state == "Success"
    img = _stored(data_dir, bucket, job.images[0].object)
    assert img.format == pillow and img.size == (640, 360)
    assert content_type(data_dir, bucket, job.images[0].object) == mime
    ref = reference_frame(video.path, 25)
    diff = mean_diff(img, ref)
    if pillow == "PNG" or extra.get("lossless"):
        assert diff < 1.5, diff  # lossless: only the YUV->RGB rounding
    else:
        assert diff < (12 if extra.get("quality") == 30 else 4), diff


async def test_quality_changes_bytes(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    sizes = {}
    for q in (10, 95):
        job = (await client.submit(request(bucket, "in%2Fmain.mp4", f"q/{q}.webp", time=2000, quality=q))).snapshot_job
        sizes[q] = (data_dir / bucket / job.images[0].object).stat().st_size
    assert sizes[10] * 2 < sizes[95], sizes


async def test_webp_sprites_and_vtt(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    req = tiled(
        bucket,
        "in%2Fmain.mp4",
        tile=res.TileOut(lines=2, columns=2, cell_width=160, cell_height=90),
        tile_object="sp/{TileCount}.webp",
        out="cells/{Count}.png",
        interval=2,
        num=4,
        format="vtt",
    )
    job = (await client.submit(req)).snapshot_job
    done = (await events_until_done(client, job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    assert [i.object for i in done.images] == [f"cells/0000{n}.png" for n in range(1, 5)]
    for image in done.images:
        assert _stored(data_dir, bucket, image.object).format == "PNG"
    sprite = _stored(data_dir, bucket, done.sprites[0].object)
    assert sprite.format == "WEBP" and sprite.size == (320, 180)
    assert content_type(data_dir, bucket, done.sprites[0].object) == "image/webp"
    assert done.web_vtt_object.endswith(".vtt")
    vtt = (data_dir / bucket / done.web_vtt_object).read_text()
    assert "00001.png" in vtt


async def test_format_errors(client: SnapshotClient, bucket: str) -> None:
    for config, field in (
        ({"format": "gif"}, "snapshot_config.format"),
        ({"format": "png", "lossless": True}, "snapshot_config.lossless"),
        ({"quality": 0}, "snapshot_config.quality"),
        ({"fit": "zoom", "width": 100, "height": 100}, "snapshot_config.fit"),
        ({"time_percent": 100.0}, "snapshot_config.time_percent"),
        ({"time_percent": 5.0, "time": 10}, "snapshot_config.time_percent"),
    ):
        with pytest.raises(MpsApiError) as info:
            await client.submit(request(bucket, "in%2Fmain.mp4", "x/a.jpg", **config))  # type: ignore[arg-type]
        assert info.value.code.startswith("InvalidParameter"), info.value
        assert field in str(info.value), str(info.value)


# --- fit modes ----------------------------------------------------------------------------------


def _mean(img: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(img.convert("RGB").crop(box)).mean)


@pytest.mark.parametrize("mode", ["stretch", "preserve", "pad", "crop"])
async def test_fit_modes_pixels_and_sizes(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video], mode: str
) -> None:
    video = videos["main"]  # 640x360
    put(data_dir, bucket, "in/main.mp4", video.path)
    req = request(bucket, "in%2Fmain.mp4", f"fit/{mode}.png", time=1000, width=200, height=200, fit=mode)
    if mode == "pad":
        req.snapshot_config.pad_color = "#ff0000"
    job = (await client.submit(req)).snapshot_job
    img = _stored(data_dir, bucket, job.images[0].object).convert("RGB")
    expected_size = {"stretch": (200, 200), "preserve": (200, 112), "pad": (200, 200), "crop": (200, 200)}[mode]
    assert img.size == expected_size and (job.images[0].width, job.images[0].height) == expected_size
    # References: the exact frame scaled by ffmpeg as the service scales.
    if mode == "stretch":
        assert mean_diff(img, reference_frame(video.path, 25, (200, 200))) < 3
    elif mode == "preserve":
        assert mean_diff(img, reference_frame(video.path, 25, (200, 112))) < 3
    elif mode == "pad":
        top, bottom = _mean(img, (0, 0, 200, 44)), _mean(img, (0, 156, 200, 200))
        for bar in (top, bottom):
            assert bar[0] > 240 and bar[1] < 15 and bar[2] < 15, bar
        inner = img.crop((0, 44, 200, 156))
        assert mean_diff(inner, reference_frame(video.path, 25, (200, 112))) < 3
    else:
        scaled = reference_frame(video.path, 25, (356, 200)).crop((78, 0, 278, 200))
        assert mean_diff(img, scaled) < 3


async def test_no_upscale_limits(client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    put(data_dir, bucket, "in/tiny.mp4", videos["tiny"].path)  # 176x144
    job = (
        await client.submit(request(bucket, "in%2Ftiny.mp4", "nu/a.jpg", width=1000, height=1000, no_upscale=True))
    ).snapshot_job
    assert _stored(data_dir, bucket, job.images[0].object).size == (176, 144)
    job = (await client.submit(request(bucket, "in%2Ftiny.mp4", "nu/b.jpg", width=88, no_upscale=True))).snapshot_job
    assert _stored(data_dir, bucket, job.images[0].object).size == (88, 72)


# --- times in percent and the automatic grid ----------------------------------------------------


async def test_time_percent_sync(client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)  # 10 s at 25 fps
    job = (await client.submit(request(bucket, "in%2Fmain.mp4", "pc/a.jpg", time_percent=50.0))).snapshot_job
    assert job.images[0].requested_time == 5000 and job.images[0].time == pytest.approx(5000, abs=0.05)


async def test_percent_sequences(client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    req = submit_request(bucket, "in%2Fmain.mp4", out="pa/{Count}.jpg")
    req.snapshot_config.time_array.time_percent_list.extend([75, 10, 33.33])
    job = (await client.submit(req)).snapshot_job
    done = (await events_until_done(client, job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    assert [i.requested_time for i in done.images] == [1000, 3333, 7500]
    assert [i.time for i in done.images] == pytest.approx([1000, 3320, 7480], abs=0.05)
    req = submit_request(bucket, "in%2Fmain.mp4", out="pi/{Count}.jpg", time_percent=10.0, interval_percent=25.0)
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert [i.requested_time for i in done.images] == [1000, 3500, 6000, 8500]


async def test_auto_grid_covers_the_video(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    req = tiled(
        bucket,
        "in%2Fmain.mp4",
        tile=res.TileOut(auto_cells=10, cell_width=64, cell_height=36, is_keep_cell_pic=False),
    )
    done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
    assert done.state == "Success", done.message
    assert done.tile_count == 1 and done.count == 10
    sprite = done.sprites[0]
    assert (sprite.width, sprite.height, sprite.cell_count) == (4 * 64, 3 * 36, 10)
    img = _stored(data_dir, bucket, sprite.object)
    assert img.size == (256, 108)
    # The last cell is the frame at 9 s (10 cells over 10 s), the first at 0.
    last = img.convert("RGB").crop((64, 72, 128, 108))
    diffs = {i: mean_diff(last, reference_frame(videos["main"].path, i, (64, 36))) for i in (200, 225, 249)}
    assert min(diffs, key=diffs.__getitem__) == 225, diffs


async def test_auto_grid_conflicts(client: SnapshotClient, bucket: str) -> None:
    req = tiled(bucket, "in%2Fmain.mp4", tile=res.TileOut(auto_cells=10), interval=2)
    with pytest.raises(MpsApiError, match="AutoCells"):
        await client.submit(req)


async def test_cli_snapshot_beyond_mps(app: App, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    # The server runs on this test's event loop, so the CLI runs as a child process.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mps_snapshot_client", "snapshot", f"{bucket}/in/main.mp4",
        "--out", f"{bucket}/cli/a.img",
        "--format", "webp", "--quality", "60", "--width", "100", "--height", "100", "--fit", "pad",
        "--pad-color", "white", "--time-percent", "20", "--smart-pick", "1000",
        "--target", f"127.0.0.1:{app.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    image = json.loads(stdout)["Images"][0]
    assert image["RequestedTime"] == 2000 and (image["Width"], image["Height"]) == (100, 100)
    img = _stored(data_dir, bucket, "cli/a.img")
    assert img.format == "WEBP" and img.size == (100, 100)
    assert min(_mean(img, (0, 0, 100, 20))) > 240  # the white bar above the 100x56 picture
    assert content_type(data_dir, bucket, "cli/a.img") == "image/webp"


def test_an_mps_request_gets_the_same_ffmpeg_command() -> None:
    """The defaults of the new Encoding fields write exactly what MPS requests always got:
    mjpeg at q 2 through the same scale chain (no codec, pixel format or filter added)."""
    from mps_snapshot_server.domain.fit import Geometry
    from mps_snapshot_server.domain.formats import ImageFormat
    from mps_snapshot_server.media import argv

    src = argv.Source("file:/v.mp4", ("file",))
    point = argv.ExactPoint(seek_s=1.0, window=(0.96, 1.0))
    for width, height in ((None, None), (320, None), (None, 90), (320, 200)):
        plain = argv.capture_argv("ffmpeg", src, [point], argv.Encoding(width, height), Path("/o"))
        assert "-c:v" not in plain and "-pix_fmt" not in plain and plain[plain.index("-q:v") + 1] == "2"
        assert "zscale" not in " ".join(plain) and "pad=" not in " ".join(plain)
    mps = argv.capture_argv("ffmpeg", src, [point], argv.Encoding(320, 200), Path("/o"))
    assert any("scale=w=320:h=200:flags=lanczos,setsar=1,showinfo@p0" in a for a in mps)
    webp = argv.capture_argv(
        "ffmpeg",
        src,
        [point],
        argv.Encoding(image=ImageFormat.WEBP, quality=70, geometry=Geometry((200, 112))),
        Path("/o"),
    )
    assert webp[webp.index("-c:v") + 1] == "libwebp" and webp[webp.index("-quality") + 1] == "70"
    assert "-q:v" not in webp


async def test_fit_crop_fills_sprite_cells(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    """Fit shapes the snapshot; a cell holds the snapshot (fit inside): square crops fill square
    cells with no background bars, where the plain 16:9 frame would be letter-boxed."""
    put(data_dir, bucket, "in/main.mp4", videos["main"].path)
    tile = res.TileOut(lines=1, columns=2, cell_width=90, cell_height=90, color="#00ff00", is_keep_cell_pic=False)
    shapes = {}
    for fit in ("crop", ""):
        extra: dict[str, Any] = {"width": 90, "height": 90, "fit": fit} if fit else {}
        req = tiled(
            bucket, "in%2Fmain.mp4", tile=tile, tile_object=f"fc{fit}/{{TileCount}}.png", interval=2, num=2, **extra
        )
        done = (await events_until_done(client, (await client.submit(req)).snapshot_job.id))[-1].snapshot_job
        assert done.state == "Success", done.message
        sprite = _stored(data_dir, bucket, done.sprites[0].object).convert("RGB")
        assert sprite.size == (180, 90)
        shapes[fit] = _mean(sprite, (0, 0, 180, 10))  # the top rows of both cells
    assert shapes["crop"][1] < 200  # picture, not the green background
    assert shapes[""][1] > 250 and shapes[""][0] < 5  # letter-box bars in the background colour
    ref = reference_frame(videos["main"].path, 0, (160, 90)).crop((35, 0, 125, 90))
    cropped = _stored(data_dir, bucket, "fccrop/00001.png").convert("RGB").crop((0, 0, 90, 90))
    assert mean_diff(cropped, ref) < 4
