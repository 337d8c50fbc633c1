"""Sprites (TileOut), WebVTT and JSON storyboards: geometry, colours and cells checked
pixel by pixel against the single snapshots and exact reference frames."""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.domain.sprites import fit
from tests.conftest import put
from tests.helpers.media import Video, mean_diff, reference_frame
from tests.integration.test_async_jobs import submit_request


def tiled(
    bucket: str, key: str, *, tile: res.TileOut, tile_object: str = "sprites/{TileCount}.jpg", **config: Any
) -> sps.SubmitSnapshotJobRequest:
    request = submit_request(bucket, key, **config)
    request.snapshot_config.tile_out.CopyFrom(tile)
    request.snapshot_config.tile_output_file.CopyFrom(
        res.OSSFile(bucket=bucket, location="oss-cn-hangzhou", object=tile_object)
    )
    return request


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    r, g, b = img.convert("RGB").getpixel(xy)  # type: ignore[misc]
    return r, g, b


def near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 16) -> bool:
    # JPEG rings a little next to picture edges, most for saturated colours.
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def cell(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    x, y, w, h = box
    return img.crop((x, y, x + w, y + h))


def fitted(frame: Image.Image, size: tuple[int, int], background: tuple[int, int, int]) -> Image.Image:
    ox, oy, w, h = fit(frame.size, size)
    out = Image.new("RGB", size, background)
    out.paste(frame.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), (ox, oy))
    return out


