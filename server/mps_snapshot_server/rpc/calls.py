"""What every RPC gets: a request id (response, trailer, logs), authentication and rate
limiting before the handler runs, authorization helpers, errors turned into rich statuses
through the one table, and no internals leaked on surprises or undecodable requests."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError
from grpc import aio

from mps_snapshot_server.domain.errors import ErrorCode, InternalError, InvalidParameter, MpsError, Throttled
from mps_snapshot_server.domain.ids import new_request_id
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.observability.logging import principal_var, request_id_var
from mps_snapshot_server.observability.tracing import set_attributes
from mps_snapshot_server.rpc.errors import rich_status
from mps_snapshot_server.security.authn import Principal
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.security.methods import limit_class

log = logging.getLogger("mps_snapshot.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Guarded(Protocol):
    guard: Guard
    telemetry: Telemetry


@dataclass(frozen=True)
class Call:
    """The caller as the handler sees it."""

    request_id: str
    principal: Principal
    method: str
    guard: Guard

    def authorize(self, *resources: str) -> None:
        self.guard.authorize(self.principal, self.method, resources)


class Undecodable:
    """Stands in for a request whose bytes are not the expected message."""


def safe_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return Undecodable()

    return deserialize


async def _abort(context: aio.ServicerContext[Any, Any], error: MpsError, request_id: str) -> None:
    code, message, details = rich_status(error, request_id)
    await context.abort(
        code, message, trailing_metadata=(("grpc-status-details-bin", details), ("x-request-id", request_id))
    )


def _surprise(method: str) -> MpsError:
    log.exception("unexpected error in %s", method)
    return InternalError("An internal error occurred; quote the RequestId when reporting it.")


def _cert_cn(context: aio.ServicerContext[Any, Any]) -> str | None:
    auth = context.auth_context()
    names = list(auth.get("x509_common_name", ())) if auth else []
    return names[0].decode() if names else None


async def _admit(
    owner: Guarded, method: str, request: object, context: aio.ServicerContext[Any, Any], request_id: str
) -> Call:
    if isinstance(request, Undecodable):
        raise InvalidParameter(
            "The request could not be decoded as the method's message; check the client's "
            "generated code matches the server's protos."
        )
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    full_method = f"/{type(owner).SERVICE}/{method}"  # type: ignore[attr-defined]
    principal = owner.guard.admit(method, full_method, metadata, _cert_cn(context))
    await owner.guard.admit_shared(principal, method, metadata)
    principal_var.set(principal.name)
    return Call(request_id=request_id, principal=principal, method=method, guard=owner.guard)


def _record(owner: Guarded, method: str, error: MpsError | None, seconds: float | None) -> None:
    """Metrics and span attributes of one answered call (streams have no latency)."""
    metrics = owner.telemetry.metrics
    metrics.rpc(method, error.code if error else "OK", seconds)
    if isinstance(error, Throttled):
        limit = "watch_streams" if error.code == ErrorCode.THROTTLING_WATCH_STREAMS else limit_class(method)
        metrics.throttled.labels(limit).inc()
    set_attributes(request_id=request_id_var.get(), code=error.code if error else "OK", principal=principal_var.get())


Handler = Callable[[Any, Req, aio.ServicerContext[Req, Resp], Call], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, aio.ServicerContext[Req, Resp], Call], AsyncIterator[Resp]]


def unary(fn: Handler[Req, Resp]) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def handler(self: Guarded, request: Req, context: aio.ServicerContext[Req, Resp]) -> Resp:
        request_id = new_request_id()
        request_id_var.set(request_id)
        started = time.monotonic()
        error: MpsError | None = None
        try:
            call = await _admit(self, fn.__name__, request, context, request_id)
            response = await fn(self, request, context, call)
        except MpsError as exc:
            error = exc
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception:
            error = _surprise(fn.__name__)
        elapsed = (time.monotonic() - started) * 1000
        _record(self, fn.__name__, error, elapsed / 1000)
        if error is None:
            log.info("%s OK %.1f ms", fn.__name__, elapsed)
            context.set_trailing_metadata((("x-request-id", request_id),))
            return response
        log.info("%s %s %.1f ms: %s", fn.__name__, error.code, elapsed, error.message)
        await _abort(context, error, request_id)
        raise AssertionError("abort returned")

    return handler


def server_stream(
    fn: StreamHandler[Req, Resp],
) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def handler(self: Guarded, request: Req, context: aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        request_id = new_request_id()
        request_id_var.set(request_id)
        error: MpsError | None = None
        try:
            call = await _admit(self, fn.__name__, request, context, request_id)
            with self.guard.watch_slot(call.principal):
                async for item in fn(self, request, context, call):
                    yield item
        except MpsError as exc:
            error = exc
        except (asyncio.CancelledError, aio.AbortError, GeneratorExit):
            raise
        except Exception:
            error = _surprise(fn.__name__)
        _record(self, fn.__name__, error, None)
        if error is not None:
            log.info("%s %s: %s", fn.__name__, error.code, error.message)
            await _abort(context, error, request_id)
        else:
            context.set_trailing_metadata((("x-request-id", request_id),))

    return handler


def time_remaining(context: aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else float(remaining)
