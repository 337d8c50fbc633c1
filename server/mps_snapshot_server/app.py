"""The composition root: opens the store, storage and media engine, starts the gRPC
server, and shuts everything down in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
from pathlib import Path

from mps_snapshot_server.config import Settings
from mps_snapshot_server.domain.errors import DiskFull, MpsError
from mps_snapshot_server.http.listener import HttpListener, tls_context
from mps_snapshot_server.http.mps_rpc import MpsRpc
from mps_snapshot_server.media.engine import MediaEngine
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.observability import logging as log_setup
from mps_snapshot_server.observability.metrics import Metrics
from mps_snapshot_server.observability.storage import ObservedStore
from mps_snapshot_server.observability.tracing import Tracing
from mps_snapshot_server.rpc.server import GrpcServer
from mps_snapshot_server.security import bootstrap
from mps_snapshot_server.security.authn import Authenticator, Principal
from mps_snapshot_server.security.cluster import ClusterGuard
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.security.policy import Effect, Statement
from mps_snapshot_server.security.ratelimit import RateLimiter
from mps_snapshot_server.security.secrets import principal_keys
from mps_snapshot_server.service.health import HealthMonitor
from mps_snapshot_server.service.jobs import JobService
from mps_snapshot_server.service.pipelines import PipelineRegistry
from mps_snapshot_server.storage.fencing import fenced
from mps_snapshot_server.storage.local import LocalStore
from mps_snapshot_server.storage.router import Route, StorageRouter
from mps_snapshot_server.storage.s3 import S3Options, S3Store, open_stores
from mps_snapshot_server.store import replicas
from mps_snapshot_server.store.base import Store
from mps_snapshot_server.store.datalock import DataDirLock
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.store.postgres import PostgresStore
from mps_snapshot_server.store.sqlite import SqliteStore
from mps_snapshot_server.worker.notify import HttpNotifier, NotificationService
from mps_snapshot_server.worker.replica import ClusterScheduler
from mps_snapshot_server.worker.runner import JobRunner
from mps_snapshot_server.worker.scheduler import Scheduler

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
    try:
        key_id, secret, created = bootstrap.ensure_key(path)
    except OSError as exc:
        raise not_writable(path.parent, exc) from None
    log.warning(
        "no principals configured: %s access key %s, secret in %s (mode 0600); callers must sign with it "
        "(mps-snapshot --access-key-file %s)",
        "created" if created else "using",
        key_id,
        path,
        path,
    )
    return dataclasses.replace(settings, principals=(bootstrap.bootstrap_principal(key_id, secret, path),))


def not_writable(folder: Path, exc: OSError) -> SystemExit:
    """One line for a data folder the server cannot write: which, as which uid, and the fix."""
    uid = os.getuid()
    where = f"{exc.filename}" if exc.filename else str(folder)
    return SystemExit(
        f"error: cannot write the data folder {folder} ({where}: {exc.strerror or exc}); the server runs as "
        f"uid {uid}: make the folder writable for it (on the host: chown -R {uid} on the folder mounted at {folder}) "
        f"or run the container as the folder's owner (docker run --user $(id -u):$(id -g) ...)"
    )


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
        self.grpc: GrpcServer | None = None
        self._stopped = asyncio.Event()
        self.mps_rpc: MpsRpc | None = None

    async def start(self) -> int:
        try:  # before the bootstrap key: an unwritable data folder is reported as such, nothing created
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise not_writable(self.settings.data_dir, exc) from None
        s = self.settings = with_bootstrap_key(self.settings)
        check_exposure(s)
        try:
            self._data_lock = DataDirLock(s.data_dir)
            self._data_lock.acquire()
        except OSError as exc:
            raise not_writable(s.data_dir, exc) from None
        self.postgres: PostgresStore | None = None
        self.store: Store
        if s.database_url:
            replicas.check_settings(s)
            self.store = self.postgres = await replicas.open_store(s)
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
        self.engine = MediaEngine.from_settings(s, self.telemetry)
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
        self.ledger = JobLedger(self.store)
        metrics = self.telemetry.metrics
        self.ledger.saved_listeners.append(metrics.job_saved)
        self.notifications = NotificationService(
            ledger=self.ledger,
            registry=self.pipelines,
            notifier=HttpNotifier(),
            metrics=metrics,
            attempts=s.notify_attempts,
            backoff_s=s.notify_backoff_s,
        )
        self.runner = JobRunner(
            ledger=self.ledger,
            engine=self.engine,
            router=self.router,
            ffmpeg_timeout_s=s.ffmpeg_timeout_s,
            sync_timeout_s=s.sync_timeout_s,
            max_sprite_pixels=s.max_sprite_pixels,
            notify_wanted=self.notifications.wanted,
        )
        if self.postgres is not None:
            self.postgres.notify_hold_s = self.notifications.delivery_window_s + s.lease_s
        self.scheduler: Scheduler | ClusterScheduler
        if self.postgres is not None:
            self.scheduler = ClusterScheduler(
                ledger=self.ledger,
                runner=self.runner,
                registry=self.pipelines,
                notifications=self.notifications,
                tracing=self.telemetry.tracing,
                store=self.postgres,
                slots=s.replica_jobs or s.max_ffmpeg_processes,
                lease_s=s.lease_s,
                max_attempts=s.max_attempts,
            )
        else:
            self.scheduler = Scheduler(
                ledger=self.ledger,
                runner=self.runner,
                registry=self.pipelines,
                notifications=self.notifications,
                tracing=self.telemetry.tracing,
                max_attempts=s.max_attempts,
                retry_backoff_s=s.fault_retry_backoff_s,
            )
        self.pipelines.listeners.append(self.scheduler.on_pipeline_change)
        self.jobs = JobService(
            ledger=self.ledger,
            runner=self.runner,
            queue=self.scheduler,
            engine=self.engine,
            pipelines=self.pipelines,
            sync_timeout_s=s.sync_timeout_s,
            max_sprite_pixels=s.max_sprite_pixels,
            telemetry=self.telemetry,
        )
        await self.scheduler.start()
        self.guard = build_guard(s, self.postgres)
        self.grpc = grpc = GrpcServer(
            self.jobs,
            self.pipelines,
            self.guard,
            reflection_enabled=s.reflection,
            max_concurrent_rpcs=s.max_concurrent_rpcs,
            max_concurrent_streams=s.max_concurrent_streams or s.max_concurrent_rpcs,
            tls_files=(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file) if s.tls_cert_file else None,
            telemetry=self.telemetry,
        )
        self.port = await grpc.start(s.listen)
        self.monitor = HealthMonitor(
            ping=self.store.ping,
            disk=s.data_dir,
            min_free_bytes=s.min_free_disk_mb * 1024 * 1024,
            publish=grpc.set_serving,
            interval=s.health_interval_s,
        )
        self.store.fault_listeners.append(lambda detail: self.monitor.report("job store", detail))
        self.runner.fault_listeners.append(self._job_fault)
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
        from mps_snapshot_server import console
        from mps_snapshot_server.observability import metrics

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
        if self.grpc is not None:
            await self.grpc.set_serving(False)
        if notice > 0:
            await asyncio.sleep(notice)
        await self.monitor.stop()
        self.runner.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        stopping = [self.http.stop()] if self.http is not None else []
        if self.grpc is not None:
            stopping.append(self.grpc.stop(grace))
        await asyncio.gather(*stopping)
        await self.runner.wait_recorded(2.0)
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
