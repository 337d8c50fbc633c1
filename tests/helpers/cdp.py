"""A small Chrome DevTools Protocol client for tests: starts Debian's headless Chromium with
a fresh profile, opens a page, and sends commands over a websocket (aiohttp)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: run scripts/setup.sh --dev (Debian package chromium)")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("sessionId") == self.session_id:
                await self._events.put(data)

    async def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session_id
        await self.ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def navigate(self, url: str) -> None:
        while not self._events.empty():
            self._events.get_nowait()
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(30):
            while (await self._events.get()).get("method") != "Page.loadEventFired":
                pass

    async def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        async with asyncio.timeout(timeout):
            while True:
                found = await self.evaluate(expression)
                if found:
                    return found
                await asyncio.sleep(0.1)

    async def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": clip is None}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        data = base64.b64decode((await self.send("Page.captureScreenshot", **params))["data"])
        await asyncio.to_thread(_write, path, data)
        return data

    async def mouse(self, kind: str, x: float, y: float) -> None:
        await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def browser(profile: Path, extra_headers: dict[str, str] | None = None) -> AsyncIterator[Page]:
    """Headless Chromium with a fresh profile in ``profile``; one page, Page events on."""
    proc = await asyncio.create_subprocess_exec(
        chromium_path(),
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                assert line, "Chromium exited before it listened for DevTools"
                if match := re.search(r"DevTools listening on (ws://\S+)", line):
                    endpoint = match.group(1)
                    break

        async def drain_stderr() -> None:
            assert proc.stderr is not None
            while await proc.stderr.readline():
                pass

        drain = asyncio.create_task(drain_stderr())
        async with aiohttp.ClientSession() as http, http.ws_connect(endpoint, max_msg_size=0) as ws:
            page = Page(ws, "")
            target = await page.send("Target.createTarget", session=False, url="about:blank")
            attached = await page.send(
                "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
            )
            page.session_id = attached["sessionId"]
            await page.send(
                "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
            )
            await page.send("Page.enable")
            await page.send("Runtime.enable")
            if extra_headers:
                await page.send("Network.enable")
                await page.send("Network.setExtraHTTPHeaders", headers=extra_headers)
            try:
                yield page
            finally:
                await page.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if drain is not None:
            drain.cancel()
