"""The warm decoder pool (server/mps_snapshot_server/media/warm.py): the same frame and pixels as the ffmpeg
path, the rule that picks it, and its containment (limits, session, environment, kill and
replace on timeout, crash and recycling; fail closed to ffmpeg)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from mps_snapshot_server.config import Settings
from mps_snapshot_server.domain.errors import ResourceContentBad
from mps_snapshot_server.domain.fit import Geometry
from mps_snapshot_server.domain.formats import ImageFormat
from mps_snapshot_server.domain.models import FrameType
from mps_snapshot_server.media import capture, probe, warm
from mps_snapshot_server.media.argv import Encoding, Source
from mps_snapshot_server.media.engine import MediaEngine, Priority
from mps_snapshot_server.media.probe import MediaInfo
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.storage.base import InputHandle
from tests.helpers.media import Video, closest_frame, index_at, mean_diff, reference_frame

#: Mean absolute difference per channel (0-255) two JPEG encodes of one frame stay within
#: (measured 0.3-0.6 at q:v 2); a neighbouring frame of testsrc2 differs by 10 or more.
JPEG_NOISE = 2.0


def make_engine(tmp: Path, workers: int, **kw: int) -> MediaEngine:
    settings = Settings(
        data_dir=tmp,
        max_ffmpeg_processes=2,
        probe_cache_entries=16,
        warm_workers=workers,
        warm_worker_requests=int(kw.get("requests", 200)),
    )
    engine = MediaEngine.from_settings(settings, Telemetry())
    engine.sweep()
    engine.start_warm()
    return engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[MediaEngine]:
    e = make_engine(tmp_path, 2)
    await wait_workers(e, 2)  # a request finding no idle worker runs ffmpeg instead
    yield e
    await e.close()


def handle_of(path: Path) -> InputHandle:
    return InputHandle("file:" + str(path.resolve()), ("file",))


async def both(
    engine: MediaEngine, video: Path, time_s: float, enc: Encoding, tmp: Path, name: str
) -> tuple[capture.Frame, capture.Frame]:
    """The same snapshot through the pool and through ffmpeg."""
    handle = handle_of(video)
    info = await engine.probe(handle, str(video), 30)
    assert engine.warm is not None
    served = engine.warm.served
    a, b = tmp / f"{name}-warm", tmp / f"{name}-ffmpeg"
    a.mkdir()
    b.mkdir()
    pooled = await engine.snapshot(
        handle, info, time_s=time_s, frame_type=FrameType.NORMAL, enc=enc, workdir=a, wall_seconds=30
    )
    assert engine.warm.served == served + 1, "the pool did not serve it"
    direct = await capture.capture_exact(
        "ffmpeg",
        Source(handle.url, handle.protocols),
        info,
        time_s=time_s,
        enc=enc,
        workdir=b,
        limits=engine.limits(30),
        max_bytes=32 * 1024 * 1024,
    )
    return pooled, direct


@pytest.mark.parametrize(
    ("label", "time_s", "width"),
    [
        ("first frame", 0.0, None),
        ("on a keyframe", 2.0, None),
        ("just before a keyframe", 3.96, None),
        ("mid-GOP", 5.52, None),
        ("mid-GOP, 320 wide", 7.3, 320),
        ("last frame", 9.96, None),
    ],
)
async def test_same_frame_and_pixels_as_ffmpeg(
    engine: MediaEngine, videos: dict[str, Video], tmp_path: Path, label: str, time_s: float, width: int | None
) -> None:
    video = videos["main"]
    pooled, direct = await both(engine, video.path, time_s, Encoding(width=width), tmp_path, label.replace(" ", "_"))
    assert pooled.time_s == pytest.approx(direct.time_s, abs=1e-6)
    assert (pooled.width, pooled.height) == (direct.width, direct.height)
    with Image.open(pooled.path) as p, Image.open(direct.path) as d:
        assert p.size == d.size and p.format == "JPEG"
        assert mean_diff(p, d) < JPEG_NOISE
        # And it is the frame a player shows at T, not a neighbour.
        want = index_at(video.path, time_s)
        best, _ = closest_frame(p, video.path, [max(0, want - 1), want, want + 1])
        assert best == want


async def test_sprite_cells_at_full_chroma_match(engine: MediaEngine, videos: dict[str, Video], tmp_path: Path) -> None:
    pooled, direct = await both(engine, videos["hd"].path, 1.5, Encoding(160, 90, full_chroma=True), tmp_path, "cell")
    assert pooled.time_s == pytest.approx(direct.time_s, abs=1e-6)
    with Image.open(pooled.path) as p, Image.open(direct.path) as d:
        assert p.size == d.size == (160, 90)
        assert mean_diff(p, d) < JPEG_NOISE


async def test_intra_with_the_index_takes_the_keyframe(
    engine: MediaEngine, videos: dict[str, Video], tmp_path: Path
) -> None:
    video = videos["main"]  # 25 fps, a keyframe every 2 s
    handle = handle_of(video.path)
    info = await engine.probe(handle, "k", 30)
    index = await engine.key_index(handle, "k", info, 30)
    assert index is not None and engine.warm is not None
    frame = await engine.snapshot(
        handle,
        info,
        time_s=5.2,
        frame_type=FrameType.INTRA,
        enc=Encoding(),
        workdir=tmp_path,
        wall_seconds=30,
        priority=Priority.SYNC,
        keys=index.times,
    )
    assert frame.time_s == pytest.approx(6.0, abs=1e-6) and engine.warm.served == 1
    with Image.open(frame.path) as img:
        assert mean_diff(img, reference_frame(video.path, 150, img.size)) < JPEG_NOISE * 2


def test_the_rule_the_pool_serves_by() -> None:
    info = MediaInfo(
        duration_s=10,
        width=1920,
        height=1080,
        rotation=0,
        frame_rate=Fraction(30),
        stream_count=2,
        format_name="mov,mp4,m4a,3gp,3g2,mj2",
        video_codec="h264",
    )
    local = InputHandle("file:/data/a.mp4", ("file",))
    assert warm.refusal(local, info, Encoding(640)) == ""
    assert warm.refusal(local, dataclasses.replace(info, video_codec="hevc"), Encoding(full_chroma=True)) == ""
    refused = [
        (InputHandle("https://s3/x", ("https", "tls", "tcp")), info, Encoding()),
        (local, dataclasses.replace(info, format_name="matroska,webm"), Encoding()),
        (local, dataclasses.replace(info, video_codec="vp9"), Encoding()),
        (local, dataclasses.replace(info, rotation=90), Encoding()),
        (local, dataclasses.replace(info, sample_aspect=Fraction(4, 3)), Encoding()),
        (local, dataclasses.replace(info, variable_rate=True), Encoding()),
        (local, dataclasses.replace(info, color_transfer="smpte2084"), Encoding()),
        (local, info, Encoding(image=ImageFormat.PNG)),
        (local, info, Encoding(tone_map="zscale")),
        (local, info, Encoding(320, 180, geometry=Geometry(scale=(320, 180)))),
    ]
    for handle, inf, enc in refused:
        assert warm.refusal(handle, inf, enc) != "", (handle, inf, enc)


async def test_refused_cases_take_the_ffmpeg_path(
    engine: MediaEngine, videos: dict[str, Video], tmp_path: Path
) -> None:
    video = videos["anamorphic"]  # SAR 4:3: the ffmpeg path stretches it
    handle = handle_of(video.path)
    info = await engine.probe(handle, "ana", 30)
    frame = await engine.snapshot(
        handle, info, time_s=1.0, frame_type=FrameType.NORMAL, enc=Encoding(), workdir=tmp_path, wall_seconds=30
    )
    assert engine.warm is not None and engine.warm.served == 0
    assert (frame.width, frame.height) == (640, 360)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _limits(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {r[:26].strip(): r[26:47].strip() for r in rows}


async def wait_workers(engine: MediaEngine, count: int) -> list[int]:
    assert engine.warm is not None
    for _ in range(300):
        if len(engine.warm.pids) >= count and engine.warm._idle.qsize() >= count:
            return engine.warm.pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers: {engine.warm.pids}")


async def test_workers_run_contained(engine: MediaEngine) -> None:
    pids = await wait_workers(engine, 2)
    for pid in pids:
        assert os.getsid(pid) == pid, "its own session (a process group killed whole)"
        env = _proc(pid, "environ").split(b"\0")
        assert sorted(e.split(b"=")[0] for e in env if e) == [b"LC_ALL", b"PATH"]
        limits = _limits(pid)
        assert limits["Max address space"] == str(4096 * 1024 * 1024)
        assert limits["Max cpu time"] == "600"
        assert limits["Max core file size"] == "0"
        assert limits["Max open files"] == "256"
        status = _proc(pid, "status").decode()
        assert "PPid:\t" + str(os.getpid()) in status
    # pdeathsig: the kernel's parent-death signal is SIGKILL (prctl(PR_GET_PDEATHSIG) of the
    # child is not readable from outside; setpriv is in the argv that started it).
    assert engine.warm is not None and all(w.folder.parent == engine.warm.tmp_dir for w in engine.warm._all)


async def test_a_timeout_kills_the_worker_and_fails_like_ffmpeg(
    engine: MediaEngine, slow_video: Video, tmp_path: Path
) -> None:
    pids = set(await wait_workers(engine, 2))
    handle = handle_of(slow_video.path)
    info = await engine.probe(handle, "slow", 30)
    with pytest.raises(ResourceContentBad, match="took longer than"):
        await engine.snapshot(
            handle, info, time_s=9.9, frame_type=FrameType.NORMAL, enc=Encoding(), workdir=tmp_path, wall_seconds=0.05
        )
    await asyncio.sleep(0.3)  # the kill and the replacement run in the background
    now = set(await wait_workers(engine, 2))
    assert len(pids - now) == 1, "the timed-out worker was killed and replaced"
    for pid in pids - now:
        assert not _alive(pid)


async def test_a_crashed_worker_is_replaced_and_the_request_falls_back(
    engine: MediaEngine, videos: dict[str, Video], tmp_path: Path
) -> None:
    video = videos["main"]
    handle = handle_of(video.path)
    info = await engine.probe(handle, "crash", 30)
    for pid in await wait_workers(engine, 2):
        os.kill(pid, signal.SIGKILL)  # e.g. the kernel's OOM killer or RLIMIT_AS
    await asyncio.sleep(0.2)
    frame = await engine.snapshot(
        handle, info, time_s=3.0, frame_type=FrameType.NORMAL, enc=Encoding(), workdir=tmp_path, wall_seconds=30
    )
    assert frame.time_s == pytest.approx(3.0)
    # Dead idle workers are noticed when taken and replaced; the pool serves again.
    await asyncio.sleep(0.2)
    assert len(await wait_workers(engine, 2)) == 2
    again = tmp_path / "again"
    again.mkdir()
    assert engine.warm is not None
    served = engine.warm.served
    await engine.snapshot(
        handle, info, time_s=4.0, frame_type=FrameType.NORMAL, enc=Encoding(), workdir=again, wall_seconds=30
    )
    assert engine.warm.served == served + 1


async def test_workers_are_recycled_after_n_requests(videos: dict[str, Video], tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 1, requests=2)
    try:
        video = videos["main"]
        handle = handle_of(video.path)
        info = await engine.probe(handle, "r", 30)
        first = await wait_workers(engine, 1)
        for n in range(3):
            folder = tmp_path / f"r{n}"
            folder.mkdir()
            await wait_workers(engine, 1)
            await engine.snapshot(
                handle,
                info,
                time_s=n + 0.5,
                frame_type=FrameType.NORMAL,
                enc=Encoding(),
                workdir=folder,
                wall_seconds=30,
            )
        assert engine.warm is not None and engine.warm.served == 3
        assert engine.warm.pids != first and engine.warm.spawned >= 2
        assert not _alive(first[0])
    finally:
        await engine.close()


async def test_a_pool_that_cannot_start_fails_closed_to_ffmpeg(videos: dict[str, Video], tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 0)
    engine.warm = warm.WarmPool(
        size=1,
        max_requests=10,
        tmp_dir=engine.tmp_dir,
        cpu_seconds=600,
        memory_bytes=4096 * 1024 * 1024,
        python=str(tmp_path / "no-such-python"),
    )
    try:
        video = videos["main"]
        handle = handle_of(video.path)
        info = await engine.probe(handle, "b", 30)
        frame = await engine.snapshot(
            handle, info, time_s=1.0, frame_type=FrameType.NORMAL, enc=Encoding(), workdir=tmp_path, wall_seconds=30
        )
        assert frame.time_s == pytest.approx(1.0)
        assert engine.warm.broken and engine.warm.served == 0
    finally:
        await engine.close()


async def test_close_leaves_no_worker(videos: dict[str, Video], tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 2)
    pids = await wait_workers(engine, 2)
    await engine.close()
    for pid in pids:
        assert not _alive(pid)


async def test_a_capture_finding_every_worker_busy_runs_ffmpeg(slow_video: Video, tmp_path: Path) -> None:
    """The engine's slots allow sync_reserved_processes more runs than the pool has workers:
    such a run does not wait for a worker, it runs ffmpeg."""
    engine = make_engine(tmp_path, 1)
    try:
        await wait_workers(engine, 1)
        handle = handle_of(slow_video.path)
        info = await engine.probe(handle, "busy", 30)
        folders = [tmp_path / f"b{n}" for n in range(2)]
        for f in folders:
            f.mkdir()
        got = await asyncio.gather(
            *(
                engine.snapshot(
                    handle,
                    info,
                    time_s=9.5,
                    frame_type=FrameType.NORMAL,
                    enc=Encoding(),
                    workdir=f,
                    wall_seconds=30,
                    priority=Priority.SYNC,
                )
                for f in folders
            )
        )
        assert [g.time_s for g in got] == [pytest.approx(9.5)] * 2
        assert engine.warm is not None and engine.warm.served == 1
        with Image.open(got[0].path) as a, Image.open(got[1].path) as b:
            assert mean_diff(a, b) < JPEG_NOISE
    finally:
        await engine.close()


async def test_the_keyframe_index_from_a_worker_is_ffprobes(
    engine: MediaEngine, videos: dict[str, Video], heavy: Path, tmp_path: Path
) -> None:
    """An intra job's keyframe index comes from a worker's demux (no ffprobe beside the
    workers): the same times and decoding timestamps as ffprobe's packet list."""
    assert engine.warm is not None
    for path in (videos["main"].path, videos["hd"].path, heavy):
        handle = handle_of(path)
        info = await engine.probe(handle, str(path), 30)
        pooled = await engine.warm.key_index(handle, info, wall_seconds=30)
        direct = await probe.probe_key_index(
            "ffprobe", handle.url, handle.protocols, engine.limits(30), info.start_time_s, cwd=str(tmp_path)
        )
        assert pooled == direct and len(direct.times) >= 1


