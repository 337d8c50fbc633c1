"""The composition root: opens the store, storage and media engine, starts the gRPC
server, and shuts everything down in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from grpc import aio

from server.config import Settings
from server.jobs import JobService
from server.media.engine import MediaEngine
from server.notify import HttpNotifier, NotificationService
from server.pipelines import PipelineRegistry
from server.rpc import server as rpc_server
from server.rpc.calls import RequestIdFilter
from server.runner import JobRunner
from server.scheduler import Scheduler
from server.storage.local import LocalStore
from server.storage.router import Route, StorageRouter
from server.store.sqlite import SqliteStore

log = logging.getLogger("mps_snapshot")


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_router(settings: Settings, local: LocalStore) -> StorageRouter:
    routes = []
    for route in settings.storage:
        if route.kind != "local":
            raise ValueError(f"storage route {route.location!r}: unknown kind {route.kind!r}")
        routes.append(Route(route.location, local))
    return StorageRouter(routes)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._server: aio.Server | None = None
        self._stopped = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(s.db_path)
        self.local = LocalStore(s.data_dir)
        self.router = build_router(s, self.local)
        self.engine = MediaEngine(
            ffmpeg=s.resolved_ffmpeg(),
            ffprobe=s.resolved_ffprobe(),
            tmp_dir=s.tmp_dir,
            max_processes=s.max_ffmpeg_processes,
            cpu_seconds=s.ffmpeg_cpu_s,
            memory_bytes=s.ffmpeg_memory_mb * 1024 * 1024,
            max_image_bytes=s.max_image_bytes,
            probe_cache_entries=s.probe_cache_entries,
        )
        self.engine.sweep()
        self.pipelines = PipelineRegistry(
            self.store, default_max_jobs=s.pipeline_max_concurrent_jobs, default_capacity=s.pipeline_queue_capacity
        )
        await self.pipelines.load()
        self.jobs = JobService(
            store=self.store,
            router=self.router,
            engine=self.engine,
            pipelines=self.pipelines,
            sync_timeout_s=s.sync_timeout_s,
            max_sprite_pixels=s.max_sprite_pixels,
        )
        self.notifications = NotificationService(
            jobs=self.jobs,
            registry=self.pipelines,
            notifier=HttpNotifier(),
            attempts=s.notify_attempts,
            backoff_s=s.notify_backoff_s,
        )
        self.runner = JobRunner(
            jobs=self.jobs,
            engine=self.engine,
            router=self.router,
            ffmpeg_timeout_s=s.ffmpeg_timeout_s,
            notify_wanted=self.notifications.wanted,
            max_sprite_pixels=s.max_sprite_pixels,
        )
        self.scheduler = Scheduler(
            jobs=self.jobs,
            runner=self.runner,
            registry=self.pipelines,
            notifications=self.notifications,
            max_attempts=s.max_attempts,
        )
        await self.scheduler.start()
        self._server, self.health = rpc_server.build(self.jobs, self.pipelines, reflection_enabled=s.reflection)
        self.port = self._server.add_insecure_port(s.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {s.listen}")
        await self._server.start()
        await rpc_server.set_serving(self.health, True)
        self._health_task = asyncio.create_task(self._watch_store())
        log.info("listening on %s (port %d), data in %s", s.listen, self.port, s.data_dir.resolve())
        return self.port

    async def _watch_store(self) -> None:
        # Health follows the job store: a server that cannot record jobs is not serving.
        serving = True
        while True:
            await asyncio.sleep(5)
            ok = await self.store.ping()
            if ok != serving:
                serving = ok
                await rpc_server.set_serving(self.health, ok)

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down (grace %.1f s)", grace)
        if self._health_task is not None:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._server is not None:
            await self._server.stop(grace)
        await self.scheduler.stop(max(0.0, deadline - loop.time()))
        await self.router.close()
        await self.store.close()
        log.info("stopped")

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()
