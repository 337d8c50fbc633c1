"""What every RPC gets: a request id (response, trailer, logs), errors turned into
rich statuses through the one table, and no internals leaked on surprises."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from server.domain.errors import InternalError, MpsError
from server.ids import new_request_id
from server.rpc.errors import rich_status

log = logging.getLogger("mps_snapshot.rpc")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


async def _abort(context: aio.ServicerContext[Any, Any], error: MpsError, request_id: str) -> None:
    code, message, details = rich_status(error, request_id)
    await context.abort(
        code, message, trailing_metadata=(("grpc-status-details-bin", details), ("x-request-id", request_id))
    )


def _surprise(method: str, request_id: str) -> MpsError:
    log.exception("unexpected error in %s", method)
    return InternalError("An internal error occurred; quote the RequestId when reporting it.")


def unary(
    fn: Callable[[Self, Req, aio.ServicerContext[Req, Resp], str], Awaitable[Resp]],
) -> Callable[[Self, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def handler(self: Self, request: Req, context: aio.ServicerContext[Req, Resp]) -> Resp:
        request_id = new_request_id()
        request_id_var.set(request_id)
        started = time.monotonic()
        error: MpsError | None = None
        try:
            response = await fn(self, request, context, request_id)
        except MpsError as exc:
            error = exc
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception:
            error = _surprise(fn.__name__, request_id)
        elapsed = (time.monotonic() - started) * 1000
        if error is None:
            log.info("%s OK %.1f ms", fn.__name__, elapsed)
            context.set_trailing_metadata((("x-request-id", request_id),))
            return response
        log.info("%s %s %.1f ms: %s", fn.__name__, error.code, elapsed, error.message)
        await _abort(context, error, request_id)
        raise AssertionError("abort returned")

    return handler


def server_stream(
    fn: Callable[[Self, Req, aio.ServicerContext[Req, Resp], str], AsyncIterator[Resp]],
) -> Callable[[Self, Req, aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def handler(self: Self, request: Req, context: aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        request_id = new_request_id()
        request_id_var.set(request_id)
        error: MpsError | None = None
        try:
            async for item in fn(self, request, context, request_id):
                yield item
        except MpsError as exc:
            error = exc
        except (asyncio.CancelledError, aio.AbortError, GeneratorExit):
            raise
        except Exception:
            error = _surprise(fn.__name__, request_id)
        if error is not None:
            log.info("%s %s: %s", fn.__name__, error.code, error.message)
            await _abort(context, error, request_id)
        else:
            context.set_trailing_metadata((("x-request-id", request_id),))

    return handler


def time_remaining(context: aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else float(remaining)


__all__ = ["grpc", "request_id_var", "server_stream", "time_remaining", "unary"]
