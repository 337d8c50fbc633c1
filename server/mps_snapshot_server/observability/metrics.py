"""Prometheus metrics, one registry per server (tests run several servers in one process).

Label values are always from small, known sets (method names, MPS codes, states, pipeline
ids, kinds of ffmpeg run): never a job id, request id or object key, which would make a new
time series per job.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mps_snapshot_server.domain.models import Job

NAMESPACE = "mps_snapshot"

# RPC latency: sync snapshots take up to the 5 s MPS limit; queries take milliseconds.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# One ffmpeg run: from a cached-probe snapshot (tens of ms) to a long decode pass.
_FFMPEG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

#: Refreshes gauges that are read from elsewhere (the job store) just before a scrape.
Refresher = Callable[["Metrics"], Awaitable[None]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        n = NAMESPACE
        self.rpc_calls = Counter(
            "rpc_calls", "RPCs answered, by method and MPS code (OK for success).", ["method", "code"], namespace=n,
            registry=r,
        )  # fmt: skip
        self.rpc_seconds = Histogram(
            "rpc_duration_seconds", "Time to answer an RPC (unary calls).", ["method"], namespace=n, registry=r,
            buckets=_RPC_BUCKETS,
        )  # fmt: skip
        self.throttled = Counter(
            "throttled_calls", "Calls refused by a rate or stream limit, by limit class.", ["limit_class"],
            namespace=n, registry=r,
        )  # fmt: skip
        self.jobs_submitted = Counter(
            "jobs_submitted", "Jobs accepted, by pipeline and mode (sync or async).", ["pipeline", "mode"],
            namespace=n, registry=r,
        )  # fmt: skip
        self.jobs_finished = Counter(
            "jobs_finished", "Jobs that reached a final state, by pipeline and state.", ["pipeline", "state"],
            namespace=n, registry=r,
        )  # fmt: skip
        self.job_seconds = Histogram(
            "job_duration_seconds", "Creation to final state of async jobs, by pipeline.", ["pipeline"],
            namespace=n, registry=r, buckets=_JOB_BUCKETS,
        )  # fmt: skip
        self.jobs = Gauge(
            "jobs", "Jobs in the job store, by state and pipeline (read at scrape time).", ["state", "pipeline"],
            namespace=n, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "pipeline_queue_depth", "Async jobs waiting in a pipeline's queue.", ["pipeline"], namespace=n, registry=r
        )
        self.running_jobs = Gauge(
            "pipeline_running_jobs", "Async jobs running in a pipeline.", ["pipeline"], namespace=n, registry=r
        )
        self.ffmpeg_in_use = Gauge(
            "ffmpeg_processes", "ffmpeg and ffprobe processes running now.", namespace=n, registry=r
        )
        self.ffmpeg_limit = Gauge(
            "ffmpeg_processes_limit", "Most ffmpeg and ffprobe processes allowed at once.", namespace=n, registry=r
        )
        self.ffmpeg_seconds = Histogram(
            "ffmpeg_run_duration_seconds", "Wall time of one ffmpeg/ffprobe run, by kind and outcome.",
            ["kind", "outcome"], namespace=n, registry=r, buckets=_FFMPEG_BUCKETS,
        )  # fmt: skip
        self.images_written = Counter(
            "images_written", "Snapshot images of successful jobs, by pipeline.", ["pipeline"], namespace=n,
            registry=r,
        )  # fmt: skip
        self.sprites_written = Counter(
            "sprites_written", "Sprite sheets of successful jobs, by pipeline.", ["pipeline"], namespace=n,
            registry=r,
        )  # fmt: skip
        self.storage_calls = Counter(
            "storage_calls", "Object storage calls, by backend, operation and outcome.",
            ["backend", "operation", "outcome"], namespace=n, registry=r,
        )  # fmt: skip
        self.storage_read_bytes = Counter(
            "storage_read_bytes", "Bytes of objects read from storage by the server (the console's media "
            "route); ffmpeg reads inputs itself through file or presigned URLs.", ["backend"], namespace=n,
            registry=r,
        )  # fmt: skip
        self.storage_written_bytes = Counter(
            "storage_written_bytes", "Bytes of objects written to storage (images, sprites, tracks).", ["backend"],
            namespace=n, registry=r,
        )  # fmt: skip
        self.notifications = Counter(
            "notifications", "Completion notification attempts, by outcome (ok, retry, given_up).", ["outcome"],
            namespace=n, registry=r,
        )  # fmt: skip
        self.refreshers: list[Refresher] = []

    def rpc(self, method: str, code: str, seconds: float | None) -> None:
        self.rpc_calls.labels(method, code or "OK").inc()
        if seconds is not None:
            self.rpc_seconds.labels(method).observe(seconds)

    def job_saved(self, job: Job) -> None:
        """Count a job's final state once (a job is saved many times while it runs, and a
        final job is saved again only to record its notification's result)."""
        if not job.state.finished or job.notify_result is not None:
            return
        self.jobs_finished.labels(job.pipeline_id, job.state.value).inc()
        if job.state.value == "Success":
            self.images_written.labels(job.pipeline_id).inc(len(job.images))
            self.sprites_written.labels(job.pipeline_id).inc(len(job.sprites))
        if job.is_async and job.finish_time is not None:
            self.job_seconds.labels(job.pipeline_id).observe(
                max(0.0, (job.finish_time - job.creation_time).total_seconds())
            )

    @contextmanager
    def ffmpeg_run(self, kind: str) -> Iterator[None]:
        started = time.monotonic()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self.ffmpeg_seconds.labels(kind, outcome).observe(time.monotonic() - started)

    async def exposition(self) -> bytes:
        for refresh in self.refreshers:
            await refresh(self)
        return generate_latest(self.registry)


def add_routes(app: web.Application, metrics: Metrics) -> None:
    """Mount ``GET /metrics`` (Prometheus text format) on an aiohttp application."""

    async def scrape(request: web.Request) -> web.Response:
        body = await metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", scrape)
