"""Hostile media: every item of the corpus (tests/helpers/hostile.py), submitted as a sync snapshot
and as an async job at once, beside a normal job, on a server with small limits.

Each must end with InvalidParameter.ResourceContentBad (sync: INVALID_ARGUMENT) within its
limit, with a message that says why and leaks no path or URL, leaving no ffmpeg process, no
output and no work folder, while the normal job succeeds and the canary HTTP server on
127.0.0.1 receives nothing. Then the containment of each run, one guarantee at a time.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from PIL import Image

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from mps_snapshot_server.domain.errors import ProcessKilled, ResourceContentBad
from mps_snapshot_server.media import process
from mps_snapshot_server.media.capture import check_jpeg
from mps_snapshot_server.media.probe import ProbeLimits, _first_error, parse_probe, probe
from mps_snapshot_server.storage.base import ObjectInfo
from tests.conftest import put
from tests.helpers import hostile
from tests.helpers.media import ffmpeg_limits, probe_limits
from tests.integration.test_async_jobs import live_ffmpeg, submit_request

ROOT = Path(__file__).resolve().parents[2]
BAD = "InvalidParameter.ResourceContentBad"
SYNC_LIMIT_S = 2.0  # sync_timeout_s of the hostile server
RUN_LIMIT_S = 2.0  # ffmpeg_timeout_s: the wall-clock limit of each ffmpeg/ffprobe run of an async job
SLACK_S = 1.5  # scheduling, recording the job, answering, on a loaded 2-core machine


@dataclasses.dataclass
class Hostile:
    app: App
    client: SnapshotClient
    data_dir: Path
    corpus: hostile.Corpus
    canary: hostile.Canary

    def bucket(self, *items: hostile.Item) -> str:
        """A fresh bucket holding ``items``, the leak file beside them, and the normal video."""
        name = f"h-{uuid.uuid4().hex[:12]}"
        (self.data_dir / name).mkdir()
        for item in items:
            put(self.data_dir, name, item.key, item.path)
        put(self.data_dir, name, hostile.LEAK, self.corpus.leak)
        put(self.data_dir, name, "normal.mp4", self.corpus.normal)
        return name

    def files(self, bucket: str) -> list[str]:
        root = self.data_dir / bucket
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())

    def leftovers(self) -> tuple[list[int], list[Path]]:
        """ffmpeg/ffprobe processes of this server still alive, and work folders left."""
        return live_ffmpeg(str(self.data_dir)), sorted((self.data_dir / ".tmp").iterdir())


@pytest_asyncio.fixture(scope="module")
async def hx(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hostile]:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.fail("ffmpeg and ffprobe must be installed (apt-get install ffmpeg)")
    canary = hostile.Canary()
    url = await canary.start()
    corpus = await asyncio.to_thread(hostile.build, tmp_path_factory.mktemp("hostile"), url)
    data_dir = tmp_path_factory.mktemp("hostile-data")
    # ``../secret-files/leak.ts`` from an input bucket reaches this other bucket.
    put(data_dir, hostile.SECRET_BUCKET, hostile.LEAK, corpus.leak)
    settings = load(
        env={},
        listen="127.0.0.1:0",
        data_dir=data_dir,
        sync_timeout_s=SYNC_LIMIT_S,
        ffmpeg_timeout_s=RUN_LIMIT_S,
        max_duration_s=60.0,
        max_ffmpeg_processes=4,
        pipeline_max_concurrent_jobs=4,
        shutdown_grace_s=0.5,
    )
    app = App(settings)
    await app.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{app.port}") as client:
            yield Hostile(app, client, data_dir, corpus, canary)
    finally:
        await app.stop(0.5)
        await canary.stop()
    assert canary.connections == 0, canary.requests


def sync_request(bucket: str, key: str, out: str, time_ms: int) -> Any:
    request = submit_request(bucket, key, out=out, time=time_ms)
    request.user_data = ""
    return request


def assert_no_leak(hx: Hostile, message: str) -> None:
    for secret in (str(hx.data_dir), str(hx.corpus.root), "file:", "://", "127.0.0.1", "passwd", hostile.LEAK):
        assert secret not in message, message


async def timed(coro: Awaitable[Any]) -> tuple[Any, float]:
    start = time.monotonic()
    try:
        result = await coro
    except MpsApiError as err:
        result = err
    return result, time.monotonic() - start


async def run_beside_a_normal_job(
    hx: Hostile, bucket: str, key: str, time_ms: int
) -> tuple[tuple[Any, float], tuple[Any, float]]:
    """The hostile input as a sync snapshot and as an async job, and a normal sync snapshot,
    all at once; returns (sync outcome, seconds) and (async final job, seconds)."""

    async def async_job() -> res.SnapshotJob:
        job = (
            await hx.client.submit(submit_request(bucket, key, out="async/{Count}.jpg", time=time_ms, num=1))
        ).snapshot_job
        assert job.state == "Submitted"
        return await hx.client.wait(job.id, timeout=30)

    sync, async_, normal = await asyncio.gather(
        timed(hx.client.submit(sync_request(bucket, key, "sync.jpg", time_ms))),
        timed(async_job()),
        timed(hx.client.submit(sync_request(bucket, "normal.mp4", "normal.jpg", 1000))),
    )
    job = normal[0].snapshot_job
    assert job.state == "Success", job.message
    assert Image.open(hx.data_dir / bucket / "normal.jpg").format == "JPEG"
    return sync, async_


@pytest.mark.parametrize(
    "name",
    [
        "hls-absolute",
        "hls-parent",
        "hls-file-url",
        "hls-canary",
        "hls-canary-m3u8",
        "ffconcat-sibling",
        "ffconcat-parent",
        "ffconcat-canary",
        "random-bytes",
        "zero-bytes",
        "truncated",
        "truncated-head",
        "no-moov",
        "png-bomb",
        "png-bomb-as-mp4",
        "huge-frames",
        "lying-dimensions",
        "many-streams",
        "audio-only",
        "too-long",
    ],
)
async def test_hostile_input_fails_cleanly_beside_a_normal_job(hx: Hostile, name: str) -> None:
    item = hx.corpus.items[name]
    bucket = hx.bucket(item)
    before = hx.files(bucket)
    started_before = hx.app.engine.started

    (sync, sync_s), (final, async_s) = await run_beside_a_normal_job(hx, bucket, item.key, item.time_ms)
    print(f"{name}: sync failed after {sync_s:.2f} s, async after {async_s:.2f} s")

    assert isinstance(sync, MpsApiError), sync
    assert (sync.status, sync.code) == (grpc.StatusCode.INVALID_ARGUMENT, BAD), sync
    assert item.expect in sync.message, sync.message
    assert_no_leak(hx, sync.message)
    assert sync_s < SYNC_LIMIT_S + SLACK_S
    recorded = await hx.client.get(sync.job_id)
    assert (recorded.state, recorded.code) == ("Fail", BAD)

    assert isinstance(final, res.SnapshotJob), final
    assert (final.state, final.code) == ("Fail", BAD), final
    assert item.expect in final.message, final.message
    assert_no_leak(hx, final.message)
    assert final.count == 0 and not final.images
    # Probe-stage items cost one ffprobe; decode-stage ones at most three ffmpeg runs.
    runs = 1 if item.stage == "probe" else 4
    assert async_s < runs * RUN_LIMIT_S + SLACK_S

    # Nothing written but the normal job's image; nothing left running or lying around.
    assert hx.files(bucket) == sorted([*before, "normal.jpg"])
    assert hx.leftovers() == ([], [])
    assert hx.canary.connections == 0, hx.canary.requests
    if item.stage == "probe":
        # The normal job's ffprobe and ffmpeg, and one ffprobe each for the hostile sync and
        # async jobs (failed probes are not cached): no ffmpeg ever ran on the hostile file.
        assert hx.app.engine.started - started_before == 2 + 2


async def _ffprobe(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ffprobe",
        "-v",
        "error",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    return out.decode()


async def test_the_corpus_is_hostile_to_an_unhardened_ffprobe(hx: Hostile, tmp_path: Path) -> None:
    """Control: without the whitelists the same kind of file makes ffprobe read another file,
    and, fetched over HTTP (as from object storage), call an internal URL; with the service's
    argv neither happens. So the tests above would catch a regression."""
    show = ("-show_entries", "format=format_name,duration", "-of", "csv=p=0")
    local = tmp_path / "video.mp4"
    local.write_bytes(hostile.playlist(str(hx.corpus.leak)))
    assert (await _ffprobe(*show, str(local))).startswith("hls,2.")  # it read the leak file
    internal = hostile.Canary()
    internal_url = await internal.start()
    served = hostile.Canary({"/video.mp4": hostile.playlist(f"{internal_url}/internal.ts")})
    served_url = await served.start()
    try:
        await _ffprobe(*show, f"{served_url}/video.mp4")
        assert internal.connections >= 1  # SSRF by default
        seen = internal.connections
        with pytest.raises(ResourceContentBad, match=r"format \(hls\)"):
            await probe(
                "ffprobe",
                f"{served_url}/video.mp4",
                ("http", "tcp"),
                ffmpeg_limits(20),
                probe_limits(),
                cwd=str(tmp_path),
            )
        assert internal.connections == seen
        with pytest.raises(ResourceContentBad, match=r"format \(hls\)"):
            await probe("ffprobe", f"file:{local}", ("file",), ffmpeg_limits(20), probe_limits(), cwd=str(tmp_path))
    finally:
        await served.stop()
        await internal.stop()


# --- sources that stall -----------------------------------------------------------------


async def test_a_fifo_object_is_refused_before_any_process_starts(hx: Hostile) -> None:
    bucket = hx.bucket()
    os.mkfifo(hx.data_dir / bucket / "pipe.mp4")
    started = hx.app.engine.started
    for request in (
        sync_request(bucket, "pipe.mp4", "x.jpg", 0),
        submit_request(bucket, "pipe.mp4", out="a/{Count}.jpg", num=1),
    ):
        with pytest.raises(MpsApiError) as caught:
            await asyncio.wait_for(hx.client.submit(request), 5)
        assert caught.value.status == grpc.StatusCode.NOT_FOUND
        assert "not a file" in caught.value.message
    assert hx.app.engine.started == started


@contextlib.contextmanager
def storage_vouching_for(hx: Hostile, prefix: str) -> Iterator[None]:
    """Make the local backend's HEAD answer for keys starting with ``prefix`` whatever they
    are (as a remote store does), with a fixed version, so reads of a FIFO reach ffmpeg:
    the local stand-in for a storage server that stops sending bytes."""
    real = hx.app.local.head

    async def head(bucket: str, key: str) -> ObjectInfo:
        if key.startswith(prefix):
            return ObjectInfo(size=1 << 20, version="pinned")
        return await real(bucket, key)

    hx.app.local.head = head  # type: ignore[method-assign]
    try:
        yield
    finally:
        del hx.app.local.head


async def test_a_source_that_never_sends_a_byte_is_killed_at_the_limit(hx: Hostile) -> None:
    bucket = hx.bucket()
    os.mkfifo(hx.data_dir / bucket / "stall.mp4")  # nobody ever writes: ffprobe blocks in open()
    with storage_vouching_for(hx, "stall"):
        (sync, sync_s), (final, async_s) = await run_beside_a_normal_job(hx, bucket, "stall.mp4", 0)
    # Sync: the server limit ends the call (and kills ffprobe).
    assert isinstance(sync, MpsApiError), sync
    assert (sync.status, sync.code) == (grpc.StatusCode.DEADLINE_EXCEEDED, "SnapshotTimeOut")
    assert SYNC_LIMIT_S - 0.3 < sync_s < SYNC_LIMIT_S + SLACK_S
    # Async: ffprobe's wall-clock limit.
    assert (final.state, final.code) == ("Fail", BAD), final
    assert f"Probing the input took longer than {RUN_LIMIT_S:g} s" in final.message
    assert RUN_LIMIT_S - 0.3 < async_s < RUN_LIMIT_S + SLACK_S
    assert hx.leftovers() == ([], [])
    assert "sync.jpg" not in hx.files(bucket) and not (hx.data_dir / bucket / "async").exists()


async def test_a_source_that_stalls_after_the_probe_kills_ffmpeg_at_the_limit(hx: Hostile) -> None:
    bucket = hx.bucket()
    path = hx.data_dir / bucket / "stall-later.mp4"
    shutil.copyfile(hx.corpus.normal, path)
    with storage_vouching_for(hx, "stall"):
        ok = await hx.client.submit(sync_request(bucket, "stall-later.mp4", "first.jpg", 500))
        assert ok.snapshot_job.state == "Success"  # and the probe result is cached
        path.unlink()
        os.mkfifo(path)  # the same "object", now never delivering a byte: ffmpeg blocks
        (sync, sync_s), (final, async_s) = await run_beside_a_normal_job(hx, bucket, "stall-later.mp4", 500)
    assert isinstance(sync, MpsApiError), sync
    assert (sync.status, sync.code) == (grpc.StatusCode.DEADLINE_EXCEEDED, "SnapshotTimeOut")
    assert SYNC_LIMIT_S - 0.3 < sync_s < SYNC_LIMIT_S + SLACK_S
    assert (final.state, final.code) == ("Fail", BAD), final
    assert f"Decoding the input took longer than {RUN_LIMIT_S:g} s" in final.message
    assert RUN_LIMIT_S - 0.3 < async_s < RUN_LIMIT_S + SLACK_S
    assert hx.leftovers() == ([], [])
    assert "sync.jpg" not in hx.files(bucket) and not (hx.data_dir / bucket / "async").exists()


# --- the probe's limits and messages ------------------------------------------------------


def _probe_json(streams: int = 1, width: int = 640, height: int = 360, duration: str = "10") -> bytes:
    video = f'{{"codec_type":"video","width":{width},"height":{height},"duration":"{duration}"}}'
    others = ',{"codec_type":"audio"}' * (streams - 1)
    return f'{{"streams":[{video}{others}],"format":{{"format_name":"mov"}}}}'.encode()


def test_probe_limits_name_the_limit_and_the_value() -> None:
    limits = ProbeLimits(max_streams=4, max_pixels=1920 * 1080, max_duration_s=60)
    assert parse_probe(_probe_json(streams=4, width=1920, height=1080, duration="60"), limits).stream_count == 4
    cases = [
        (_probe_json(streams=5), "has 5 streams, more than the server's limit of 4"),
        (_probe_json(width=1921, height=1080), "1921x1080 (2074680 pixels), more than the server's limit of 2073600"),
        (_probe_json(duration="60.5"), "60.500 s long, more than the server's limit of 60 s"),
        (b'{"streams":[{"codec_type":"audio"}]}', "no video stream"),
        (b'{"streams":[{"codec_type":"video","width":0,"height":0,"duration":"1"}]}', "no picture size"),
        (b"[]", "could not be probed"),
    ]
    for output, message in cases:
        with pytest.raises(ResourceContentBad, match=re.escape(message)):
            parse_probe(output, limits)
    # When -max_pixels refused the picture ffprobe says 0x0; its log has the real size, and
    # ffmpeg's own ceiling (8192x8192) applies whatever the setting.
    log = "[mjpeg @ 0x5] [IMGUTILS @ 0x7f] Picture size 9000x9000 exceeds specified max pixel count 67108864"
    zero = b'{"streams":[{"codec_type":"video","width":0,"height":0,"duration":"1"}]}'
    with pytest.raises(
        ResourceContentBad, match=r"9000x9000 \(81000000 pixels\), more than the server's limit of 67108864"
    ):
        parse_probe(zero, probe_limits(max_pixels=10**9), log)


def test_probe_errors_never_carry_paths_or_urls() -> None:
    file_url = "file:/srv/data/b/k.mp4"
    presigned = "https://s3.example/b/k?X-Amz-Signature=abc"
    logs = {
        f"[hls @ 0x55d0] Format not on whitelist 'mov,matroska'\n{file_url}: Invalid argument": "format (hls)",
        f"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x1] moov atom not found\n{file_url}: Invalid data found": "moov atom",
        "[srt @ 0x1] Codec (srt) not on whitelist 'h264'": "codec this server does not decode (srt)",
        f"[concat @ 0x1] Impossible to open '/etc/passwd'\n{presigned}: I/O error": "I/O error",
        "[http @ 0x1] HTTP error 403 Forbidden at http://10.0.0.5/x\nhttp://10.0.0.5/x: Server returned 403": "403",
        "": "unknown format",
    }
    for log, phrase in logs.items():
        text = _first_error(log)
        assert phrase in text, text
        for secret in ("/srv", "file:", "passwd", "s3.example", "Signature", "10.0.0.5", "http"):
            assert secret not in text, text


# --- outputs are checked before a job can succeed -------------------------------------------


def test_outputs_are_checked_before_publishing(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 48), "red").save(good, "JPEG")
    assert check_jpeg(good, 1 << 20) == (64, 48)
    png = tmp_path / "x.png"
    Image.new("RGB", (64, 48)).save(png, "PNG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path, message in [
        (tmp_path / "missing.jpg", "No frame could be decoded"),
        (empty, "No frame could be decoded"),
        (png, "not a JPEG"),
        (truncated, "not a whole JPEG"),
        (garbage, "not a whole JPEG"),
    ]:
        with pytest.raises(ResourceContentBad, match=message):
            check_jpeg(path, 1 << 20)
    with pytest.raises(ResourceContentBad, match="larger than 100 bytes"):
        check_jpeg(good, 100)


# --- containment of each run ----------------------------------------------------------------


def _alive(marker: str) -> list[int]:
    """Live (not zombie) sh/sleep processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker.encode() in cmd and os.path.basename(cmd.split(b"\0")[0]) in (b"sh", b"sleep"):
            found.append(int(entry))
    return found


