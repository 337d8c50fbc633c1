"""Every file of the real-world corpus (tests/helpers/corpus.py) through every mode, on one real
server with its default settings: each image checked by pixels against the reference
decode of all frames, its size, and its reported Images[].Time (within 1 ms).

Time origin and frame rules are the corpus's (see tests/helpers/corpus.py): T is measured from
the file's presentation start (ffprobe's format start_time); the frame for T is the last
frame whose time is <= T (the first frame when T precedes it); ``intra`` gives the frame
whose packet has the keyframe flag nearest T, ties to the earlier. A failure names the
file, the mode and the frame offset, e.g. ``vfr_phone.mp4 sync normal T=1234ms: got
frame #37 (t=1.233), expected #38 (t=1.234), offset -1``.
"""

from __future__ import annotations

import itertools
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from tests.helpers import corpus
from tests.helpers.corpus import RECIPES, Reference, ceil_ms, check_frame, ms

pytestmark = pytest.mark.slow

VIDEO_MODES = (
    "sync_first",
    "sync_middle",
    "sync_last",
    "sync_past_end",
    "sync_width_only",
    "sync_height_only",
    "sync_intra",
    "async_sequence",
    "async_time_array",
    "async_sprite",
)
ERROR_MODES = ("sync", "async_sequence")
CASES = [
    pytest.param(r.name, mode, id=f"{r.name}-{mode}")
    for r in RECIPES
    for mode in (ERROR_MODES if r.error else VIDEO_MODES)
]
#: Reported times are exact frame times; 1 ms covers the service's rounding.
TIME_TOLERANCE_MS = 1.0
#: The sprite's cells (big enough for the marker's cells to stay visible).
CELL = (160, 120)


@pytest.fixture(scope="module")
def refs() -> dict[str, Reference]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg and ffprobe must be installed (apt-get install ffmpeg)")
    built = corpus.build_all()
    for ref in built.values():
        if len(ref.times) > 1:
            # The pixel check can only tell neighbours apart if they differ.
            assert ref.min_adjacent_diff > corpus.MIN_ADJACENT, (ref.name, ref.min_adjacent_diff)
    return built


@pytest_asyncio.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[App, Path]]:
    """One server with the default settings (sync limit 5 s, one ffmpeg slot per core)."""
    data = tmp_path_factory.mktemp("corpus-data")
    application = App(load(env={}, listen="127.0.0.1:0", data_dir=data, shutdown_grace_s=1.0))
    await application.start()
    yield application, data
    await application.stop(0.5)


@pytest_asyncio.fixture(scope="module")
async def cclient(server: tuple[App, Path]) -> AsyncIterator[SnapshotClient]:
    async with SnapshotClient(f"127.0.0.1:{server[0].port}") as c:
        yield c


@pytest.fixture(scope="module")
def stored(server: tuple[App, Path], refs: dict[str, Reference]) -> Iterator[tuple[Path, str]]:
    """Every corpus file in bucket ``corpus`` under ``in/``; outputs go to fresh folders."""
    data = server[1]
    (data / "corpus" / "in").mkdir(parents=True)
    for ref in refs.values():
        shutil.copyfile(ref.path, data / "corpus" / "in" / ref.name)
    yield data, "corpus"


def _request(key: str, out: str, **config: Any) -> sps.SubmitSnapshotJobRequest:
    return sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(bucket="corpus", location="oss-cn-hangzhou", object=f"in/{key}"),
        snapshot_config=res.SnapshotConfig(
            output_file=res.OSSFile(bucket="corpus", location="oss-cn-hangzhou", object=out), **config
        ),
    )


def _time_problem(ref: Reference, what: str, image: res.SnapshotImage, expected: int) -> str | None:
    want = ms(ref.times[expected])
    if abs(image.time - want) <= TIME_TOLERANCE_MS:
        return None
    named = min(range(len(ref.times)), key=lambda i: abs(ms(ref.times[i]) - image.time))
    return (
        f"{what}: reported Time {image.time:.3f} ms names frame #{named} (t={ref.times[named]:.3f}), "
        f"expected {want:.3f} ms (#{expected}), offset {named - expected:+d}"
    )


