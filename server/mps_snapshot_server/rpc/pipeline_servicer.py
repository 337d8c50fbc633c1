"""PipelineService: converts, calls PipelineRegistry, converts back."""

from __future__ import annotations

from grpc import aio

from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.api import pipeline_service_pb2_grpc as pps_grpc
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.rpc import converters
from mps_snapshot_server.rpc.calls import Call, unary
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.service.pipelines import PipelineChanges, PipelineRegistry


class PipelineServicer(pps_grpc.PipelineServiceServicer):
    SERVICE = "mps.snapshot.v1.PipelineService"

    def __init__(self, registry: PipelineRegistry, guard: Guard, telemetry: Telemetry | None = None) -> None:
        self.telemetry = telemetry or Telemetry()
        self.registry = registry
        self.guard = guard

    @unary
    async def AddPipeline(
        self,
        request: pps.AddPipelineRequest,
        context: aio.ServicerContext[pps.AddPipelineRequest, pps.AddPipelineResponse],
        call: Call,
    ) -> pps.AddPipelineResponse:
        call.authorize("pipeline/*")
        pipeline = await self.registry.add(
            name=request.name,
            speed=request.speed,
            speed_level=request.speed_level,
            notify=converters.add_pipeline_notify(request),
            role=request.role,
            max_jobs=request.max_concurrent_jobs if request.HasField("max_concurrent_jobs") else None,
            capacity=request.queue_capacity if request.HasField("queue_capacity") else None,
        )
        return pps.AddPipelineResponse(request_id=call.request_id, pipeline=converters.pipeline_to_proto(pipeline))

    @unary
    async def UpdatePipeline(
        self,
        request: pps.UpdatePipelineRequest,
        context: aio.ServicerContext[pps.UpdatePipelineRequest, pps.UpdatePipelineResponse],
        call: Call,
    ) -> pps.UpdatePipelineResponse:
        changes = PipelineChanges(
            name=request.name,
            state=request.state,
            notify_config=converters.add_pipeline_notify(request),
            role=request.role,
            max_concurrent_jobs=request.max_concurrent_jobs if request.HasField("max_concurrent_jobs") else None,
            queue_capacity=request.queue_capacity if request.HasField("queue_capacity") else None,
        )
        call.authorize(f"pipeline/{request.pipeline_id}")
        pipeline = await self.registry.update(request.pipeline_id, changes)
        return pps.UpdatePipelineResponse(request_id=call.request_id, pipeline=converters.pipeline_to_proto(pipeline))

    @unary
    async def QueryPipelineList(
        self,
        request: pps.QueryPipelineListRequest,
        context: aio.ServicerContext[pps.QueryPipelineListRequest, pps.QueryPipelineListResponse],
        call: Call,
    ) -> pps.QueryPipelineListResponse:
        ids = [i.strip() for raw in request.pipeline_ids for i in raw.split(",") if i.strip()]
        call.authorize(*(f"pipeline/{i}" for i in ids))
        found, missing = self.registry.query(ids)
        return pps.QueryPipelineListResponse(
            request_id=call.request_id,
            pipeline_list=[converters.pipeline_to_proto(p) for p in found],
            non_exist_pids=missing,
        )

    @unary
    async def SearchPipeline(
        self,
        request: pps.SearchPipelineRequest,
        context: aio.ServicerContext[pps.SearchPipelineRequest, pps.SearchPipelineResponse],
        call: Call,
    ) -> pps.SearchPipelineResponse:
        call.authorize("pipeline/*")
        page, total, number, size = self.registry.search(request.state, request.page_number, request.page_size)
        return pps.SearchPipelineResponse(
            request_id=call.request_id,
            total_count=total,
            page_number=number,
            page_size=size,
            pipeline_list=[converters.pipeline_to_proto(p) for p in page],
        )

    @unary
    async def DeletePipeline(
        self,
        request: pps.DeletePipelineRequest,
        context: aio.ServicerContext[pps.DeletePipelineRequest, pps.DeletePipelineResponse],
        call: Call,
    ) -> pps.DeletePipelineResponse:
        call.authorize(f"pipeline/{request.pipeline_id}")
        await self.registry.delete(request.pipeline_id)
        return pps.DeletePipelineResponse(request_id=call.request_id, pipeline_id=request.pipeline_id)
