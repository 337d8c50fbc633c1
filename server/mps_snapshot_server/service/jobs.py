"""Job use cases: submit (sync snapshots run here; async jobs go to the scheduler),
query and cancel. Transport-free: the gRPC layer only converts and maps errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mps_snapshot_server.domain import percent, planning, sprites, validation
from mps_snapshot_server.domain.errors import (
    FieldViolation,
    IdempotentParameterMismatch,
    InternalError,
    InvalidParameter,
    InvalidState,
    MpsError,
    ResourceContentBad,
    ResourceNotFound,
    ServiceFault,
    ServiceUnavailable,
    SnapshotTimeOut,
)
from mps_snapshot_server.domain.ids import new_id
from mps_snapshot_server.domain.models import FrameType, Job, JobState, SnapshotImage, SnapshotRequest
from mps_snapshot_server.media import encodings
from mps_snapshot_server.media.engine import MediaEngine, Priority
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.observability.logging import set_job
from mps_snapshot_server.service.pipelines import PipelineRegistry
from mps_snapshot_server.storage.base import ObjectInfo, ObjectStore
from mps_snapshot_server.storage.router import StorageRouter
from mps_snapshot_server.store import codec
from mps_snapshot_server.store.base import JobQuery as JobFilter
from mps_snapshot_server.store.base import Store
from mps_snapshot_server.store.events import JobEvents
from mps_snapshot_server.worker import faults

log = logging.getLogger(__name__)

MAX_QUERY_IDS = 10
#: How long a ClientToken is remembered.
TOKEN_WINDOW = timedelta(hours=24)
DEFAULT_PAGE_SIZE = 30
MAX_PAGE_SIZE = 300
#: Store reads one QuerySnapshotJobList page may take to fill itself with visible jobs.
_LIST_READS = 10
# Time kept back from the caller's deadline to record the failure and answer.
_DEADLINE_MARGIN_S = 0.15

AsyncSubmit = Callable[[Job, validation.ValidRequest], Awaitable[Job]]
AsyncCancel = Callable[[Job], Awaitable[Job]]
_PROGRESS_RANK = {JobState.SUBMITTED: 0, JobState.SNAPSHOTING: 1}


def now() -> datetime:
    return datetime.now(UTC)


def media_time_ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class JobService:
    def __init__(
        self,
        *,
        store: Store,
        router: StorageRouter,
        engine: MediaEngine,
        pipelines: PipelineRegistry,
        sync_timeout_s: float,
        max_sprite_pixels: int = 128_000_000,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry()
        self.store = store
        self.router = router
        self.engine = engine
        self.pipelines = pipelines
        self.sync_timeout_s = sync_timeout_s
        self.max_sprite_pixels = max_sprite_pixels
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.events = JobEvents()
        #: Set when the server is stopping: a sync snapshot cut off then is recorded as
        #: failed with ServiceUnavailable (and the stop waits for these records).
        self.draining = False
        self._recording: set[asyncio.Future[None]] = set()
        self._sync_tasks: set[asyncio.Task[Any]] = set()
        #: Told of every service fault a job meets (the health monitor listens).
        self.fault_listeners: list[Callable[[MpsError], None]] = []
        #: Set by the scheduler: commits and queues an async job.
        self.submit_async: AsyncSubmit | None = None
        #: Set by the scheduler: cancels an unfinished async job.
        self.cancel_async: AsyncCancel | None = None

    async def wait_recorded(self, timeout: float) -> None:
        """Wait (bounded) until cut-off sync snapshots are recorded, before the store closes."""
        running = {t for t in self._sync_tasks if not t.done()}
        for task in running:
            task.cancel()  # the port is closed: what still runs is cut off (and recorded)
        pending: set[asyncio.Future[Any]] = {*running, *self._recording}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self._recording:
            await asyncio.wait(list(self._recording), timeout=timeout)

    def report_fault(self, fault: MpsError) -> None:
        for listener in self.fault_listeners:
            listener(fault)

    async def save(self, job: Job, kind: str = "state") -> Job:
        """Commit a job change, then tell its watchers."""
        await self.store.put_job(job)
        self.events.publish(kind, job)
        # A final job is saved again only to record its notification's result.
        self.telemetry.metrics.job_saved(job, previous_finished=job.notify_result is not None)
        return job

    async def submit(
        self,
        request: SnapshotRequest,
        *,
        request_id: str,
        time_remaining: float | None,
        principal: str = "",
        client_token: str = "",
    ) -> Job:
        """Create a job; with a ClientToken, a repeat of an earlier call returns its job."""
        if not client_token:
            return await self._submit(request, request_id=request_id, time_remaining=time_remaining, owner=principal)
        if not (1 <= len(client_token) <= 64 and client_token.isascii() and client_token.isprintable()):
            raise InvalidParameter.field("client_token", "ClientToken must be 1-64 printable ASCII characters.")
        key = (principal, client_token)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        try:
            # Concurrent retries with one token wait for the first, then find its job.
            async with lock, self.store.token_lock(principal, client_token):
                digest = hashlib.sha256(codec.dumps(request).encode()).hexdigest()
                since = now() - TOKEN_WINDOW
                found = await self.store.get_token(principal, client_token, since)
                if found is not None:
                    if found[0] != digest:
                        raise IdempotentParameterMismatch(
                            "This ClientToken was used for a different request; use a new token for a new job.",
                            violations=(FieldViolation("client_token", "used before with another request"),),
                        )
                    job = await self.store.get_job(found[1])
                    if job is not None:
                        return job
                job = await self._submit(request, request_id=request_id, time_remaining=time_remaining, owner=principal)
                await self.store.put_token(principal, client_token, digest, job.id, now(), since)
                return job
        finally:
            if not lock.locked() and self._token_locks.get(key) is lock:
                del self._token_locks[key]

    async def _submit(
        self, request: SnapshotRequest, *, request_id: str, time_remaining: float | None, owner: str = ""
    ) -> Job:
        valid = validation.validate(request)
        await self.pipelines.ensure(request.pipeline_id)
        pipeline = self.pipelines.resolve(request.pipeline_id)
        in_store = self.router.store_for(valid.input, "input")
        self.router.store_for(valid.output_file, "snapshot_config.output_file")
        if valid.config.tile_output_file is not None and valid.config.tile_out is not None:
            self.router.store_for(valid.config.tile_output_file, "snapshot_config.tile_output_file")
        if valid.config.animated_output_file is not None and valid.config.animated_out is not None:
            self.router.store_for(valid.config.animated_output_file, "snapshot_config.animated_output_file")
        head = await in_store.head(valid.input.bucket, valid.input_key)
        job = Job(
            id=new_id(),
            request=dataclasses.replace(request, pipeline_id=pipeline.id),
            state=JobState.SUBMITTED if valid.is_async else JobState.SNAPSHOTING,
            creation_time=now(),
            request_id=request_id,
            pipeline_id=pipeline.id,
            is_async=valid.is_async,
            owner=owner,
        )
        set_job(job.id, job.pipeline_id)
        submitted = self.telemetry.metrics.jobs_submitted
        if valid.is_async:
            if valid.config.tile_out is not None:
                await self._check_sprites(valid, in_store, head, time_remaining)
            if self.submit_async is None:
                raise InvalidParameter(
                    "Asynchronous jobs are not enabled on this server.", code="InvalidParameter.NotSupported"
                )
            job = await self.submit_async(job, valid)
            submitted.labels(job.pipeline_id, "async").inc()
            return job
        submitted.labels(job.pipeline_id, "sync").inc()
        return await self._run_sync(job, valid, in_store, head, time_remaining)

    async def _check_sprites(
        self, valid: validation.ValidRequest, in_store: ObjectStore, head: ObjectInfo, time_remaining: float | None
    ) -> None:
        """Sprite rules that need the video's size and duration, checked before the job is
        accepted: the sprite's pixel size, and {TileCount} when more than one sprite results."""
        config = valid.config
        assert config.tile_out is not None and valid.tile_name is not None
        handle = await in_store.input_handle(valid.input.bucket, valid.input_key)
        limit = self.sync_timeout_s if time_remaining is None else min(self.sync_timeout_s, time_remaining)
        info = await self.engine.probe(handle, (id(in_store), valid.input.bucket, valid.input_key, head.version), limit)
        lay = sprites.layout(config.tile_out, info.output_size(config.width, config.height), valid.background)
        sprites.check_size(lay, self.max_sprite_pixels)
        try:
            points = len(planning.plan(config, info.duration_s).points)
        except MpsError:
            return  # the job itself fails with this error, as MPS reports it
        cells = lay.cells_for(points)
        count = lay.sprites_for(cells)
        if count > 1 and "TileCount" not in valid.tile_name.names:
            raise InvalidParameter.field(
                "snapshot_config.tile_output_file.object",
                f"This job fills {count} sprites ({cells} cells, {lay.cells_per_sprite} per sprite), so "
                "TileOutputFile.Object must contain {TileCount} (for example sprite-{TileCount}.jpg).",
            )

    async def _run_sync(
        self,
        job: Job,
        valid: validation.ValidRequest,
        in_store: ObjectStore,
        head: ObjectInfo,
        time_remaining: float | None,
    ) -> Job:
        me = asyncio.current_task()
        if me is not None:
            self._sync_tasks.add(me)
        try:
            return await self._run_sync_in(job, valid, in_store, head, time_remaining)
        finally:
            if me is not None:
                self._sync_tasks.discard(me)

    async def _run_sync_in(
        self,
        job: Job,
        valid: validation.ValidRequest,
        in_store: ObjectStore,
        head: ObjectInfo,
        time_remaining: float | None,
    ) -> Job:
        limit = self.sync_timeout_s
        if time_remaining is not None:
            limit = min(limit, time_remaining - _DEADLINE_MARGIN_S)
        job = dataclasses.replace(job, attempts=1)
        error: MpsError | None = None
        written: list[tuple[ObjectStore, str, str]] = []
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                job = await self._take_one(job, valid, in_store, head, written, limit)
        except TimeoutError:
            error = SnapshotTimeOut(
                f"The snapshot took longer than {limit:.1f} s and was stopped; submit it as an "
                "asynchronous job (set Num to 1) for slow inputs."
            )
        except MpsError as exc:
            error = exc
        except asyncio.CancelledError:
            # The caller went away, or the server is stopping and cut the call off: record
            # the outcome anyway (the stop waits for it), then let the cancel go on.
            cut: MpsError
            if self.draining:
                cut = ServiceUnavailable(
                    "The server shut down before the snapshot was written; submit it again.", retry_after=1.0
                )
            else:
                cut = SnapshotTimeOut(
                    "The caller cancelled the call or its deadline passed before the snapshot was written."
                )
            recording = asyncio.ensure_future(self._fail(job, cut, written))
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)
            with contextlib.suppress(MpsError):
                await asyncio.shield(recording)
            raise
        except Exception as exc:
            error = faults.from_exception(exc)
            if error is None:
                log.exception("sync snapshot %s failed", job.id)
                error = InternalError("An internal error stopped the snapshot; quote the request id when reporting it.")
        if error is not None:
            if isinstance(error, ServiceFault):
                self.report_fault(error)
            try:
                await asyncio.shield(self._fail(job, error, written))
                error.job_id = job.id
            except ServiceFault as unrecorded:
                # The store cannot record the failure either (a full disk): the caller still
                # learns the first fault; no job id, as no job was recorded.
                log.warning("sync snapshot %s: failure not recorded: %s", job.id, unrecorded)
            raise error
        try:
            await asyncio.shield(self.save(job))
        except ServiceFault:
            # Not recorded: take the snapshot back, so a failed call leaves nothing behind.
            await asyncio.shield(self._remove(job, written))
            raise
        return job

    async def _remove(self, job: Job, written: list[tuple[ObjectStore, str, str]]) -> None:
        for store, bucket, key in written:
            try:
                await store.delete(bucket, key)
            except Exception:
                log.exception("could not remove %s/%s of failed job %s", bucket, key, job.id)

    async def _fail(self, job: Job, error: MpsError, written: list[tuple[ObjectStore, str, str]]) -> None:
        await self._remove(job, written)
        failed = dataclasses.replace(
            job, state=JobState.FAIL, code=error.code, message=error.message, count=0, images=(), finish_time=now()
        )
        await self.save(failed)

    async def _take_one(
        self,
        job: Job,
        valid: validation.ValidRequest,
        in_store: ObjectStore,
        head: ObjectInfo,
        written: list[tuple[ObjectStore, str, str]],
        limit: float,
    ) -> Job:
        try:
            return await self._capture_one(job, valid, in_store, head, written, limit)
        except ResourceContentBad as exc:
            work = self.engine.tmp_dir
            raise await faults.explain(exc, in_store, valid.input.bucket, valid.input_key, work) from None

    async def _capture_one(
        self,
        job: Job,
        valid: validation.ValidRequest,
        in_store: ObjectStore,
        head: ObjectInfo,
        written: list[tuple[ObjectStore, str, str]],
        limit: float,
    ) -> Job:
        config = valid.config
        handle = await in_store.input_handle(valid.input.bucket, valid.input_key)
        version = (id(in_store), valid.input.bucket, valid.input_key, head.version)
        info = await self.engine.probe(handle, version, limit, Priority.SYNC)
        # Past the end is judged by the decode (the display end of the last frame), not by
        # the probe's duration, which some containers only estimate.
        time_ms = percent.start_ms(config, info.duration_s * 1000)
        out = valid.output_file
        out_store = self.router.store_for(out, "snapshot_config.output_file")
        key = valid.output_name.render(input_key=valid.input_key, count=1, snapshot_time_ms=time_ms)
        validation.check_not_input(valid, out.bucket, key, "snapshot_config.output_file.object")
        keys = self.engine.cached_key_index(version)
        enc = encodings.snapshots(valid, info)
        async with self.engine.workdir(job.id) as workdir:
            frame = await self.engine.snapshot(
                handle,
                info,
                time_s=time_ms / 1000,
                frame_type=valid.frame_type,
                enc=enc,
                workdir=workdir,
                wall_seconds=limit,
                priority=Priority.SYNC,
                # An intra snapshot decodes only the chosen keyframe when an earlier job
                # built the input's keyframe index (a sync call never builds it).
                keys=keys.times if keys else None,
            )
            replaced = ""
            if config.smart_pick is not None:
                frame, replaced = await self.engine.smart_pick(
                    handle,
                    info,
                    frame,
                    time_s=time_ms / 1000,
                    smart=config.smart_pick,
                    enc=enc,
                    workdir=workdir,
                    wall_seconds=limit,
                    priority=Priority.SYNC,
                )
            written.append((out_store, out.bucket, key))
            await out_store.put_file(out.bucket, key, frame.path, valid.image_format.content_type)
        if valid.frame_type is FrameType.INTRA and keys is None:
            self.engine.key_index_later(handle, version, info, self.sync_timeout_s * 10)
        image = SnapshotImage(
            object=key,
            time_ms=media_time_ms(frame.time_s),
            requested_time_ms=float(time_ms),
            width=frame.width,
            height=frame.height,
            replaced=replaced,
        )
        return dataclasses.replace(
            job, state=JobState.SUCCESS, count=1, images=(image,), images_planned=1, finish_time=now()
        )

    async def query(
        self,
        ids: list[str],
        *,
        flt: JobFilter,
        page_size: int | None,
        token: str,
        visible: Callable[[Job], bool] = lambda job: True,
    ) -> tuple[list[Job], list[str], str]:
        """Jobs by id (those the caller may not see are reported as not existing, as MPS
        reports another account's ids) or a filtered page of the jobs the caller may see."""
        if ids:
            if len(ids) > MAX_QUERY_IDS:
                raise InvalidParameter.field("snapshot_job_ids", f"Give at most {MAX_QUERY_IDS} job ids per call.")
            found = {i: j for i, j in (await self.store.get_jobs(ids)).items() if visible(j)}
            return [found[i] for i in ids if i in found], [i for i in ids if i not in found], ""
        size = DEFAULT_PAGE_SIZE if page_size is None else page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidParameter.field(
                "maximum_page_size", f"MaximumPageSize must be 1-{MAX_PAGE_SIZE}.", code="InvalidParameter.OutOfRange"
            )
        if flt.state and flt.state not in {s.value for s in JobState}:
            raise InvalidParameter.field(
                "state", f"State {flt.state!r} is unknown; use " + ", ".join(s.value for s in JobState) + "."
            )
        # Jobs the caller may not see are skipped; a page is filled from further rows, a
        # bounded number of reads (a short page with a token means "more may follow").
        jobs: list[Job] = []
        for _ in range(_LIST_READS):
            rows, token = await self.store.list_jobs(flt, size - len(jobs), token)
            jobs += [j for j in rows if visible(j)]
            if len(jobs) >= size or not token:
                break
        return jobs, [], token

    async def get(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id) if job_id else None
        if job is None:
            raise ResourceNotFound(
                f"Snapshot job {job_id!r} does not exist; check the id returned by SubmitSnapshotJob."
            )
        return job

    async def watch(self, job_id: str) -> AsyncIterator[tuple[str, Job]]:
        """The job as it stands, then each change, ending after the final state."""
        queue = self.events.subscribe(job_id)
        try:
            job = await self.get(job_id)
            yield "initial", job
            last = job
            while not last.state.finished:
                item = await queue.get()
                if item is None:
                    last = await self.get(job_id)
                    yield "state", last
                    if not last.state.finished:
                        queue = self._resubscribe(job_id, queue)
                    continue
                kind, job = item
                if _older(job, last):
                    continue
                last = job
                yield kind, job
        finally:
            self.events.unsubscribe(job_id, queue)

    def _resubscribe(
        self, job_id: str, old: asyncio.Queue[tuple[str, Job] | None]
    ) -> asyncio.Queue[tuple[str, Job] | None]:
        self.events.unsubscribe(job_id, old)
        return self.events.subscribe(job_id)

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.state.finished:
            raise InvalidState(
                f"Snapshot job {job_id} has already ended in state {job.state.value}; "
                "only Submitted or Snapshoting jobs can be cancelled."
            )
        if self.cancel_async is None:
            raise InvalidState(f"Snapshot job {job_id} cannot be cancelled on this server.")
        return await self.cancel_async(job)


def _older(job: Job, last: Job) -> bool:
    """True for an event that predates what the watcher has already seen."""
    if last.state.finished:
        return True
    if job.state.finished:
        return False
    return _rank(job) < _rank(last)


def _rank(job: Job) -> tuple[int, int, int, int]:
    if job.state is JobState.SUBMITTED and job.code:
        # Given back after a service fault: after everything of that attempt, before the next.
        return job.attempts, 3, 0, 0
    return job.attempts, _PROGRESS_RANK.get(job.state, 2), len(job.images), len(job.sprites)
