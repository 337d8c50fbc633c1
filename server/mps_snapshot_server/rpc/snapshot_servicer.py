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
from mps_snapshot_server.service import access
from mps_snapshot_server.service.jobs import JobService


class SnapshotServicer(sps_grpc.SnapshotServiceServicer):
    SERVICE = "mps.snapshot.v1.SnapshotService"

    def __init__(self, jobs: JobService, guard: Guard, telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry or Telemetry()
        self.jobs = jobs
        self.guard = guard

    def _visible(self, call: Call) -> Callable[[Job], bool]:
        def visible(job: Job) -> bool:
            resources = access.job_resources(job, call.principal.name, write=False)
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
        call.authorize(*access.job_resources(job, call.principal.name, write=write))
        return job

    def _pipeline(self, pipeline_id: str) -> str:
        try:
            return self.jobs.pipelines.resolve(pipeline_id).id
        except MpsError:
            return pipeline_id  # unknown: the call fails with NotFound if allowed

    @unary
    async def SubmitSnapshotJob(
        self,
        request: sps.SubmitSnapshotJobRequest,
        context: aio.ServicerContext[sps.SubmitSnapshotJobRequest, sps.SubmitSnapshotJobResponse],
        call: Call,
    ) -> sps.SubmitSnapshotJobResponse:
        submit = converters.submit_from_proto(request)
        call.authorize(*access.submit_resources(submit, self._pipeline(request.pipeline_id)))
        job = await self.jobs.submit(
            submit,
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
        ids, flt, page_size = converters.query_from_proto(request)
        call.guard.authorize_action(call.principal, call.method)
        jobs, missing, token = await self.jobs.query(
            ids,
            flt=flt,
            token=request.next_page_token,
            page_size=page_size,
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
            yield converters.event_to_proto(kind, job)

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
