"""The scheduler of a replica in PostgreSQL mode.

There are no in-memory queues: Submit inserts the job (refused when its pipeline already
has QueueCapacity jobs waiting, counted in the database), and each of this replica's
``slots`` workers claims the oldest runnable job it may run (server/mps_snapshot_server/store/postgres.py:
Active pipeline, below MaxConcurrentJobs cluster-wide). While a job runs, a keeper renews
its lease; if the lease is lost (another replica took the job after this one stalled, or
the database stayed unreachable for the lease's length) the job is stopped here and this
replica writes nothing more about it. Workers wake on the NOTIFY of any job change and poll
every ``poll_s`` otherwise (a dead replica's expired lease notifies no one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from mps_snapshot_server.domain import planning
from mps_snapshot_server.domain.errors import InvalidState, QueueFull, ResourceNotFound, ServiceUnavailable
from mps_snapshot_server.domain.models import Job, JobEventKind, JobState, Pipeline
from mps_snapshot_server.domain.validation import ValidRequest
from mps_snapshot_server.observability.tracing import Tracing
from mps_snapshot_server.store.leases import Lease, LeaseLost, current_lease
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.store.postgres import Claim, PostgresStore
from mps_snapshot_server.worker.attempt import interrupted, run_attempt
from mps_snapshot_server.worker.notify import NotificationService
from mps_snapshot_server.worker.ports import Pipelines
from mps_snapshot_server.worker.runner import JobRunner, now

log = logging.getLogger(__name__)

#: How long CancelSnapshotJob waits for the replica running the job to confirm.
CANCEL_WAIT_S = 10.0


class ClusterScheduler:
    def __init__(
        self,
        *,
        ledger: JobLedger,
        runner: JobRunner,
        registry: Pipelines,
        notifications: NotificationService,
        tracing: Tracing,
        store: PostgresStore,
        slots: int,
        lease_s: float,
        max_attempts: int,
        poll_s: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.events = ledger.events
        self.tracing = tracing
        self.runner = runner
        self.registry = registry
        self.notifications = notifications
        self.store = store
        self.owner = store.origin
        self.slots = max(1, slots)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self.running: dict[str, asyncio.Task[Job | None]] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changes: asyncio.Queue[str] = asyncio.Queue()
        self._progress: dict[str, tuple[int, int]] = {}

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self._spawn(self.store.listen(self._on_event, self._on_reconnect), "cluster-listener")
        self._spawn(self._bridge(), "cluster-bridge")
        for n in range(self.slots):
            self._spawn(self._worker(), f"cluster-worker-{n}")
        self._spawn(self._owed_notifications(), "cluster-notifications")
        log.info("replica %s: %d job slots, lease %.1f s", self.owner, self.slots, self.lease_s)

    # Events from other replicas

    def _on_event(self, kind: str, ident: str) -> None:
        if kind == "job":
            self._wake.set()  # a job was added or freed a slot somewhere
            if self.events.watching(ident):
                self._changes.put_nowait(ident)
        elif kind == "cancel":
            task = self.running.get(ident)
            if task is not None:
                self._cancel_requested.add(ident)
                task.cancel()
        elif kind == "pipeline":
            self._spawn(self._refresh_pipelines(), "cluster-pipelines")

    def _on_reconnect(self) -> None:
        # Events sent while the listener was away are lost: catch up on what they carried.
        self._spawn(self._refresh_pipelines(), "cluster-pipelines")
        for job_id in self.events.watched():
            self._changes.put_nowait(job_id)

    async def _refresh_pipelines(self) -> None:
        try:
            await self.registry.refresh()
        except Exception:
            log.exception("could not reload pipelines changed by another replica")
        self._wake.set()

    async def _bridge(self) -> None:
        """Hand committed changes of jobs other replicas run to this replica's watchers,
        one at a time so they arrive in commit order."""
        while True:
            job_id = await self._changes.get()
            try:
                job = await self.store.get_job(job_id)
            except Exception:
                log.warning("could not read job %s for its watchers", job_id)
                continue
            if job is None:
                continue
            seen = self._progress.get(job_id, (0, 0))
            counts = (len(job.images), len(job.sprites))
            kind = (
                JobEventKind.IMAGE
                if counts[0] > seen[0]
                else JobEventKind.SPRITE
                if counts[1] > seen[1]
                else JobEventKind.STATE
            )
            if job.state.finished:
                self._progress.pop(job_id, None)
            else:
                self._progress[job_id] = counts
            self.events.publish(kind, job)

    # Submit and run

    async def submit(self, job: Job, valid: ValidRequest) -> Job:
        if self._stopping:
            raise ServiceUnavailable("The server is shutting down; submit the job again in a moment.")
        planning.check_async_config(valid.config)
        pipeline = self.registry.resolve(job.pipeline_id)
        waiting = await self.store.insert_if_room(job, pipeline.queue_capacity)
        if waiting is not None:
            raise QueueFull(
                f"Pipeline {job.pipeline_id} already has {waiting} jobs waiting, its capacity; retry "
                "later, or raise its QueueCapacity with UpdatePipeline.",
                retry_after=1.0,
            )
        self.events.publish(JobEventKind.STATE, job)
        self._wake.set()
        return job

    async def _worker(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                claim = await self.store.claim(self.owner, self.lease_s, self.max_attempts)
            except Exception as exc:
                # PostgreSQL unreachable: claim nothing, try again later (health says NOT_SERVING).
                log.warning("could not claim a job (%s: %s)", type(exc).__name__, exc)
                claim = None
            if claim is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                continue
            await self._execute(claim)

    async def _execute(self, claim: Claim) -> None:
        job_id = claim.job.id
        task = asyncio.create_task(self._run(claim), name=f"job-{job_id}")
        self.running[job_id] = task
        keeper = asyncio.create_task(self._keep(claim.lease, task), name=f"lease-{job_id}")
        final: Job | None = None
        try:
            final = await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise
        finally:
            self.running.pop(job_id, None)
            self._cancel_requested.discard(job_id)
            keeper.cancel()
        if final is not None:
            self.notifications.job_finished(final)

    async def _run(self, claim: Claim) -> Job | None:
        """The job's task: everything it writes is fenced by its lease."""
        lease = claim.lease
        current_lease.set(lease)
        job = claim.job
        try:
            if claim.cancel_requested:
                return await self.ledger.save(job.cancelled(at=now()))
            if claim.exhausted:
                notify = bool(self.notifications.destination(job))
                return await self.ledger.save(interrupted(job, at=now(), notify=notify, where="a replica"))
            if job.attempts > 1:
                log.info("job %s: attempt %d (lease attempt %d)", job.id, job.attempts, lease.attempt)
            # The claim committed the attempt (Snapshoting, attempts + 1). A service fault
            # ends the job here (no in-place retry): the lease fences every write.
            return await run_attempt(self.runner, self.tracing, job, retry=False)
        except LeaseLost as exc:
            log.warning("%s: this replica stopped the job and writes nothing more about it", exc)
            return None
        except asyncio.CancelledError:
            if lease.lost:
                log.warning("job %s: lease lost; stopped here without writing", job.id)
                return None
            try:
                if job.id in self._cancel_requested:
                    await self.ledger.save(job.cancelled(at=now()))
                else:  # shutdown: give the job back, this attempt not counted
                    back = job.requeued(count_attempt=False)
                    await self.store.release(back, lease)
                    self.events.publish(JobEventKind.STATE, back)
            except LeaseLost:
                return None
            raise

    async def _keep(self, lease: Lease, task: asyncio.Task[Job | None]) -> None:
        """Renew the lease every third of its length; stop the job when it is lost or a
        cancel was requested (the renewal reports it even if its NOTIFY was missed)."""
        interval = lease.ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            cancel = False
            try:
                async with asyncio.timeout(interval):
                    cancel = await self.store.renew(lease)
            except Exception as exc:
                log.warning("job %s: could not renew the lease (%s)", lease.job_id, type(exc).__name__)
            if lease.lost or time.monotonic() >= lease.valid_until:
                lease.lost = True
                log.warning("job %s: lease (attempt %d) lost; stopping it here", lease.job_id, lease.attempt)
                task.cancel()
                return
            if cancel and lease.job_id not in self._cancel_requested:
                self._cancel_requested.add(lease.job_id)
                task.cancel()

    async def _owed_notifications(self) -> None:
        """Send the notifications a replica that died after ending its jobs still owed."""
        while not self._stopping:
            try:
                for job in await self.store.claim_notifications(self.owner):
                    log.info("job %s: sending the notification another replica owed", job.id)
                    self.notifications.job_finished(job)
            except Exception as exc:
                log.warning("could not look for owed notifications (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(max(self.poll_s, self.store.notify_hold_s / 4))

    # Cancel

    async def cancel(self, job: Job) -> Job:
        task = self.running.get(job.id)
        if task is not None:
            self._cancel_requested.add(job.id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return await self._cancelled_or_error(job.id)
        outcome, current = await self.store.request_cancel(job.id, lambda j: j.cancelled(at=now()))
        if outcome == "missing" or current is None:
            raise ResourceNotFound(f"Snapshot job {job.id!r} does not exist.")
        if outcome == "cancelled":
            self.events.publish(JobEventKind.STATE, current)
            return current
        if outcome == "sync":
            raise InvalidState(f"Snapshot job {job.id} is a synchronous snapshot and cannot be cancelled.")
        if outcome == "finished":
            return await self._cancelled_or_error(job.id)
        # Another replica runs it: it stops the job on the NOTIFY (or at its next renewal).
        queue = self.events.subscribe(job.id)
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                while not current.state.finished:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await queue.get()
                    current = await self._get(job.id)
        except TimeoutError:
            raise ServiceUnavailable(
                f"The replica running job {job.id} has not confirmed the cancel within {CANCEL_WAIT_S:.0f} s; "
                f"the request stands and the job ends Cancelled at the latest when its lease ({self.lease_s:.0f} s) "
                "runs out. Query it again later.",
                retry_after=self.lease_s,
            ) from None
        finally:
            self.events.unsubscribe(job.id, queue)
        return await self._cancelled_or_error(job.id)

    async def _get(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise ResourceNotFound(f"Snapshot job {job_id!r} does not exist.")
        return job

    async def _cancelled_or_error(self, job_id: str) -> Job:
        final = await self._get(job_id)
        if final.state is JobState.CANCELLED:
            return final
        raise InvalidState(f"Snapshot job {job_id} ended in state {final.state.value} before it could be cancelled.")

    async def on_pipeline_change(self, pipeline: Pipeline | None, pipeline_id: str) -> None:
        self._wake.set()  # resumed, or allowed more jobs: claim now

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running jobs ``grace`` seconds, then hand the rest back as
        Submitted (fenced) for any replica to take."""
        self._stopping = True
        self._wake.set()
        running = list(self.running.values())
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.notifications.close()