async def test_an_ffmpeg_pass_of_a_job_replaces_grown_idle_workers(
    engine: MediaEngine, videos: dict[str, Video], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's memory budget counts idle workers at their peak: before a job runs ffmpeg
    decodes of its own, idle workers that grew are replaced by fresh ones."""
    assert engine.warm is not None
    fresh = {w.proc.pid: w.peak_mb() for w in engine.warm._all}
    monkeypatch.setattr(warm, "_FRESH_MB", max(fresh.values()) + 2)
    video = videos["hd"]
    handle = handle_of(video.path)
    info = await engine.probe(handle, "shrink", 30)
    a = tmp_path / "a"
    a.mkdir()
    await engine.snapshot(
        handle, info, time_s=1.9, frame_type=FrameType.NORMAL, enc=Encoding(), workdir=a, wall_seconds=30
    )
    grown = [w.proc.pid for w in engine.warm._all if w.peak_mb() > warm._FRESH_MB]
    assert len(grown) == 1
    b = tmp_path / "b"
    b.mkdir()
    got = await engine.decode_pass(
        handle, info, [1.0, 1.5], intra=False, tolerances_s=[None, None], enc=Encoding(), workdir=b, wall_seconds=30
    )
    assert [f.time_s if f else None for f in got] == [pytest.approx(1.0), pytest.approx(1.5)]
    await asyncio.sleep(0.3)
    now = await wait_workers(engine, 2)
    assert grown[0] not in now and not _alive(grown[0])
    assert len(set(now) & set(fresh)) == 1, "the worker that did not grow is kept"
