"""Spans and counters around every object storage call, without the backends knowing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from opentelemetry.trace import SpanKind, Status, StatusCode

from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.storage.base import InputHandle, ObjectInfo, ObjectStore, StoreWrapper


class ObservedStore(StoreWrapper):
    """An ObjectStore that reports each call as a span (``storage.<operation>``, with the
    bucket but not the key as an attribute, as keys may be personal data) and a counter."""

    def __init__(self, inner: ObjectStore, backend: str, telemetry: Telemetry) -> None:
        super().__init__(inner)
        self.backend = backend
        self.telemetry = telemetry

    def wrap(self, inner: ObjectStore) -> ObjectStore:
        return ObservedStore(inner, self.backend, self.telemetry)

    @contextlib.contextmanager
    def _observe(self, operation: str, bucket: str) -> Iterator[None]:
        tracer = self.telemetry.tracing.tracer
        outcome = "error"
        with tracer.start_as_current_span(
            f"storage.{operation}",
            kind=SpanKind.CLIENT,
            attributes={"mps.storage.backend": self.backend, "mps.storage.bucket": bucket},
        ) as span:
            try:
                yield
                outcome = "ok"
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                self.telemetry.metrics.storage_calls.labels(self.backend, operation, outcome).inc()

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._observe("head", bucket):
            return await self.inner.head(bucket, key)

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        with self._observe("input_handle", bucket):
            return await self.inner.input_handle(bucket, key)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        with self._observe("put", bucket):
            await self.inner.put_file(bucket, key, path, content_type)
        with contextlib.suppress(OSError):
            size = (await asyncio.to_thread(path.stat)).st_size
            self.telemetry.metrics.storage_written_bytes.labels(self.backend).inc(size)

    async def delete(self, bucket: str, key: str) -> None:
        with self._observe("delete", bucket):
            await self.inner.delete(bucket, key)
