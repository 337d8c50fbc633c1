"""Metrics, traces and structured logs (docs/operations.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mps_snapshot_server.observability.metrics import Metrics
from mps_snapshot_server.observability.tracing import Tracing


@dataclass
class Telemetry:
    """What a server's parts report to. The default has its own registry and a no-op tracer,
    so parts built without one (unit tests) need no checks."""

    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing = field(default_factory=Tracing)
