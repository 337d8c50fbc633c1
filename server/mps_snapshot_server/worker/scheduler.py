"""Pipelines at run time: a bounded queue and a set of workers per pipeline, admission,
pause/resume, cancellation, recovery after a crash, and release on shutdown.

Jobs never run inside an RPC's task: Submit commits the job and queues its id; a worker
picks it up later. Across all pipelines, ffmpeg processes are capped by the media engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from mps_snapshot_server.domain import planning
from mps_snapshot_server.domain.errors import InvalidState, QueueFull, ServiceUnavailable
from mps_snapshot_server.domain.models import Job, JobState, Pipeline, PipelineState
from mps_snapshot_server.domain.validation import ValidRequest
from mps_snapshot_server.observability.logging import principal_var, set_job
from mps_snapshot_server.observability.tracing import Tracing
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.worker.attempt import interrupted, run_attempt
from mps_snapshot_server.worker.notify import NotificationService
from mps_snapshot_server.worker.ports import Pipelines
from mps_snapshot_server.worker.runner import JobRunner, now

log = logging.getLogger(__name__)


class PipelineRuntime:
    """One pipeline's queue and workers.

    The asyncio.Queue is bounded at admission (``has_room``) rather than by blocking
    producers: a full pipeline refuses a Submit at once instead of holding the caller.
    ``held`` keeps jobs a worker took off the queue while the pipeline was being paused;
    it is served first. Jobs recovered at start-up are queued even beyond the capacity:
    a job once accepted is never dropped.
    """

    def __init__(self, pipeline: Pipeline, scheduler: Scheduler) -> None:
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.held: deque[str] = deque()
        self.reserved = 0
        self.active = asyncio.Event()
        self.workers: set[asyncio.Task[None]] = set()
        #: Workers running a job now (the running-jobs gauge).
        self.busy = 0
        self.closed = False
        self.apply(pipeline)

    @property
    def waiting(self) -> int:
        return self.queue.qsize() + len(self.held) + self.reserved

    def has_room(self) -> bool:
        return self.waiting < self.pipeline.queue_capacity

    def apply(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        if pipeline.state is PipelineState.ACTIVE:
            self.active.set()
        else:
            self.active.clear()
        while len(self.workers) < pipeline.max_concurrent_jobs:
            task = asyncio.create_task(self._work(), name=f"pipeline-{pipeline.id}-worker")
            self.workers.add(task)
            task.add_done_callback(self.workers.discard)

    async def _next(self) -> str | None:
        while True:
            await self.active.wait()
            if self.closed or len(self.workers) > self.pipeline.max_concurrent_jobs:
                return None
            if self.held:
                return self.held.popleft()
            job_id = await self.queue.get()
            if self.active.is_set() and not self.closed:
                return job_id
            self.held.append(job_id)  # paused while we waited: keep its place

    async def _work(self) -> None:
        while True:
            job_id = await self._next()
            if job_id is None:
                return
            self.busy += 1
            try:
                await self.scheduler.execute(job_id)
            finally:
                self.busy -= 1

    async def close(self) -> None:
        self.closed = True
        self.active.set()
        for task in list(self.workers):
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


class Scheduler:
    def __init__(
        self,
        *,
        ledger: JobLedger,
        runner: JobRunner,
        registry: Pipelines,
        notifications: NotificationService,
        tracing: Tracing,
        max_attempts: int,
        retry_backoff_s: float,
    ) -> None:
        self.ledger = ledger
        self.store = ledger.store
        self.tracing = tracing
        self.runner = runner
        self.registry = registry
        self.notifications = notifications
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        #: Jobs waiting out a backoff after a service fault, by id.
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._resuming: set[asyncio.Task[None]] = set()
        self.runtimes: dict[str, PipelineRuntime] = {}
        self.running: dict[str, asyncio.Task[Job]] = {}
        self._cancel_requested: set[str] = set()
        #: Who submitted each queued job, for its run's log lines (memory only: not after a restart).
        self._submitters: dict[str, str] = {}
        self._stopping = False
        #: Set whenever a job run ends here (drain() waits on it).
        self._settled = asyncio.Event()

    async def start(self) -> None:
        for pipeline in self.registry.all():
            self.runtimes[pipeline.id] = PipelineRuntime(pipeline, self)
        await self._recover()

    async def _recover(self) -> None:
        """Requeue what a previous process left: Submitted jobs, and Snapshoting ones that
        died mid-run (started again from the beginning, up to max_attempts)."""
        for job in await self.store.jobs_in_states((JobState.SNAPSHOTING, JobState.SUBMITTED)):
            await self._requeue(job, notify=False)  # resend_pending sends what is owed
        self.notifications.resend_pending()

    def _runtime_of(self, job: Job) -> PipelineRuntime:
        runtime = self.runtimes.get(job.pipeline_id)
        return runtime if runtime is not None else self.runtimes[self.registry.default.id]

    async def _requeue(self, job: Job, *, notify: bool = True) -> None:
        """Queue a Submitted job; a Snapshoting one not running here died mid-run and is
        started again (up to max_attempts)."""
        if job.state is JobState.SNAPSHOTING:
            if job.attempts >= self.max_attempts:
                notify = bool(self.notifications.destination(job))
                final = await self.ledger.save(interrupted(job, at=now(), notify=notify, where="the server"))
                if notify:
                    self.notifications.job_finished(final)
                return
            job = await self.ledger.save(job.requeued())
            log.info("job %s was interrupted on attempt %d; queued again", job.id, job.attempts)
        if job.state is JobState.SUBMITTED:
            self._runtime_of(job).queue.put_nowait(job.id)

    def _retry_later(self, job_id: str, attempts: int) -> None:
        """Run the job again after a backoff (doubling per attempt, at most 60 s): it met a
        service fault, or its state could not be recorded (the store will be asked again)."""
        if self._stopping or job_id in self._retries:
            return
        delay = min(60.0, self.retry_backoff_s * 2 ** max(0, attempts - 1))
        loop = asyncio.get_running_loop()
        self._retries[job_id] = loop.call_later(delay, self._resume_soon, job_id, attempts)

    def _resume_soon(self, job_id: str, attempts: int) -> None:
        self._retries.pop(job_id, None)
        task = asyncio.create_task(self._resume(job_id, attempts), name=f"resume-{job_id}")
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _resume(self, job_id: str, attempts: int) -> None:
        if self._stopping or job_id in self.running:
            return
        try:
            job = await self.store.get_job(job_id)
            if job is None or job.state.finished:
                self._cancel_requested.discard(job_id)  # cancelled while it waited
            else:
                await self._requeue(job)
        except Exception as exc:
            log.warning("job %s could not be queued again yet (%s); will retry", job_id, exc)
            self._retry_later(job_id, attempts + 1)

    async def submit(self, job: Job, valid: ValidRequest) -> Job:
        """Admit an async job: refuse when its pipeline's queue is full, else commit, then queue."""
        if self._stopping:
            raise ServiceUnavailable("The server is shutting down; submit the job again in a moment.")
        planning.check_async_config(valid.config)
        runtime = self.runtimes[job.pipeline_id]
        if not runtime.has_room():
            raise QueueFull(
                f"Pipeline {job.pipeline_id} already has {runtime.waiting} jobs waiting, its capacity; retry "
                "later, or raise its QueueCapacity with UpdatePipeline.",
                retry_after=1.0,
            )
        runtime.reserved += 1
        try:
            await self.ledger.save(job)
        finally:
            runtime.reserved -= 1
        runtime.queue.put_nowait(job.id)
        self.tracing.remember_submit(job.id)
        self._submitters[job.id] = principal_var.get()
        return job

    async def execute(self, job_id: str) -> None:
        """Run one queued job (called by a worker)."""
        try:
            job = await self.store.get_job(job_id)
        except Exception as exc:
            log.warning("job %s could not be read (%s); will retry", job_id, exc)
            self._retry_later(job_id, 1)
            return
        if job_id in self.running:
            return  # queued twice (a retry met a recovery): it is already running
        if job is None or job.state is not JobState.SUBMITTED or job_id in self._cancel_requested:
            self._cancel_requested.discard(job_id)
            return
        task = asyncio.create_task(self._run(job), name=f"job-{job_id}")
        self.running[job_id] = task
        try:
            final = await asyncio.shield(task)
        except Exception as exc:
            # Its state could not be recorded (the job store is failing): it stays as last
            # committed and is picked up again once the store answers.
            log.warning("job %s: state not recorded (%s); will retry", job_id, exc)
            self._retry_later(job_id, job.attempts + 1)
            return
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is None or not me.cancelling():
                return  # CancelSnapshotJob cancelled the job, not this worker
            task.cancel()  # the worker is being stopped: stop the job with it
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        finally:
            self.running.pop(job_id, None)
            self._settled.set()
        if final.state is JobState.SUBMITTED:
            self._retry_later(job_id, final.attempts)  # a service fault: run again after a backoff
            return
        self.notifications.job_finished(final)

    async def _run(self, job: Job) -> Job:
        set_job(job.id, job.pipeline_id)  # this task's log context
        principal_var.set(self._submitters.pop(job.id, ""))
        job = await self.ledger.save(job.started())
        try:
            return await run_attempt(self.runner, self.tracing, job, retry=job.attempts < self.max_attempts)
        except asyncio.CancelledError:
            if job.id in self._cancel_requested:
                self._cancel_requested.discard(job.id)
                await self.ledger.save(job.cancelled(at=now()))
            else:
                # Shutdown: give the job back, as if this attempt had not started.
                await self.ledger.save(job.requeued(count_attempt=False))
            raise

    async def cancel(self, job: Job) -> Job:
        task = self.running.get(job.id)
        if task is None:
            if job.state is not JobState.SUBMITTED:
                raise InvalidState(f"Snapshot job {job.id} is not running on this server and cannot be cancelled.")
            # Queued: the worker that dequeues it will skip it.
            self._cancel_requested.add(job.id)
            return await self.ledger.save(job.cancelled(at=now()))
        self._cancel_requested.add(job.id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        final = await self.store.get_job(job.id)
        if final is not None and final.state is JobState.CANCELLED:
            return final
        state = final.state.value if final is not None else "unknown"
        raise InvalidState(f"Snapshot job {job.id} ended in state {state} before it could be cancelled.")

    async def drain(self, timeout: float) -> None:
        """Wait until nothing is queued, running or waiting out a backoff here (tests use it
        instead of sleeping; like arq's burst mode)."""
        async with asyncio.timeout(timeout):
            while self._busy():
                self._settled.clear()
                # Woken when a job run ends; the timeout covers a queued job being picked up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._settled.wait()

    def _busy(self) -> bool:
        return bool(
            self.running or self._retries or self._resuming or any(r.waiting or r.busy for r in self.runtimes.values())
        )

    async def on_pipeline_change(self, pipeline: Pipeline | None, pipeline_id: str) -> None:
        runtime = self.runtimes.get(pipeline_id)
        if pipeline is None:
            if runtime is not None:
                del self.runtimes[pipeline_id]
                await runtime.close()
            return
        if runtime is None:
            self.runtimes[pipeline_id] = PipelineRuntime(pipeline, self)
        else:
            runtime.apply(pipeline)

    async def stop(self, grace: float) -> None:
        """Stop taking work, give running jobs ``grace`` seconds to finish, then send the
        rest back to Submitted (their attempt not counted) for the next start."""
        self._stopping = True
        for handle in self._retries.values():
            handle.cancel()  # they stay Submitted and are queued at the next start
        self._retries.clear()
        for resuming in list(self._resuming):
            resuming.cancel()
        for runtime in self.runtimes.values():
            runtime.closed = True
            runtime.active.set()
        running = list(self.running.values())
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for runtime in list(self.runtimes.values()):
            await runtime.close()
        await self.notifications.close()
