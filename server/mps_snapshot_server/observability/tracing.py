"""OpenTelemetry tracing: off by default (a no-op tracer, nothing exported).

Each server builds its own TracerProvider rather than installing a global one, so tests
can run servers with different exporters in one process. Spans: one per RPC (the standard
gRPC server interceptor), one per async job run (a child of the SubmitSnapshotJob span that
queued it, with a link too), and one per probe, ffmpeg run and storage call.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Tracer

SERVICE_NAME = "mps-snapshot"
_INSTRUMENTATION = "mps_snapshot"


class Tracing:
    """A server's tracer, and the submit-time span context of each queued async job."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(_INSTRUMENTATION) if provider is not None else trace.NoOpTracer()
        # Held in memory only: a job recovered after a restart starts a fresh trace.
        self._submitted: dict[str, SpanContext] = {}

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    @classmethod
    def from_settings(cls, exporter: str, endpoint: str, service_name: str = SERVICE_NAME) -> Tracing:
        """``exporter``: "" or "none" (off), "otlp" (OTLP over gRPC to ``endpoint``, or the
        standard OTEL_EXPORTER_OTLP_* variables when it is empty) or "console" (stderr)."""
        kind = exporter.strip().lower()
        if kind in ("", "none", "off"):
            return cls()
        processor: SpanProcessor
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint or None))
        elif kind == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            processor = BatchSpanProcessor(ConsoleSpanExporter())
        else:
            raise ValueError(f"trace_exporter must be none, otlp or console, not {exporter!r}")
        return cls.with_processor(processor, service_name)

    @classmethod
    def with_processor(cls, processor: SpanProcessor, service_name: str = SERVICE_NAME) -> Tracing:
        # OTEL_SERVICE_NAME, when set, names the service (Resource.create lets ours win otherwise).
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(processor)
        return cls(provider)

    def remember_submit(self, job_id: str) -> None:
        """Called while the SubmitSnapshotJob span is current: the job's run links to it."""
        span_context = trace.get_current_span().get_span_context()
        if self.enabled and span_context.is_valid:
            self._submitted[job_id] = span_context

    def job_run_context(self, job_id: str) -> tuple[otel_context.Context | None, list[Link]]:
        """The parent context and links for a job's run span."""
        submitted = self._submitted.pop(job_id, None)
        if submitted is None:
            return None, []
        parent = trace.set_span_in_context(NonRecordingSpan(submitted))
        return parent, [Link(submitted, {"mps.link": "submitted_by"})]

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def current_ids() -> tuple[str, str]:
    """The current trace and span ids (hex), or empty strings outside a recorded span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return "", ""
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def set_attributes(**attributes: Any) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"mps.{k}": v for k, v in attributes.items() if v not in (None, "")})
