"""A minimal HTTP listener: an aiohttp application served on HOST:PORT next to gRPC.
Routes are mounted by their own packages (server.observability.metrics, server.console)."""

from __future__ import annotations

from aiohttp import web


class HttpListener:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._runner: web.AppRunner | None = None

    async def start(self, host_port: str) -> int:
        """Listen on ``host_port`` (port 0 picks a free one); return the port."""
        host, _, port = host_port.rpartition(":")
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
