"""Crash and restart: a job a Submit returned OK for is never lost, runs again after a
kill -9, and ends once with exactly its outputs; no ffmpeg outlives the server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from client import SnapshotClient
from client.api import snapshot_service_pb2 as sps
from tests.conftest import put
from tests.media import Video
from tests.test_async_jobs import live_ffmpeg, submit_request


class ServerProcess:
    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drainer: asyncio.Task[None] | None = None

    async def start(self) -> int:
        env = {
            **os.environ,
            "MPS_SNAPSHOT_DATA_DIR": str(self.data_dir),
            "MPS_SNAPSHOT_LISTEN": "127.0.0.1:0",
            **{f"MPS_SNAPSHOT_{k.upper()}": v for k, v in self.settings.items()},
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", env=env, stderr=asyncio.subprocess.PIPE, start_new_session=True
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                assert line, "server exited before listening"
                if match := re.search(r"\(port (\d+)\)", line):
                    self.port = int(match.group(1))
                    break
        self._drainer = asyncio.create_task(self._drain())
        return self.port

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(20):
            return await self.proc.wait()


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
            job = (await c.submit(submit_request("crash", "slow.mp4", interval=2, num=12))).snapshot_job
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
