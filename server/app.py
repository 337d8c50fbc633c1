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

from server.cluster import wiring
from server.cluster.fencing import fenced
from server.cluster.guard import ClusterGuard
from server.cluster.scheduler import ClusterScheduler
from server.config import Settings
from server.domain.errors import DiskFull, MpsError
from server.health import HealthMonitor
from server.http.listener import HttpListener, tls_context
from server.http.mps_rpc import MpsRpc
from server.jobs import JobService
from server.media.engine import MediaEngine
from server.notify import HttpNotifier, NotificationService
from server.observability import Telemetry
from server.observability import logging as log_setup
from server.observability.metrics import Metrics
from server.observability.storage import ObservedStore
from server.observability.tracing import Tracing
from server.pipelines import PipelineRegistry
from server.rpc import server as rpc_server
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
from server.store.base import Store
from server.store.datalock import DataDirLock
from server.store.postgres import PostgresStore
from server.store.sqlite import SqliteStore

log = logging.getLogger("mps_snapshot")


def configure_logging(level: str, fmt: str = "text") -> None:
    log_setup.configure(level, fmt)


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


def build_guard(settings: Settings, postgres: PostgresStore | None = None) -> Guard:
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
    if postgres is not None:
        return ClusterGuard(Authenticator(principals), limits, settings.max_watch_streams, postgres)
    return Guard(Authenticator(principals), RateLimiter(limits), settings.max_watch_streams)