def _marker() -> str:
    """A sleep duration no other process uses: its command line identifies our processes."""
    return f"{30 + int(uuid.uuid4().int % 10**6) / 10**7:.7f}"


LIMITS = process.Limits(wall_seconds=10, cpu_seconds=7, address_space_bytes=3 * 1024**3, open_files=99)


async def test_runs_get_no_shell_no_stdin_a_minimal_env_and_rlimits() -> None:
    # Arguments are passed as they are: no shell expands or splits them.
    echoed = await process.run(["/bin/echo", "$(id) `id`; a b|c > d"], limits=LIMITS)
    assert echoed.stdout == b"$(id) `id`; a b|c > d\n"
    stdin = await process.run(["readlink", "/proc/self/fd/0"], limits=LIMITS)
    assert stdin.stdout.strip() == b"/dev/null"
    env = await process.run(["env"], limits=LIMITS)
    assert sorted(line.split("=", 1)[0] for line in env.stdout.decode().splitlines()) == ["LC_ALL", "PATH"]
    rl = (await process.run(["cat", "/proc/self/limits"], limits=LIMITS)).stdout.decode()
    rows = {line[:26].strip(): line[26:].split()[:2] for line in rl.splitlines()[1:]}
    assert rows["Max cpu time"] == ["7", "7"]
    assert rows["Max address space"] == [str(3 * 1024**3)] * 2
    assert rows["Max file size"] == [str(LIMITS.file_size_bytes)] * 2
    assert rows["Max open files"] == ["99", "99"]
    assert rows["Max core file size"] == ["0", "0"]
    stat = (await process.run(["cat", "/proc/self/stat"], limits=LIMITS)).stdout.decode()
    pid = int(stat.split(" ", 1)[0])
    pgrp, session = (int(f) for f in stat.rsplit(")", 1)[1].split()[2:4])
    assert pid == pgrp == session != os.getsid(0)  # its own session and process group


