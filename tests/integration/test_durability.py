"""Crash and restart: a job a Submit returned OK for is never lost, runs again after a
kill -9, and ends once with exactly its outputs; no ffmpeg outlives the server."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from tests.conftest import put
from tests.helpers.children import ServerProcess
from tests.helpers.media import Video
from tests.integration.test_async_jobs import live_ffmpeg, submit_request


async def decoding(data_dir: Path) -> None:
    """Wait until an ffmpeg of this server is at work."""
    async with asyncio.timeout(30):
        while not live_ffmpeg(str(data_dir)):  # noqa: ASYNC110 - polls /proc
            await asyncio.sleep(0.01)


async def first_image(client: SnapshotClient, job_id: str) -> None:
    async for event in client.watch(job_id, timeout=60):
        if event.kind == sps.SnapshotJobEvent.KIND_IMAGE_WRITTEN:
            return


async def test_kill_9_mid_job_then_restart_finishes_it_once(tmp_path: Path, slow_video: Video) -> None:
    put(tmp_path, "crash", "slow.mp4", slow_video.path)
    server = ServerProcess(tmp_path)
    port = await server.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            job = (await c.submit(submit_request("crash", "slow.mp4", time=500, interval=2, num=12))).snapshot_job
            await decoding(tmp_path)
            assert (await c.get(job.id)).state == "Snapshoting"
        await server.kill(signal.SIGKILL)
        async with asyncio.timeout(3):
            while live_ffmpeg(str(tmp_path)):  # noqa: ASYNC110 - polls /proc
                await asyncio.sleep(0.05)  # ffmpeg dies with its server (pdeathsig)
        port = await server.start()
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            final = await c.wait(job.id, timeout=120)
        assert final.state == "Success", final.message
        assert final.attempts == 2
        assert final.count == 12
        names = sorted(p.name for p in (tmp_path / "crash" / "seq").iterdir())
        assert names == [f"{n:05d}.jpg" for n in range(1, 13)]
        assert list((tmp_path / ".uploads").iterdir()) == []  # no half-written object anywhere
        assert list((tmp_path / ".tmp").iterdir()) == []
    finally:
        await server.kill(signal.SIGKILL)


async def test_a_job_that_dies_on_every_attempt_ends_failed(tmp_path: Path, slow_video: Video) -> None:
    put(tmp_path, "crash", "slow.mp4", slow_video.path)
    server = ServerProcess(tmp_path, max_attempts="1")
    port = await server.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            job = (await c.submit(submit_request("crash", "slow.mp4", interval=1, num=28))).snapshot_job
            await first_image(c, job.id)
        await server.kill(signal.SIGKILL)
        port = await server.start()
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            final = await c.wait(job.id, timeout=30)
        assert final.state == "Fail" and final.attempts == 1
        assert "interrupted" in final.message
    finally:
        await server.kill(signal.SIGKILL)


async def test_sigterm_releases_a_running_job_without_counting_the_attempt(tmp_path: Path, slow_video: Video) -> None:
    put(tmp_path, "drain", "slow.mp4", slow_video.path)
    server = ServerProcess(tmp_path, shutdown_grace_s="0.5")
    port = await server.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            job = (await c.submit(submit_request("drain", "slow.mp4", interval=2, num=12))).snapshot_job
            await first_image(c, job.id)
        assert await server.kill(signal.SIGTERM) == 0
        assert live_ffmpeg(str(tmp_path)) == []
        port = await server.start()
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            final = await c.wait(job.id, timeout=120)
        assert final.state == "Success" and final.attempts == 1 and final.count == 12
    finally:
        await server.kill(signal.SIGKILL)
