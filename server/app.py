"""The composition root: opens the store, storage and media engine, starts the gRPC
server, and shuts everything down in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import signal
from pathlib import Path

from grpc import aio

from server.config import Settings
from server.http.listener import HttpListener, tls_context
from server.http.mps_rpc import MpsRpc
from server.jobs import JobService
from server.media.engine import MediaEngine
from server.notify import HttpNotifier, NotificationService
from server.pipelines import PipelineRegistry
from server.rpc import server as rpc_server
from server.rpc.calls import RequestIdFilter
from server.runner import JobRunner
from server.scheduler import Scheduler
from server.security import bootstrap
from server.security.authn import Authenticator, Principal
from server.security.guard import Guard
from server.security.policy import Effect, Statement
from server.security.ratelimit import RateLimiter
from server.security.secrets import principal_keys
from server.storage.local import LocalStore
from server.storage.router import Route, StorageRouter
from server.storage.s3 import S3Options, S3Store, open_stores
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
    """Routes in order; S3 routes with equal settings share one S3Store (one client)."""
    routes = []
    s3_stores: dict[S3Options, S3Store] = {}
    for route in settings.storage:
        if route.kind == "local":
            routes.append(Route(route.location, local))
        elif route.kind == "s3":
            options = S3Options.from_route(route, settings.max_input_bytes)
            routes.append(Route(route.location, s3_stores.setdefault(options, S3Store(options))))
        else:
            raise ValueError(f"storage route {route.location!r}: unknown kind {route.kind!r} (use local or s3)")
    return StorageRouter(routes)


def with_bootstrap_key(settings: Settings) -> Settings:
    """The settings with the bootstrap principal when a key file is set and no principals are."""
    if not settings.bootstrap_key_file or settings.principals:
        return settings
    path = Path(settings.bootstrap_key_file)
    key_id, secret, created = bootstrap.ensure_key(path)
    log.warning(
        "no principals configured: %s access key %s, secret in %s (mode 0600); callers must sign with it "
        "(mps-snapshot --access-key-file %s)",
        "created" if created else "using",
        key_id,
        path,
        path,
    )
    return dataclasses.replace(settings, principals=(bootstrap.bootstrap_principal(key_id, secret, path),))


def check_exposure(settings: Settings) -> None:
    """Safe defaults: without principals the server answers anyone who can reach it, so it
    may only listen on loopback unless the operator says otherwise (gRPC and HTTP alike)."""
    for address in (settings.listen, settings.http_listen):
        if address:
            _check_address(settings, address)


def _check_address(settings: Settings, address: str) -> None:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not settings.principals and not settings.allow_insecure:
        raise SystemExit(
            f"refusing to listen on {address} without authentication: configure [[principals]] "
            "(see docs/security.md), listen on 127.0.0.1, or set allow_insecure = true "
            "(MPS_SNAPSHOT_ALLOW_INSECURE=1) if something else protects this port."
        )


def build_guard(settings: Settings) -> Guard:
    principals = []
    for p in settings.principals:
        key_hash, secret = principal_keys(p.access_key_id, p.access_key_hash, p.access_key_secret_file)
        principals.append(
            Principal(
                name=p.name or p.access_key_id or p.cert_cn,
                access_key_id=p.access_key_id,
                key_hash=key_hash,
                cert_cn=p.cert_cn,
                statements=tuple(Statement(Effect(st.effect), st.actions, st.resources) for st in p.statements),
                secret=secret,
            )
        )
    limits = {"submit": settings.rate_submit, "query": settings.rate_query, "pipeline": settings.rate_pipeline}
    return Guard(Authenticator(principals), RateLimiter(limits), settings.max_watch_streams)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._server: aio.Server | None = None
        self._stopped = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self.http: HttpListener | None = None
        self.mps_rpc: MpsRpc | None = None
        self.http_port = 0

    async def start(self) -> int:
        s = self.settings = with_bootstrap_key(self.settings)
        check_exposure(s)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(s.db_path)
        self.local = LocalStore(s.data_dir)
        self.local.sweep()
        self.router = build_router(s, self.local)
        await open_stores(r.store for r in self.router.routes)
        self.engine = MediaEngine(
            ffmpeg=s.resolved_ffmpeg(),
            local_ffmpeg=s.resolved_local_ffmpeg(),
            ffprobe=s.resolved_ffprobe(),
            tmp_dir=s.tmp_dir,
            max_processes=s.max_ffmpeg_processes,
            cpu_seconds=s.ffmpeg_cpu_s,
            memory_bytes=s.ffmpeg_memory_mb * 1024 * 1024,
            max_image_bytes=s.max_image_bytes,
            probe_cache_entries=s.probe_cache_entries,
            max_input_streams=s.max_input_streams,
            max_input_pixels=s.max_input_pixels,
            max_duration_s=s.max_duration_s,
            sync_reserved=s.sync_reserved_processes,
            job_memory_mb=s.job_memory_mb,
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
        self.guard = build_guard(s)
        tls = bool(s.tls_cert_file)
        self._server, self.health = rpc_server.build(
            self.jobs,
            self.pipelines,
            self.guard,
            reflection_enabled=s.reflection,
            max_concurrent_rpcs=s.max_concurrent_rpcs,
            client_certs_required=tls and bool(s.tls_client_ca_file),
        )
        if tls:
            creds = rpc_server.credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            self.port = self._server.add_secure_port(s.listen, creds)
        else:
            self.port = self._server.add_insecure_port(s.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {s.listen}")
        await self._server.start()
        await rpc_server.set_serving(self.health, True)
        self._health_task = asyncio.create_task(self._watch_store())
        if s.http_listen:
            await self._start_http()
        log.info("listening on %s (port %d), data in %s", s.listen, self.port, s.data_dir.resolve())
        return self.port

    async def _start_http(self) -> None:
        """The HTTP listener (MPS's HTTP RPC protocol on /; other routes mount beside it)."""
        s = self.settings
        tls = tls_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file) if s.tls_cert_file else None
        self.http = HttpListener(s.http_listen, shutdown_grace_s=s.shutdown_grace_s, ssl_context=tls)
        self.mps_rpc = MpsRpc(self.jobs, self.pipelines, self.guard, max_in_flight=s.max_concurrent_rpcs)
        self.http.mount(self.mps_rpc.add_routes)
        self.http.fallback(self.mps_rpc.not_found)
        self.http_port = await self.http.start()
        log.info("HTTP RPC listening on %s (http port %d)", s.http_listen, self.http_port)

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
        stopping = [self.http.stop()] if self.http is not None else []
        if self._server is not None:
            stopping.append(self._server.stop(grace))
        await asyncio.gather(*stopping)
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