async def test_wall_clock_limit_kills_the_whole_process_group() -> None:
    marker = _marker()
    start = time.monotonic()
    with pytest.raises(process.ProcessTimeout):
        await process.run(
            ["sh", "-c", f"sleep {marker} & sleep {marker}; wait"], limits=dataclasses.replace(LIMITS, wall_seconds=0.5)
        )
    assert time.monotonic() - start < 1.5
    assert _alive(marker) == []  # the child and its grandchild, reaped


async def test_cancelling_a_run_kills_the_whole_process_group() -> None:
    marker = _marker()
    task = asyncio.create_task(process.run(["sh", "-c", f"sleep {marker} & sleep {marker}; wait"], limits=LIMITS))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(_alive(marker)) >= 2:
            break
    assert len(_alive(marker)) >= 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _alive(marker) == []


async def test_cpu_and_memory_limits_stop_a_run() -> None:
    start = time.monotonic()
    # Killed by a limit: a fault of the server's settings, not of the input (retried for async jobs).
    with pytest.raises(ProcessKilled) as killed:
        await process.run(["sh", "-c", "while :; do :; done"], limits=dataclasses.replace(LIMITS, cpu_seconds=1))
    assert killed.value.code == "InternalError.ProcessKilled"
    assert f"signal {signal.SIGXCPU}" in killed.value.message or f"signal {signal.SIGKILL}" in killed.value.message
    assert time.monotonic() - start < 5
    alloc = await process.run(
        [sys.executable, "-c", "bytearray(400 * 1024 * 1024)"],
        limits=dataclasses.replace(LIMITS, address_space_bytes=200 * 1024**2),
    )
    assert alloc.returncode != 0 and "MemoryError" in alloc.stderr