@pytest.mark.parametrize(
    ("grid", "cell_size", "margin", "padding", "color", "rgb"),
    [
        ((2, 3), (96, 54), 4, 2, "#FF0000", (255, 0, 0)),
        ((3, 2), (80, 45), 0, 6, "WHITE", (255, 255, 255)),
        ((1, 4), (64, 36), 10, 0, "0x00ff00", (0, 255, 0)),
        ((2, 2), (96, 54), 3, 3, "Black", (0, 0, 0)),
    ],
)
async def test_sprite_geometry_colours_and_cells(
    client: SnapshotClient,
    data_dir: Path,
    bucket: str,
    videos: dict[str, Video],
    grid: tuple[int, int],
    cell_size: tuple[int, int],
    margin: int,
    padding: int,
    color: str,
    rgb: tuple[int, int, int],
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    lines, columns = grid
    tile = res.TileOut(
        lines=lines,
        columns=columns,
        cell_width=cell_size[0],
        cell_height=cell_size[1],
        margin=margin,
        padding=padding,
        color=color,
    )
    job = (await client.submit(tiled(bucket, "in.mp4", tile=tile, interval=1, num=10, width=320))).snapshot_job
    events = [e async for e in client.watch(job.id, timeout=60)]
    final = events[-1].snapshot_job
    assert final.state == "Success", final.message
    per = lines * columns
    expected_sprites = -(-10 // per)
    assert final.tile_count == expected_sprites and final.count == 10 and len(final.images) == 10
    assert [s.object for s in final.sprites] == [f"sprites/{n:05d}.jpg" for n in range(1, expected_sprites + 1)]
    assert [s.cell_count for s in final.sprites] == [min(per, 10 - i * per) for i in range(expected_sprites)]
    sprite_events = [e for e in events if e.kind == sps.SnapshotJobEvent.KIND_SPRITE_WRITTEN]
    assert [e.progress.sprites_done for e in sprite_events] == list(range(1, expected_sprites + 1))
    width = 2 * margin + columns * cell_size[0] + (columns - 1) * padding
    height = 2 * margin + lines * cell_size[1] + (lines - 1) * padding
    for n, sprite in enumerate(final.sprites):
        img = Image.open(data_dir / bucket / sprite.object)
        assert img.format == "JPEG" and img.size == (width, height)  # the last one keeps the full grid
        assert (sprite.width, sprite.height) == (width, height)
        if margin:
            assert near(pixel(img, (margin // 2, margin // 2)), rgb)
            assert near(pixel(img, (width - 1 - margin // 2, height // 2)), rgb)
        if padding and columns > 1:
            assert near(pixel(img, (margin + cell_size[0] + padding // 2, margin + cell_size[1] // 2)), rgb)
        for i in range(per):
            index = n * per + i
            box = (
                margin + (i % columns) * (cell_size[0] + padding),
                margin + (i // columns) * (cell_size[1] + padding),
                *cell_size,
            )
            got = cell(img, box)
            if index >= 10:  # empty cells keep the background
                assert near(pixel(got, (cell_size[0] // 2, cell_size[1] // 2)), rgb)
                continue
            single = Image.open(data_dir / bucket / final.images[index].object)
            assert mean_diff(got, fitted(single, cell_size, rgb)) < 4.0, (n, i)


async def test_cells_default_to_the_snapshot_size_and_letterbox(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    job = (
        await client.submit(
            tiled(
                bucket,
                "in.mp4",
                tile=res.TileOut(lines=1, columns=2),
                tile_object="s.jpg",
                interval=5,
                num=2,
                width=160,
            )
        )
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    img = Image.open(data_dir / bucket / final.sprites[0].object)
    assert img.size == (320, 90)  # two 160x90 cells: the snapshot size
    square = (
        await client.submit(
            tiled(
                bucket,
                "in.mp4",
                out="sq/{Count}.jpg",
                tile=res.TileOut(lines=1, columns=1, cell_width=100, cell_height=100, color="navy"),
                tile_object="square.jpg",
                num=1,
                time=2000,
            )
        )
    ).snapshot_job
    final = await client.wait(square.id, timeout=60)
    img = Image.open(data_dir / bucket / final.sprites[0].object)
    assert img.size == (100, 100)
    # 16:9 in a square: picture 100x56 in the middle, navy bands above and below.
    assert near(pixel(img, (50, 5)), (0, 0, 128)) and near(pixel(img, (50, 95)), (0, 0, 128))
    ref = reference_frame(videos["main"].path, 50)
    assert mean_diff(img, fitted(ref, (100, 100), (0, 0, 128))) < 4.0


async def test_cell_sel_step_and_no_single_images(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    video = videos["main"]
    put(data_dir, bucket, "in.mp4", video.path)
    tile = res.TileOut(lines=2, columns=2, cell_width=64, cell_height=36, cell_sel_step=3, is_keep_cell_pic=False)
    job = (
        await client.submit(tiled(bucket, "in.mp4", tile=tile, tile_object="step.jpg", interval=1, num=10))
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success", final.message
    assert final.count == 10 and len(final.images) == 0 and final.tile_count == 1
    assert final.sprites[0].cell_count == 4  # snapshots 1, 4, 7, 10
    assert not (data_dir / bucket / "seq").exists()  # IsKeepCellPic false: no single images
    img = Image.open(data_dir / bucket / "step.jpg")
    for i, seconds in enumerate([0, 3, 6, 9]):
        box = ((i % 2) * 64, (i // 2) * 36, 64, 36)
        ref = reference_frame(video.path, seconds * 25)
        assert mean_diff(cell(img, box), fitted(ref, (64, 36), (0, 0, 0))) < 5.0, i


async def test_sprite_rules_checked_at_submit(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    cases = [
        (
            tiled(bucket, "in.mp4", tile=res.TileOut(lines=2, columns=2), tile_object="one.jpg", interval=1),
            "snapshot_config.tile_output_file.object",
            "{TileCount}",
        ),
        (
            tiled(
                bucket, "in.mp4", tile=res.TileOut(lines=20, columns=20, cell_width=4096, cell_height=4096), interval=1
            ),
            "snapshot_config.tile_out",
            "65500",
        ),
        (
            tiled(
                bucket, "in.mp4", tile=res.TileOut(lines=6, columns=6, cell_width=2000, cell_height=2000), interval=1
            ),
            "snapshot_config.tile_out",
            "MP",
        ),
    ]
    before = len((await client.query(page_size=300)).snapshot_job_list)
    for request, field, words in cases:
        with pytest.raises(MpsApiError) as caught:
            await client.submit(request)
        assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in caught.value.violations] == [field]
        assert words in caught.value.message
    assert len((await client.query(page_size=300)).snapshot_job_list) == before
    ok = tiled(bucket, "in.mp4", tile=res.TileOut(lines=2, columns=5), tile_object="fits.jpg", interval=1, width=64)
    assert (await client.submit(ok)).snapshot_job.state == "Submitted"  # ten cells fit one sprite


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n")
    cues = []
    for block in text.strip().split("\n\n")[1:]:
        timing, target = block.split("\n")
        start, end = (
            sum(float(p) * m for p, m in zip(t.split(":"), (3600, 60, 1), strict=True)) for t in timing.split(" --> ")
        )
        cues.append((start, end, target))
    return cues


async def test_webvtt_of_single_images(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "clips/in.mp4", videos["main"].path)
    job = (
        await client.submit(
            submit_request(bucket, "clips%2Fin.mp4", out="thumbs/{Count}.jpg", interval=3, format="vtt")
        )
    ).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Success" and final.web_vtt_object == "thumbs/in.vtt"
    cues = parse_vtt((data_dir / bucket / final.web_vtt_object).read_text())
    assert [(s, e) for s, e, _ in cues] == [(0, 3), (3, 6), (6, 9), (9, 10)]  # back to back, to the end
    for (_, _, target), image in zip(cues, final.images, strict=True):
        assert posixpath.normpath(posixpath.join("thumbs", target)) == image.object
        assert (data_dir / bucket / image.object).is_file()


async def test_webvtt_and_json_storyboard_of_sprites(
    client: SnapshotClient, data_dir: Path, bucket: str, videos: dict[str, Video]
) -> None:
    put(data_dir, bucket, "in.mp4", videos["main"].path)
    tile = res.TileOut(lines=2, columns=2, cell_width=80, cell_height=45, margin=2, padding=1, is_keep_cell_pic=False)
    request = tiled(bucket, "in.mp4", tile=tile, tile_object="board/sheet-{TileCount}.jpg", interval=2, format="vtt")
    request.snapshot_config.sub_out.is_spt_frag = True
    final = await client.wait((await client.submit(request)).snapshot_job.id, timeout=60)
    assert final.state == "Success", final.message
    assert final.tile_count == 2 and final.count == 5
    assert final.web_vtt_object == "board/in.vtt" and final.storyboard_object == "board/in.json"
    cues = parse_vtt((data_dir / bucket / "board/in.vtt").read_text())
    assert [(s, e) for s, e, _ in cues] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    boxes = []
    for _, _, target in cues:
        match = re.fullmatch(r"(sheet-\d{5}\.jpg)#xywh=(\d+),(\d+),(\d+),(\d+)", target)
        assert match, target
        boxes.append((match.group(1), *(int(g) for g in match.groups()[1:])))
    assert boxes == [
        ("sheet-00001.jpg", 2, 2, 80, 45),
        ("sheet-00001.jpg", 83, 2, 80, 45),
        ("sheet-00001.jpg", 2, 48, 80, 45),
        ("sheet-00001.jpg", 83, 48, 80, 45),
        ("sheet-00002.jpg", 2, 2, 80, 45),
    ]
    board = json.loads((data_dir / bucket / "board/in.json").read_text())
    assert board["tile_width"] == 80 and board["tile_height"] == 45 and board["duration_ms"] == 10000
    assert [s["object"] for s in board["sprites"]] == ["board/sheet-00001.jpg", "board/sheet-00002.jpg"]
    tiles = board["tiles"]
    assert [(posixpath.basename(t["sprite"]), t["x"], t["y"], t["width"], t["height"]) for t in tiles] == boxes
    assert [t["time_ms"] for t in tiles] == pytest.approx([0, 2000, 4000, 6000, 8000], abs=0.05)
    assert [(t["start_ms"], t["end_ms"]) for t in tiles] == [
        (0, 2000),
        (2000, 4000),
        (4000, 6000),
        (6000, 8000),
        (8000, 10000),
    ]
    sheet = Image.open(data_dir / bucket / "board/sheet-00001.jpg")
    for t in tiles[:4]:
        ref = reference_frame(videos["main"].path, round(t["time_ms"] / 40))
        got = cell(sheet, (t["x"], t["y"], t["width"], t["height"]))
        assert mean_diff(got, fitted(ref, (80, 45), (0, 0, 0))) < 5.0
