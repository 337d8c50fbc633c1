"""Building the grpc.aio server: services, health checking, reflection, limits."""

from __future__ import annotations

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from client.api import pipeline_service_pb2, pipeline_service_pb2_grpc, snapshot_service_pb2, snapshot_service_pb2_grpc
from server.jobs import JobService
from server.pipelines import PipelineRegistry
from server.rpc.pipeline_servicer import PipelineServicer
from server.rpc.snapshot_servicer import SnapshotServicer

SERVICE_NAMES = (
    snapshot_service_pb2.DESCRIPTOR.services_by_name["SnapshotService"].full_name,
    pipeline_service_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
)

# Requests are small; a tight limit keeps a flood of large messages from costing memory.
MAX_RECEIVE_BYTES = 1024 * 1024
OPTIONS = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_concurrent_streams", 256),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
)


def build(
    jobs: JobService, pipelines: PipelineRegistry, *, reflection_enabled: bool
) -> tuple[aio.Server, health_aio.HealthServicer]:
    server = aio.server(options=OPTIONS)
    snapshot_service_pb2_grpc.add_SnapshotServiceServicer_to_server(SnapshotServicer(jobs), server)
    pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server(PipelineServicer(pipelines), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_enabled:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    return server, health


async def set_serving(health: health_aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health.set(name, status)
