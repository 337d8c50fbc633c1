"""Running another program from a test while the server lives on the test's event loop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


async def run_child(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a command from the repository root in its own process group (killed whole on
    timeout); its exit code and combined output. Awaited, never blocking: the server under
    test answers on this same loop."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


class ServerProcess:
    """``python -m mps_snapshot_server`` in its own session, on a port the OS picks (read from its log);
    ``settings`` become MPS_SNAPSHOT_* variables, ``args`` command-line flags."""

    def __init__(self, data_dir: Path, *args: str, **settings: str) -> None:
        self.data_dir = data_dir
        self.args = args
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
            sys.executable,
            "-m",
            "mps_snapshot_server",
            *self.args,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
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
