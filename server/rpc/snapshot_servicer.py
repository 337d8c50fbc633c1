"""SnapshotService: converts, calls JobService, converts back. No business logic."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from client.api import snapshot_service_pb2 as sps
from client.api import snapshot_service_pb2_grpc as sps_grpc
from server.domain.errors import MpsError
from server.jobs import JobService
from server.observability import Telemetry
from server.rpc import converters
from server.rpc.calls import Call, server_stream, time_remaining, unary
from server.security.guard import Guard
from server.store.sqlite import JobFilter

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

    async def _job_resource(self, job_id: str) -> str:
        # An unknown job is checked as "any pipeline", so a caller without the right
        # cannot learn which ids exist.
        try:
            return f"pipeline/{(await self.jobs.get(job_id)).pipeline_id}"
        except MpsError:
            return "pipeline/*"

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
        buckets = {request.input.bucket, config.output_file.bucket}
        if config.HasField("tile_out"):
            buckets.add(config.tile_output_file.bucket)
        call.authorize(self._pipeline_resource(request.pipeline_id), *(f"bucket/{b}" for b in sorted(buckets)))
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
        if not ids:
            call.authorize(f"pipeline/{request.pipeline_id or '*'}")
        jobs, missing, token = await self.jobs.query(
            ids,
            flt=flt,
            token=request.next_page_token,
            page_size=request.maximum_page_size if request.HasField("maximum_page_size") else None,
        )
        if ids:
            call.authorize(*sorted({f"pipeline/{j.pipeline_id}" for j in jobs}))
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
        call.authorize(await self._job_resource(request.snapshot_job_id))
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
        call.authorize(await self._job_resource(request.snapshot_job_id))
        job = await self.jobs.cancel(request.snapshot_job_id)
        return sps.CancelSnapshotJobResponse(request_id=call.request_id, snapshot_job=converters.job_to_proto(job))
