"""What the gRPC health service reports: SERVING only while the server can do its work.

A load balancer should stop sending calls to an instance that cannot record jobs or write
outputs, and to one that is about to stop. The monitor checks, every ``interval`` seconds,
that the job store can commit a write (a read alone still works on a full disk) and that
the data disk has ``min_free_bytes`` free; faults reported by the store or by jobs (a full
disk met by ffmpeg or by a write) turn health NOT_SERVING at once and hold for at least
one interval, until a check finds the fault gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(
        self,
        *,
        ping: Callable[[], Awaitable[bool]],
        disk: Path,
        min_free_bytes: int,
        publish: Callable[[bool], Awaitable[None]],
        interval: float,
    ) -> None:
        self._ping = ping
        self.disk = disk
        self.min_free_bytes = min_free_bytes
        self._publish = publish
        self.interval = interval
        #: Fault name -> (what happened, when it was last seen, monotonic).
        self.faults: dict[str, tuple[str, float]] = {}
        self.draining = False
        self.serving: bool | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def report(self, name: str, detail: str) -> None:
        """A fault seen in the work itself (a full disk, a store write refused)."""
        if name not in self.faults:
            log.warning("health: %s (%s)", name, detail)
        self.faults[name] = (detail, time.monotonic())
        self._wake.set()

    def drain(self) -> None:
        """Shutting down: NOT_SERVING from now on."""
        self.draining = True
        self._wake.set()

    async def check(self) -> bool:
        now = time.monotonic()
        found: dict[str, str] = {}
        if not await self._ping():
            found["job store"] = "the job store cannot commit a write"
        try:
            st = await asyncio.to_thread(os.statvfs, self.disk)
            free = st.f_bavail * st.f_frsize
            if free < self.min_free_bytes:
                found["disk"] = f"{free} bytes free on the data disk, under the {self.min_free_bytes} required"
        except OSError as exc:
            found["disk"] = f"the data disk cannot be checked ({exc.strerror})"
        for name, detail in found.items():
            self.report(name, detail)
        for name, (_, seen) in list(self.faults.items()):
            if name not in found and now - seen >= self.interval:
                log.warning("health: %s recovered", name)
                del self.faults[name]
        self._wake.clear()
        return await self._apply()

    async def _apply(self) -> bool:
        serving = not self.draining and not self.faults
        if serving != self.serving:
            self.serving = serving
            await self._publish(serving)
        return serving

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            if self._wake.is_set():
                self._wake.clear()
                await self._apply()  # a reported fault or a drain shows at once
                continue
            try:
                await self.check()
            except Exception:  # the monitor must outlive anything a check meets
                log.exception("health check failed")

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