class App:
    def __init__(self, settings: Settings, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.port = 0
        #: The HTTP listener's port (0: none configured).
        self.http_port = 0
        self.http: HttpListener | None = None
        # Tests pass their own Tracing (an in-memory exporter); otherwise the settings decide.
        self.telemetry = Telemetry(
            Metrics(), tracing or Tracing.from_settings(settings.trace_exporter, settings.otlp_endpoint)
        )
        self._server: aio.Server | None = None
        self._stopped = asyncio.Event()
        self.mps_rpc: MpsRpc | None = None

    async def start(self) -> int:
        s = self.settings = with_bootstrap_key(self.settings)
        check_exposure(s)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._data_lock = DataDirLock(s.data_dir)
        self._data_lock.acquire()
        self.postgres: PostgresStore | None = None
        self.store: Store
        if s.database_url:
            wiring.check_settings(s)
            self.store = self.postgres = await wiring.open_store(s)
        else:
            self.store = SqliteStore(s.db_path)
        self.local = LocalStore(s.data_dir)
        self.local.sweep()
        self.router = build_router(s, self.local)
        await open_stores(r.store for r in self.router.routes)
        if self.postgres is not None:
            self.router = fenced(self.router)  # a replica that lost a job's lease publishes nothing
        backends = {id(self.local): "local"}
        self.router.routes = [
            Route(r.pattern, ObservedStore(r.store, backends.get(id(r.store), "s3"), self.telemetry))
            for r in self.router.routes
        ]
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
            telemetry=self.telemetry,
            job_memory_mb=s.job_memory_mb,
            warm_workers=s.resolved_warm_workers(),
            warm_worker_requests=s.warm_worker_requests,
        )
        self.engine.sweep()
        self.engine.start_warm()
        self.pipelines = PipelineRegistry(
            self.store, default_max_jobs=s.pipeline_max_concurrent_jobs, default_capacity=s.pipeline_queue_capacity
        )
        if self.postgres is not None:
            self.pipelines.shared = True
            async with self.postgres.startup_lock():  # one default pipeline however many replicas start
                await self.pipelines.load()
        else:
            await self.pipelines.load()
        self.jobs = JobService(
            store=self.store,
            router=self.router,
            engine=self.engine,
            pipelines=self.pipelines,
            sync_timeout_s=s.sync_timeout_s,
            max_sprite_pixels=s.max_sprite_pixels,
            telemetry=self.telemetry,
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
        self.scheduler: Scheduler | ClusterScheduler
        if self.postgres is not None:
            self.scheduler = ClusterScheduler(
                jobs=self.jobs,
                runner=self.runner,
                registry=self.pipelines,
                notifications=self.notifications,
                store=self.postgres,
                slots=s.replica_jobs or s.max_ffmpeg_processes,
                lease_s=s.lease_s,
                max_attempts=s.max_attempts,
            )
        else:
            self.scheduler = Scheduler(
                jobs=self.jobs,
                runner=self.runner,
                registry=self.pipelines,
                notifications=self.notifications,
                max_attempts=s.max_attempts,
                retry_backoff_s=s.fault_retry_backoff_s,
            )
        await self.scheduler.start()
        self.guard = build_guard(s, self.postgres)
        tls = bool(s.tls_cert_file)
        self._server, self.health = rpc_server.build(
            self.jobs,
            self.pipelines,
            self.guard,
            reflection_enabled=s.reflection,
            max_concurrent_rpcs=s.max_concurrent_rpcs,
            client_certs_required=tls and bool(s.tls_client_ca_file),
            telemetry=self.telemetry,
            max_concurrent_streams=s.max_concurrent_streams or s.max_concurrent_rpcs,
        )
        if tls:
            creds = rpc_server.credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            self.port = self._server.add_secure_port(s.listen, creds)
        else:
            self.port = self._server.add_insecure_port(s.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {s.listen}")
        await self._server.start()
        health = self.health
        self.monitor = HealthMonitor(
            ping=self.store.ping,
            disk=s.data_dir,
            min_free_bytes=s.min_free_disk_mb * 1024 * 1024,
            publish=lambda serving: rpc_server.set_serving(health, serving),
            interval=s.health_interval_s,
        )
        self.store.fault_listeners.append(lambda detail: self.monitor.report("job store", detail))
        self.jobs.fault_listeners.append(self._job_fault)
        await self.monitor.start()
        if s.http_listen:
            await self._start_http()
        log.info("listening on %s (port %d), data in %s", s.listen, self.port, s.data_dir.resolve())
        return self.port

    def _job_fault(self, fault: MpsError) -> None:
        # A full disk is this instance's own state: health says so. A storage outage or
        # a killed ffmpeg is not (every instance shares the storage; limits are per run).
        if isinstance(fault, DiskFull):
            self.monitor.report("disk", fault.message)

    def pipeline_load(self, pipeline_id: str) -> tuple[int, int]:
        """(waiting, running) async jobs of a pipeline."""
        if not isinstance(self.scheduler, Scheduler):
            return (0, 0)  # PostgreSQL mode: queues live in the database, not in this replica
        runtime = self.scheduler.runtimes.get(pipeline_id)
        return (runtime.waiting, runtime.busy) if runtime is not None else (0, 0)

    async def _refresh_gauges(self, metrics: Metrics) -> None:
        metrics.jobs.clear()
        for (state, pipeline), count in (await self.store.count_by_state()).items():
            metrics.jobs.labels(state, pipeline).set(count)
        metrics.queue_depth.clear()
        metrics.running_jobs.clear()
        for pipeline_id in self.scheduler.runtimes if isinstance(self.scheduler, Scheduler) else ():
            waiting, running = self.pipeline_load(pipeline_id)
            metrics.queue_depth.labels(pipeline_id).set(waiting)
            metrics.running_jobs.labels(pipeline_id).set(running)

    async def _start_http(self) -> None:
        """The HTTP listener: MPS's HTTP RPC protocol on /, Prometheus metrics on /metrics and
        the web console on /console/."""
        from server import console
        from server.observability import metrics

        s = self.settings
        tls = tls_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file) if s.tls_cert_file else None
        self.http = HttpListener(s.http_listen, shutdown_grace_s=s.shutdown_grace_s, ssl_context=tls)
        self.telemetry.metrics.refreshers.append(self._refresh_gauges)
        self.http.mount(lambda web_app: metrics.add_routes(web_app, self.telemetry.metrics))
        self.http.mount(
            lambda web_app: console.add_routes(
                web_app,
                console.Console(
                    jobs=self.jobs,
                    pipelines=self.pipelines,
                    router=self.router,
                    guard=self.guard,
                    metrics=self.telemetry.metrics,
                    load=self.pipeline_load,
                    url_expiry_s=s.console_url_expiry_s,
                ),
            )
        )
        self.mps_rpc = MpsRpc(self.jobs, self.pipelines, self.guard, max_in_flight=s.max_concurrent_rpcs)
        self.http.mount(self.mps_rpc.add_routes)
        self.http.fallback(self.mps_rpc.not_found)
        self.http_port = await self.http.start()
        log.info("HTTP (MPS RPC on /, /metrics, /console/) on %s (port %d)", s.http_listen, self.http_port)

    async def stop(self, grace: float | None = None, notice: float = 0.0) -> None:
        """Stop: health NOT_SERVING for ``notice`` seconds (calls still served, so load
        balancers move away first), then close the port with ``grace`` for calls in flight."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down (notice %.1f s, grace %.1f s)", notice, grace)
        self.monitor.drain()
        await rpc_server.set_serving(self.health, False)
        if notice > 0:
            await asyncio.sleep(notice)
        await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        self.jobs.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        stopping = [self.http.stop()] if self.http is not None else []
        if self._server is not None:
            stopping.append(self._server.stop(grace))
        await asyncio.gather(*stopping)
        await self.jobs.wait_recorded(2.0)
        await self.scheduler.stop(max(0.0, deadline - loop.time()))
        await self.engine.close()
        await self.router.close()
        await self.store.close()
        self.telemetry.tracing.shutdown()
        self._data_lock.release()
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
        await self.stop(notice=self.settings.shutdown_notice_s)