def _check_image(
    ref: Reference,
    what: str,
    path: Path,
    image: res.SnapshotImage,
    expected: int,
    size: tuple[int, int],
) -> list[str]:
    problems = []
    with Image.open(path) as img:
        if img.format != "JPEG":
            problems.append(f"{what}: not a JPEG ({img.format})")
        if img.size != size:
            problems.append(f"{what}: size {img.size[0]}x{img.size[1]}, expected {size[0]}x{size[1]}")
        if (problem := check_frame(ref, img, expected, what)) is not None:
            problems.append(problem)
    if (problem := _time_problem(ref, what, image, expected)) is not None:
        problems.append(problem)
    return problems


def middle(ref: Reference) -> int:
    """The frame in the middle; tests ask for it at ceil_ms(its time), the first whole
    millisecond at which it is displayed (its very time when that is a whole ms)."""
    return len(ref.times) // 2


def sequence_points(ref: Reference) -> tuple[int, int]:
    """Time (ms) and Num of an Interval=1 s sequence whose points all hold a frame."""
    start = 250 if ms(ref.times[-1]) >= 250 else 0
    num = 1 + int((ms(ref.times[-1]) - start) // 1000)
    return start, min(num, 4)


def time_array(ref: Reference) -> list[int]:
    """0, a frame's exact time, a time between two frames, the last frame's time."""
    n = len(ref.times)
    points = {0, ceil_ms(ref.times[-1])}
    if n > 2:
        k = n // 3
        points.add(ceil_ms(ref.times[k]))
        between = (ref.times[2 * n // 3] + ref.times[2 * n // 3 + 1]) / 2 if 2 * n // 3 + 1 < n else ref.times[-1]
        points.add(int(ms(between)))
    return sorted(points)


async def _sync(
    client: SnapshotClient, data: Path, ref: Reference, what: str, t_ms: int, expected: int, **config: Any
) -> list[str]:
    out = f"out/{uuid.uuid4().hex[:8]}/{{Count}}.jpg"
    try:
        job = (await client.submit(_request(ref.name, out, time=t_ms, **config))).snapshot_job
    except MpsApiError as err:
        return [f"{what}: failed with {err.code}: {err.message}"]
    if job.state != "Success" or len(job.images) != 1:
        return [f"{what}: job {job.state} with {len(job.images)} images: {job.message}"]
    size = ref.output_size(config.get("width"), config.get("height"))
    return _check_image(ref, what, data / "corpus" / job.images[0].object, job.images[0], expected, size)


async def _async(
    client: SnapshotClient, data: Path, ref: Reference, what: str, points: list[int], request: Any
) -> tuple[res.SnapshotJob | None, list[str]]:
    try:
        job = (await client.submit(request)).snapshot_job
    except MpsApiError as err:
        return None, [f"{what}: submit failed with {err.code}: {err.message}"]
    final = await client.wait(job.id, timeout=90)
    if final.state != "Success":
        return None, [f"{what}: job {final.state}: {final.code} {final.message}"]
    return final, []


async def _run_mode(client: SnapshotClient, data: Path, ref: Reference, mode: str) -> list[str]:
    name = ref.name
    last = len(ref.times) - 1
    if mode == "sync_first":
        return await _sync(client, data, ref, f"{name} sync normal T=0ms", 0, ref.index_at(0))
    if mode == "sync_middle":
        t = ceil_ms(ref.times[middle(ref)])
        return await _sync(client, data, ref, f"{name} sync normal T={t}ms", t, ref.index_at(t / 1000))
    if mode == "sync_last":
        t = ceil_ms(ref.times[last])
        return await _sync(client, data, ref, f"{name} sync normal T={t}ms (last frame)", t, last)
    if mode == "sync_width_only":
        t = ceil_ms(ref.times[middle(ref)])
        what = f"{name} sync normal Width=160 T={t}ms"
        return await _sync(client, data, ref, what, t, ref.index_at(t / 1000), width=160)
    if mode == "sync_height_only":
        t = ceil_ms(ref.times[middle(ref)])
        what = f"{name} sync normal Height=120 T={t}ms"
        return await _sync(client, data, ref, what, t, ref.index_at(t / 1000), height=120)
    if mode == "sync_intra":
        # A little past the middle frame, so "nearest" and "at or before" can differ.
        t = ceil_ms(ref.times[middle(ref)]) + 7
        what = f"{name} sync intra T={t}ms"
        return await _sync(client, data, ref, what, t, ref.keyframe_near(t / 1000), frame_type="intra")
    if mode == "sync_past_end":
        end = ms(ref.end_s)
        t = ceil_ms(ref.end_s) + 500
        what = f"{name} sync normal T={t}ms (past the end at {end:.0f} ms)"
        try:
            job = (await client.submit(_request(name, "out/past.jpg", time=t))).snapshot_job
        except MpsApiError as err:
            if err.code != "InvalidParameter.ResourceContentBad":
                return [f"{what}: failed with {err.code}, expected InvalidParameter.ResourceContentBad"]
            # The duration named must be the display end of the last frame: after the last
            # frame's time and no later than its end (whose exact length containers state
            # differently: sample duration, stream duration), give or take one frame interval.
            low, high = ms(ref.times[-1]), end + ms(ref.spacing_s)
            numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", err.message)]
            # In ms, or in seconds ("3.96 s").
            if not any(low < x <= high + 1 or low < x * 1000 <= high + 1 for x in numbers):
                return [
                    f"{what}: the message does not name the duration (the display end of the last frame, "
                    f"{end:.0f} ms; anything in ({low:.0f}, {high:.0f}] ms): {err.message}"
                ]
            return []
        return [f"{what}: succeeded ({len(job.images)} images, Time {[i.time for i in job.images]})"]
    if mode == "async_sequence":
        start, num = sequence_points(ref)
        points = [start + 1000 * i for i in range(num)]
        what = f"{name} Interval=1 Num={num} from {start}ms"
        out = f"seq/{uuid.uuid4().hex[:8]}/{{Count}}.jpg"
        final, problems = await _async(
            client, data, ref, what, points, _request(name, out, time=start, interval=1, num=num)
        )
        if final is None:
            return problems
        return _check_many(ref, data, what, final, points, ref.output_size())
    if mode == "async_time_array":
        points = time_array(ref)
        what = f"{name} TimeArray {points}"
        out = f"ta/{uuid.uuid4().hex[:8]}/{{Count}}.jpg"
        request = _request(name, out, time_array=res.TimeArray(time_point_list=points))
        final, problems = await _async(client, data, ref, what, points, request)
        if final is None:
            return problems
        return _check_many(ref, data, what, final, points, ref.output_size())
    if mode == "async_sprite":
        return await _sprite(client, data, ref)
    raise AssertionError(mode)


def _check_many(
    ref: Reference, data: Path, what: str, final: res.SnapshotJob, points: list[int], size: tuple[int, int]
) -> list[str]:
    if len(final.images) != len(points):
        return [f"{what}: {len(final.images)} images for {len(points)} points ({[i.time for i in final.images]})"]
    problems = []
    for image, t in zip(sorted(final.images, key=lambda i: i.requested_time), points, strict=True):
        label = f"{what} image T={t}ms"
        if round(image.requested_time) != t:
            problems.append(f"{label}: requested time reported as {image.requested_time}")
        problems += _check_image(ref, label, data / "corpus" / image.object, image, ref.index_at(t / 1000), size)
    return problems


async def _sprite(client: SnapshotClient, data: Path, ref: Reference) -> list[str]:
    from mps_snapshot_server.domain.sprites import fit

    start, num = sequence_points(ref)
    points = [start + 1000 * i for i in range(num)]
    what = f"{ref.name} sprite Interval=1 Num={num} from {start}ms"
    tag = uuid.uuid4().hex[:8]
    request = _request(ref.name, f"sp/{tag}/{{Count}}.jpg", time=start, interval=1, num=num, width=320)
    request.snapshot_config.tile_out.CopyFrom(
        res.TileOut(lines=2, columns=2, cell_width=CELL[0], cell_height=CELL[1], margin=0, padding=0, color="Black")
    )
    request.snapshot_config.tile_output_file.CopyFrom(
        res.OSSFile(bucket="corpus", location="oss-cn-hangzhou", object=f"sp/{tag}/sprite-{{TileCount}}.jpg")
    )
    final, problems = await _async(client, data, ref, what, points, request)
    if final is None:
        return problems
    if len(final.images) != num or len(final.sprites) != 1:
        return [f"{what}: {len(final.images)} cells in {len(final.sprites)} sprites, expected {num} in 1"]
    frame_size = ref.output_size(320, None)
    ox, oy, w, h = fit(frame_size, CELL)
    with Image.open(data / "corpus" / final.sprites[0].object) as sheet:
        if sheet.size != (2 * CELL[0], 2 * CELL[1]):
            problems.append(f"{what}: sprite is {sheet.size[0]}x{sheet.size[1]}, expected {2 * CELL[0]}x{2 * CELL[1]}")
        sheet = sheet.convert("RGB")
    for i, (image, t) in enumerate(zip(final.images, points, strict=True)):
        label = f"{what} cell {i} T={t}ms"
        x, y = (i % 2) * CELL[0] + ox, (i // 2) * CELL[1] + oy
        cell = sheet.crop((x, y, x + w, y + h))
        expected = ref.index_at(t / 1000)
        if (problem := check_frame(ref, cell, expected, label)) is not None:
            problems.append(problem)
        if (problem := _time_problem(ref, label, image, expected)) is not None:
            problems.append(problem)
    return problems


@pytest.mark.parametrize(("name", "mode"), CASES)
async def test_corpus(
    cclient: SnapshotClient, stored: tuple[Path, str], refs: dict[str, Reference], name: str, mode: str
) -> None:
    ref = refs[name]
    data = stored[0]
    if ref.recipe.error:
        await _expect_error(cclient, ref, mode)
        return
    problems = await _run_mode(cclient, data, ref, mode)
    assert not problems, "\n".join(problems)


async def _expect_error(client: SnapshotClient, ref: Reference, mode: str) -> None:
    if mode == "sync":
        with pytest.raises(MpsApiError) as caught:
            await client.submit(_request(ref.name, "out/err.jpg", time=0))
        assert caught.value.code == ref.recipe.error, caught.value
        assert "no video stream" in caught.value.message
        return
    job = (await client.submit(_request(ref.name, "out/err/{Count}.jpg", time=0, interval=1, num=2))).snapshot_job
    final = await client.wait(job.id, timeout=60)
    assert final.state == "Fail" and final.code == ref.recipe.error, (final.state, final.code, final.message)
    assert "no video stream" in final.message


# ----------------------------------------------------------------------------- the corpus itself


def _probe(path: Path) -> dict[str, Any]:
    import json
    import subprocess

    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def _top_level_boxes(path: Path) -> list[str]:
    """The ISO BMFF boxes at the top of an MP4/MOV file, in order."""
    boxes, data, i = [], path.read_bytes(), 0
    while i + 8 <= len(data):
        size, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[i + 8 : i + 16], "big")
        boxes.append(kind)
        if size < 8:
            break
        i += size
    return boxes


@dataclass
class Facts:
    ref: Reference
    fmt: dict[str, Any]
    streams: list[dict[str, Any]]
    videos: list[dict[str, Any]]

    @property
    def v(self) -> dict[str, Any]:
        return self.videos[0]

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.ref.times)]

    def b_frames(self) -> bool:
        return int(self.v.get("has_b_frames", 0)) > 0


def _vfr(f: Facts) -> dict[str, bool]:
    return {
        "variable intervals": len({round(g, 4) for g in f.gaps}) > 3,
        "dropped frames": max(f.gaps) > 1.5 * sorted(f.gaps)[len(f.gaps) // 2],
        "rotation 90": f.ref.rotation == 90,
    }


def _no_cues(f: Facts) -> dict[str, bool]:
    return {"no Cues element": b"\x1c\x53\xbb\x6b" not in f.ref.path.read_bytes()}


def _fragmented(f: Facts, late: bool) -> dict[str, bool]:
    checks = {"fragments (moof)": "moof" in _top_level_boxes(f.ref.path)}
    if late:
        checks["video from 0.08 s"] = abs(float(f.v["start_time"]) - 0.08) < 0.002
    return checks


def _mjpeg(f: Facts) -> dict[str, bool]:
    return {"mjpeg in avi": f.v["codec_name"] == "mjpeg" and f.fmt["format_name"] == "avi"}


#: What each file must be for its row of the corpus table (docs/real-world-corpus.md) to be true.
CLAIMS: dict[str, Callable[[Facts], dict[str, bool]]] = {
    "vfr_phone.mp4": _vfr,
    "hevc10_hvc1.mp4": lambda f: {
        "hevc hvc1 10-bit": (f.v["codec_name"], f.v["codec_tag_string"], f.v["pix_fmt"])
        == ("hevc", "hvc1", "yuv420p10le")
    },
    "vp9_opus.webm": lambda f: {"vp9 + opus": sorted(s["codec_name"] for s in f.streams) == ["opus", "vp9"]},
    "mediarecorder.webm": lambda f: {
        **_no_cues(f),
        "no duration, vp8": "duration" not in f.fmt and f.v["codec_name"] == "vp8",
    },
    "mkv_pipe.mkv": _no_cues,
    "av1.mp4": lambda f: {"av1": f.v["codec_name"] == "av1"},
    "av1.mkv": lambda f: {"av1": f.v["codec_name"] == "av1"},
    "mpeg2_offset.ts": lambda f: {
        "mpeg2 in mpegts": f.v["codec_name"] == "mpeg2video" and f.fmt["format_name"] == "mpegts",
        "start offset >= 10 s": float(f.fmt["start_time"]) >= 10,
        "interlaced": f.v.get("field_order") in ("tt", "tb", "bt", "bb"),
        "B-frames": f.b_frames(),
    },
    "bframes_editlist_moovend.mp4": lambda f: {
        "moov after mdat": _top_level_boxes(f.ref.path).index("moov") > _top_level_boxes(f.ref.path).index("mdat"),
        "B-frames": f.b_frames(),
    },
    "fragmented.mp4": lambda f: _fragmented(f, late=False),
    "fragmented_late.mp4": lambda f: _fragmented(f, late=True),
    "fragmented_av.mp4": lambda f: _fragmented(f, late=True),
    "anamorphic.mp4": lambda f: {"SAR 4:3": f.v["sample_aspect_ratio"] == "4:3"},
    "gop10s.mp4": lambda f: {"one keyframe in 10 s": len(f.ref.keyframes) == 1 and f.ref.times[-1] > 9.9},
    "video_after_audio.mp4": lambda f: {"video 0.5 s after audio": f.ref.times[0] >= 0.5},
    "two_video.mkv": lambda f: {"two video streams": len(f.videos) == 2},
    "cover_art.mp4": lambda f: {"attached picture": any(s["disposition"].get("attached_pic") for s in f.streams)},
    "uhd_4k.mp4": lambda f: {"3840x2160": (f.v["width"], f.v["height"]) == (3840, 2160)},
    "one_frame.mp4": lambda f: {"one frame": len(f.ref.times) == 1},
    "odd_322x181.webm": lambda f: {
        "odd height, width not a multiple of 16": f.v["height"] % 2 == 1 and f.v["width"] % 16 != 0
    },
    "odd_321x239.mp4": lambda f: {"odd size": f.v["width"] % 2 == 1 and f.v["height"] % 2 == 1},
    "prores.mov": lambda f: {"prores 10-bit 4:2:2": (f.v["codec_name"], f.v["pix_fmt"]) == ("prores", "yuv422p10le")},
    "mjpeg.avi": _mjpeg,
    "mjpeg_pipe.avi": lambda f: {**_mjpeg(f), "header never filled in": float(f.fmt.get("duration", 0)) > 100},
    "audio_only.m4a": lambda f: {"no video": not f.videos},
}


def _claims(ref: Reference) -> list[str]:
    """The claims of the file's row that are not true."""
    doc = _probe(ref.path)
    streams = doc["streams"]
    videos = [s for s in streams if s["codec_type"] == "video" and not s["disposition"].get("attached_pic")]
    facts = Facts(ref, doc["format"], streams, videos)
    checks = CLAIMS.get(ref.name, lambda f: {})(facts)
    return [claim for claim, ok in checks.items() if not ok]


@pytest.mark.parametrize("name", [r.name for r in RECIPES])
def test_corpus_file_is_what_the_table_says(refs: dict[str, Reference], name: str) -> None:
    assert not _claims(refs[name]), f"{name} is not: {_claims(refs[name])}"
