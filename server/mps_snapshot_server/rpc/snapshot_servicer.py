"""SnapshotService: converts, calls JobService, converts back. No business logic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from grpc import aio

from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_client.api import snapshot_service_pb2_grpc as sps_grpc
from mps_snapshot_server.domain.errors import MpsError, ResourceNotFound
from mps_snapshot_server.domain.models import Job
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.rpc import converters
from mps_snapshot_server.rpc.calls import Call, server_stream, time_remaining, unary
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.security.policy import bucket
from mps_snapshot_server.service.jobs import JobService
from mps_snapshot_server.store.sqlite import JobFilter

_KIND = {
    "initial": sps.SnapshotJobEvent.KIND_INITIAL,
    "state": sps.SnapshotJobEvent.KIND_STATE_CHANGED,
    "image": sps.SnapshotJobEvent.KIND_IMAGE_WRITTEN,
    "sprite": sps.SnapshotJobEvent.KIND_SPRITE_WRITTEN,
}


class SnapshotServicer(sps_grpc.SnapshotServiceServicer):
    SERVICE = "mps.snapshot.v1.SnapshotService"

    def __init__(self, jobs: JobService, guard: Guard, telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry or Telemetry()
        self.jobs = jobs
        self.guard = guard

    @staticmethod
    def job_resources(job: Job, caller: str, *, write: bool) -> tuple[str, ...]:
        """What a call about an existing job is checked against: its pipeline, its input
        bucket (read), its output buckets (read to look at the job, write to cancel it, which
        removes outputs), and, for another principal's job, ``owner/<submitter>``."""
        request, config = job.request, job.request.config
        outputs = {config.output_file.bucket} if config and config.output_file else set()
        if config and config.tile_out is not None and config.tile_output_file is not None:
            outputs.add(config.tile_output_file.bucket)
        resources = [f"pipeline/{job.pipeline_id}"]
        if request.input is not None:
            resources.append(bucket(request.input.bucket, "read"))
        resources += [bucket(b, "write" if write else "read") for b in sorted(outputs)]
        if job.owner != caller:
            resources.append(f"owner/{job.owner or '-'}")
        return tuple(resources)

    def _visible(self, call: Call) -> Callable[[Job], bool]:
        def visible(job: Job) -> bool:
            resources = self.job_resources(job, call.principal.name, write=False)
            return self.guard.allowed(call.principal, "QuerySnapshotJobList", resources)

        return visible

    async def _job_for(self, call: Call, job_id: str, *, write: bool) -> Job:
        """The job, if the caller may see it; otherwise NotFound, exactly as for an id that
        does not exist (which jobs exist is not revealed)."""
        call.guard.authorize_action(call.principal, call.method)
        job = await self.jobs.get(job_id)
        if not self._visible(call)(job):
            raise ResourceNotFound(
                f"Snapshot job {job_id!r} does not exist; check the id returned by SubmitSnapshotJob."
            )
        call.authorize(*self.job_resources(job, call.principal.name, write=write))
        return job

    def _pipeline_resource(self, pipeline_id: str) -> str:
        try:
            return f"pipeline/{self.jobs.pipelines.resolve(pipeline_id).id}"
        except MpsError:
            return f"pipeline/{pipeline_id}"  # unknown: the call fails with NotFound if allowed

    @unary
    async def SubmitSnapshotJob(
        self,
        request: sps.SubmitSnapshotJobRequest,
        context: aio.ServicerContext[sps.SubmitSnapshotJobRequest, sps.SubmitSnapshotJobResponse],
        call: Call,
    ) -> sps.SubmitSnapshotJobResponse:
        config = request.snapshot_config
        outputs = {config.output_file.bucket}
        if config.HasField("tile_out"):
            outputs.add(config.tile_output_file.bucket)
        call.authorize(
            self._pipeline_resource(request.pipeline_id),
            bucket(request.input.bucket, "read"),
            *(bucket(b, "write") for b in sorted(outputs)),
        )
        job = await self.jobs.submit(
            converters.submit_from_proto(request),
            request_id=call.request_id,
            time_remaining=time_remaining(context),
            principal=call.principal.name,
            client_token=request.client_token,
        )
        return sps.SubmitSnapshotJobResponse(request_id=call.request_id, snapshot_job=converters.job_to_proto(job))

    @unary
    async def QuerySnapshotJobList(
        self,
        request: sps.QuerySnapshotJobListRequest,
        context: aio.ServicerContext[sps.QuerySnapshotJobListRequest, sps.QuerySnapshotJobListResponse],
        call: Call,
    ) -> sps.QuerySnapshotJobListResponse:
        flt = JobFilter(
            state=request.state,
            pipeline_id=request.pipeline_id,
            created_from=(
                converters.from_timestamp(request.start_of_job_created_time_range)
                if request.HasField("start_of_job_created_time_range")
                else None
            ),
            created_to=(
                converters.from_timestamp(request.end_of_job_created_time_range)
                if request.HasField("end_of_job_created_time_range")
                else None
            ),
        )
        ids = [i.strip() for raw in request.snapshot_job_ids for i in raw.split(",") if i.strip()]
        call.guard.authorize_action(call.principal, call.method)
        jobs, missing, token = await self.jobs.query(
            ids,
            flt=flt,
            token=request.next_page_token,
            page_size=request.maximum_page_size if request.HasField("maximum_page_size") else None,
            visible=self._visible(call),
        )
        return sps.QuerySnapshotJobListResponse(
            request_id=call.request_id,
            snapshot_job_list=[converters.job_to_proto(j) for j in jobs],
            non_exist_snapshot_job_ids=missing,
            next_page_token=token,
        )

    @server_stream
    async def WatchSnapshotJob(
        self,
        request: sps.WatchSnapshotJobRequest,
        context: aio.ServicerContext[sps.WatchSnapshotJobRequest, sps.SnapshotJobEvent],
        call: Call,
    ) -> AsyncIterator[sps.SnapshotJobEvent]:
        await self._job_for(call, request.snapshot_job_id, write=False)
        async for kind, job in self.jobs.watch(request.snapshot_job_id):
            yield sps.SnapshotJobEvent(
                kind=_KIND[kind],
                snapshot_job=converters.job_to_proto(job),
                progress=sps.SnapshotJobProgress(
                    images_done=len(job.images),
                    images_planned=job.images_planned,
                    sprites_done=len(job.sprites),
                    sprites_planned=job.sprites_planned,
                ),
            )

    @unary
    async def CancelSnapshotJob(
        self,
        request: sps.CancelSnapshotJobRequest,
        context: aio.ServicerContext[sps.CancelSnapshotJobRequest, sps.CancelSnapshotJobResponse],
        call: Call,
    ) -> sps.CancelSnapshotJobResponse:
        await self._job_for(call, request.snapshot_job_id, write=True)
        job = await self.jobs.cancel(request.snapshot_job_id)
        return sps.CancelSnapshotJobResponse(request_id=call.request_id, snapshot_job=converters.job_to_proto(job))
