"""Building the grpc.aio server: services, health checking, reflection, limits, TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mps_snapshot_client.api import pipeline_service_pb2, snapshot_service_pb2
from mps_snapshot_server.domain.errors import MpsError
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.rpc.calls import safe_deserializer
from mps_snapshot_server.rpc.errors import rich_status
from mps_snapshot_server.rpc.pipeline_servicer import PipelineServicer
from mps_snapshot_server.rpc.snapshot_servicer import SnapshotServicer
from mps_snapshot_server.security.authn import Authenticator
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.service.jobs import JobService
from mps_snapshot_server.service.pipelines import PipelineRegistry

SNAPSHOT_SERVICE = snapshot_service_pb2.DESCRIPTOR.services_by_name["SnapshotService"]
PIPELINE_SERVICE = pipeline_service_pb2.DESCRIPTOR.services_by_name["PipelineService"]
SERVICE_NAMES = (SNAPSHOT_SERVICE.full_name, PIPELINE_SERVICE.full_name)

# Requests are small; a tight limit keeps a flood of large messages from costing memory.
MAX_RECEIVE_BYTES = 1024 * 1024
OPTIONS = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
)


def _register(server: aio.Server, servicer: object, service: ServiceDescriptor, module: ModuleType) -> None:
    """Like the generated add_*_to_server, but undecodable requests reach the handler as
    ``Undecodable`` (and become INVALID_ARGUMENT) instead of an opaque UNKNOWN."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_cls = getattr(module, method.input_type.name)
        response_cls = getattr(module, method.output_type.name)
        factory = (
            grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=safe_deserializer(request_cls.FromString),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class ReflectionAuth(aio.ServerInterceptor):
    """Reflection follows the rules of the other calls: with principals configured, only an
    authenticated caller may read the schema. Health checking always stays open."""

    def __init__(self, authenticator: Authenticator, client_certs_required: bool) -> None:
        self.authenticator = authenticator
        self.client_certs_required = client_certs_required

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        if method.startswith("/grpc.reflection.") and self.authenticator.enabled and not self.client_certs_required:
            metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
            try:
                self.authenticator.authenticate(metadata, method)
            except MpsError as exc:
                return _refusal(exc)
        return await continuation(details)


def _refusal(error: MpsError) -> grpc.RpcMethodHandler[Any, Any]:
    code, message, details = rich_status(error, "-")

    async def refuse(request_iterator: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", details),))
        yield None  # pragma: no cover - abort raises

    return grpc.stream_stream_rpc_method_handler(refuse)


def _tracing_interceptors(telemetry: Telemetry) -> tuple[aio.ServerInterceptor, ...]:
    """The standard OpenTelemetry gRPC server interceptor, when tracing is on."""
    if telemetry.tracing.provider is None:
        return ()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=telemetry.tracing.provider
    )
    return (interceptor,)


def credentials(cert_file: str, key_file: str, client_ca_file: str) -> grpc.ServerCredentials:
    client_ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def build(
    jobs: JobService,
    pipelines: PipelineRegistry,
    guard: Guard,
    *,
    reflection_enabled: bool,
    max_concurrent_rpcs: int,
    client_certs_required: bool,
    telemetry: Telemetry | None = None,
    max_concurrent_streams: int = 1000,
) -> tuple[aio.Server, health_aio.HealthServicer]:
    telemetry = telemetry or Telemetry()
    server = aio.server(
        # Streams per connection: calls above the limit are refused with RST_STREAM
        # (UNAVAILABLE to the caller), not queued, on new and established connections alike
        # (measured). Matching it to the server-wide call limit serves a burst of up to that
        # many calls on one connection (figures in docs/security.md); 0: gRPC's default.
        options=(
            *OPTIONS,
            *((("grpc.max_concurrent_streams", max_concurrent_streams),) if max_concurrent_streams > 0 else ()),
        ),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        # Tracing first, so the RPC's span is current while the call is admitted and handled.
        interceptors=(
            *_tracing_interceptors(telemetry),
            ReflectionAuth(guard.authenticator, client_certs_required),
        ),
    )
    _register(server, SnapshotServicer(jobs, guard, telemetry), SNAPSHOT_SERVICE, snapshot_service_pb2)
    _register(server, PipelineServicer(pipelines, guard, telemetry), PIPELINE_SERVICE, pipeline_service_pb2)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_enabled:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    return server, health


class GrpcServer:
    """The gRPC side of a running server: the grpc.aio server with its services, bound to
    its port, its health status, and its stop. The composition root sees no grpc types."""

    def __init__(
        self,
        jobs: JobService,
        pipelines: PipelineRegistry,
        guard: Guard,
        *,
        reflection_enabled: bool,
        max_concurrent_rpcs: int,
        max_concurrent_streams: int,
        tls_files: tuple[str, str, str] | None,
        telemetry: Telemetry,
    ) -> None:
        """``tls_files``: (certificate, key, client CA or ""), or None for plaintext."""
        self.tls_files = tls_files
        self.server, self.health = build(
            jobs,
            pipelines,
            guard,
            reflection_enabled=reflection_enabled,
            max_concurrent_rpcs=max_concurrent_rpcs,
            client_certs_required=tls_files is not None and bool(tls_files[2]),
            telemetry=telemetry,
            max_concurrent_streams=max_concurrent_streams,
        )

    async def start(self, address: str) -> int:
        """Bind ``address`` (port 0: any free port) and start serving; returns the port."""
        if self.tls_files is not None:
            port = self.server.add_secure_port(address, credentials(*self.tls_files))
        else:
            port = self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
        return port

    async def set_serving(self, serving: bool) -> None:
        await set_serving(self.health, serving)

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING for good, then close the port with ``grace`` for calls in flight."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def set_serving(health: health_aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health.set(name, status)