async def test_a_png_bomb_is_stopped_by_the_memory_limit_even_without_max_pixels(hx: Hostile) -> None:
    """Past every whitelist (here: none), RLIMIT_AS still bounds a decoder: 400 MB of
    address space lets ffmpeg decode a normal video but not the 16000x16000 PNG (~320 MB)."""
    limits = dataclasses.replace(LIMITS, address_space_bytes=400 * 1024**2)

    def argv(path: Path) -> list[str]:
        single = ("-threads", "1")  # the address space used does not depend on the core count
        return ["ffmpeg", "-nostdin", "-v", "error", *single, "-i", f"file:{path}", *single, "-f", "null", "-"]

    normal = await process.run(argv(hx.corpus.normal), limits=limits)
    assert normal.returncode == 0, normal.stderr
    bomb = await process.run(argv(hx.corpus.items["png-bomb"].path), limits=limits)
    assert bomb.returncode != 0 and "Cannot allocate memory" in bomb.stderr, bomb.stderr


async def test_runs_die_with_the_server() -> None:
    """A server killed with SIGKILL cannot clean up: pdeathsig takes its processes with it."""
    marker = _marker()
    script = (
        "import asyncio, sys\n"
        "from mps_snapshot_server.media import process\n"
        "async def main():\n"
        "    limits = process.Limits(60, cpu_seconds=60, address_space_bytes=2**32)\n"
        f"    task = asyncio.create_task(process.run(['sleep', '{marker}'], limits=limits))\n"
        "    await asyncio.sleep(0.3)\n"
        "    print('ready', flush=True)\n"
        "    await task\n"
        "asyncio.run(main())\n"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    assert server.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert (await server.stdout.readline()).strip() == b"ready"
        assert len(_alive(marker)) == 1
        server.kill()
        await server.wait()
        for _ in range(100):
            if not _alive(marker):
                break
            await asyncio.sleep(0.02)
        assert _alive(marker) == []
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_runs_fail_closed_without_their_wrappers(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(process.shutil, "which", lambda name: None if name == "prlimit" else real_which(name))
    marker = _marker()
    with pytest.raises(process.ContainmentUnavailable):
        await process.run(["sleep", marker], limits=LIMITS)
    assert _alive(marker) == []


def test_only_the_process_module_starts_processes() -> None:
    """No shell anywhere, and no process started outside server/mps_snapshot_server/media/process.py."""
    root = ROOT / "server" / "mps_snapshot_server"
    spawners = {"create_subprocess_exec", "create_subprocess_shell", "system", "popen", "Popen", "run", "call"}
    spawners |= {"check_call", "check_output", "getoutput", "getstatusoutput", "fork", "forkpty"}
    spawners |= {name for name in dir(os) if name.startswith(("exec", "spawn", "posix_spawn"))}
    starts: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("subprocess", "pty") for n in names), path
            if isinstance(node, ast.Call):
                assert not any(k.arg == "shell" for k in node.keywords), path
                func = node.func
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    # asyncio.run runs a coroutine, not a process (the server's CLI uses it).
                    coroutine_runner = func.value.id == "asyncio" and func.attr == "run"
                    if func.value.id in ("os", "asyncio") and func.attr in spawners and not coroutine_runner:
                        starts.setdefault(str(path.relative_to(root)), []).append(func.attr)
    assert starts == {"media/process.py": ["create_subprocess_exec"]}
