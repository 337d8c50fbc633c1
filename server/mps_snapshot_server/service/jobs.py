"""Job use cases: submit (a synchronous snapshot runs inline on the job runner; an async
job goes to the job queue), query, get, watch and cancel. Transport-free: the gRPC and
HTTP layers only convert and map errors."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from mps_snapshot_server.domain import planning, sprites, validation
from mps_snapshot_server.domain.errors import (
    ErrorCode,
    InvalidParameter,
    InvalidState,
    MpsError,
    ResourceNotFound,
)
from mps_snapshot_server.domain.ids import new_id
from mps_snapshot_server.domain.models import Job, JobEventKind, JobState, SnapshotRequest
from mps_snapshot_server.media.engine import MediaEngine
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.observability.logging import set_job
from mps_snapshot_server.service.idempotency import ClientTokens
from mps_snapshot_server.service.pipelines import PipelineRegistry
from mps_snapshot_server.store.base import JobQuery
from mps_snapshot_server.store.events import Event
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.worker.runner import Input, JobRunner, now

log = logging.getLogger(__name__)

MAX_QUERY_IDS = 10
DEFAULT_PAGE_SIZE = 30
MAX_PAGE_SIZE = 300
#: Store reads one QuerySnapshotJobList page may take to fill itself with visible jobs.
_LIST_READS = 10
# Time kept back from the caller's deadline to record the failure and answer.
_DEADLINE_MARGIN_S = 0.15

_PROGRESS_RANK = {JobState.SUBMITTED: 0, JobState.SNAPSHOTING: 1}


class JobQueue(Protocol):
    """Where async jobs go: the in-process scheduler, or the replicas' shared queue."""

    async def submit(self, job: Job, valid: validation.ValidRequest) -> Job:
        """Admit the job (QueueFull when its pipeline is full), commit it, queue it."""
        ...

    async def cancel(self, job: Job) -> Job:
        """Cancel an unfinished job; returns it Cancelled."""
        ...


class JobService:
    def __init__(
        self,
        *,
        ledger: JobLedger,
        runner: JobRunner,
        queue: JobQueue,
        engine: MediaEngine,
        pipelines: PipelineRegistry,
        sync_timeout_s: float,
        max_sprite_pixels: int,
        telemetry: Telemetry,
    ) -> None:
        self.ledger = ledger
        self.store = ledger.store
        self.runner = runner
        self.queue = queue
        self.engine = engine
        self.pipelines = pipelines
        self.sync_timeout_s = sync_timeout_s
        self.max_sprite_pixels = max_sprite_pixels
        self.telemetry = telemetry
        self.tokens = ClientTokens(self.store)

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

        async def create() -> Job:
            return await self._submit(request, request_id=request_id, time_remaining=time_remaining, owner=principal)

        if not client_token:
            return await create()
        return await self.tokens.once(principal, client_token, request, create)

    async def _submit(
        self, request: SnapshotRequest, *, request_id: str, time_remaining: float | None, owner: str = ""
    ) -> Job:
        valid = validation.validate(request)
        await self.pipelines.ensure(request.pipeline_id)
        pipeline = self.pipelines.resolve(request.pipeline_id)
        router = self.runner.router
        router.store_for(valid.input, "input")
        router.store_for(valid.output_file, "snapshot_config.output_file")
        if valid.config.tile_output_file is not None and valid.config.tile_out is not None:
            router.store_for(valid.config.tile_output_file, "snapshot_config.tile_output_file")
        if valid.config.animated_output_file is not None and valid.config.animated_out is not None:
            router.store_for(valid.config.animated_output_file, "snapshot_config.animated_output_file")
        source = await self.runner.resolve(valid)
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
        limit = self.sync_timeout_s if time_remaining is None else min(self.sync_timeout_s, time_remaining)
        if valid.is_async:
            if valid.config.tile_out is not None:
                await self._check_sprites(valid, source, limit)
            job = await self.queue.submit(job, valid)
            submitted.labels(job.pipeline_id, "async").inc()
            return job
        submitted.labels(job.pipeline_id, "sync").inc()
        if time_remaining is not None:
            limit = min(limit, time_remaining - _DEADLINE_MARGIN_S)
        return await self.runner.run_inline(job, valid, source, limit=limit)

    async def _check_sprites(self, valid: validation.ValidRequest, source: Input, limit: float) -> None:
        """Sprite rules that need the video's size and duration, checked before the job is
        accepted: the sprite's pixel size, and {TileCount} when more than one sprite results."""
        config = valid.config
        assert config.tile_out is not None and valid.tile_name is not None
        info = await self.engine.probe(await source.handle(), source.version, limit)
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

    async def query(
        self,
        ids: list[str],
        *,
        flt: JobQuery,
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
                "maximum_page_size",
                f"MaximumPageSize must be 1-{MAX_PAGE_SIZE}.",
                code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE,
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

    async def watch(self, job_id: str) -> AsyncIterator[tuple[JobEventKind, Job]]:
        """The job as it stands, then each change, ending after the final state."""
        events = self.ledger.events
        queue = events.subscribe(job_id)
        try:
            job = await self.get(job_id)
            yield JobEventKind.INITIAL, job
            last = job
            while not last.state.finished:
                item = await queue.get()
                if item is None:
                    last = await self.get(job_id)
                    yield JobEventKind.STATE, last
                    if not last.state.finished:
                        queue = self._resubscribe(job_id, queue)
                    continue
                kind, job = item
                if _older(job, last):
                    continue
                last = job
                yield kind, job
        finally:
            events.unsubscribe(job_id, queue)

    def _resubscribe(self, job_id: str, old: asyncio.Queue[Event]) -> asyncio.Queue[Event]:
        self.ledger.events.unsubscribe(job_id, old)
        return self.ledger.events.subscribe(job_id)

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.state.finished:
            raise InvalidState(
                f"Snapshot job {job_id} has already ended in state {job.state.value}; "
                "only Submitted or Snapshoting jobs can be cancelled."
            )
        return await self.queue.cancel(job)


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
