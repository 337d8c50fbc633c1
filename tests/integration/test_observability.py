"""Metrics scraped over HTTP around real jobs, spans from an in-memory exporter, and JSON
log lines, all from a real server (gRPC and HTTP over loopback, real ffmpeg)."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from mps_snapshot_server.observability.logging import ContextFilter, JsonFormatter, TextFormatter, set_job
from mps_snapshot_server.observability.tracing import Tracing
from tests.conftest import put
from tests.helpers.media import Video
from tests.integration.test_async_jobs import submit_request


class Observed:
    def __init__(self, app: App, exporter: InMemorySpanExporter, data_dir: Path) -> None:
        self.app = app
        self.exporter = exporter
        self.data_dir = data_dir
        self.base = f"http://127.0.0.1:{app.http_port}"


@pytest_asyncio.fixture(scope="module")
async def observed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Observed]:
    data_dir = tmp_path_factory.mktemp("observed")
    exporter = InMemorySpanExporter()
    settings = load(env={}, listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=data_dir, shutdown_grace_s=1.0)
    app = App(settings, tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)))
    await app.start()
    (data_dir / "obs").mkdir()
    yield Observed(app, exporter, data_dir)
    await app.stop(0.5)


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum over the label values not given."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


async def test_metrics_follow_real_jobs(observed: Observed, videos: dict[str, Video]) -> None:
    put(observed.data_dir, "obs", "m/in.mp4", videos["main"].path)
    before = await scrape(observed.base)
    pipeline = observed.app.pipelines.default.id
    async with SnapshotClient(f"127.0.0.1:{observed.app.port}") as client:
        response = await client.submit(submit_request("obs", "m%2Fin.mp4", out="m/{Count}.jpg", interval=2, num=4))
        job_id = response.snapshot_job.id
        final = await client.wait(job_id, timeout=60)
        assert final.state == "Success" and final.count == 4
        sync = await client.snapshot(
            bucket="obs", object="m%2Fin.mp4", output_bucket="obs", output_object="m/one.jpg", time_ms=1000
        )
        assert sync.state == "Success"
        with pytest.raises(MpsApiError) as bad:
            await client.snapshot(
                bucket="obs", object="m%2Fmissing.mp4", output_bucket="obs", output_object="x.jpg", time_ms=0
            )
        assert bad.value.code == "InvalidParameter.ResourceNotFound"
    after = await scrape(observed.base)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    submit = "mps_snapshot_rpc_calls_total"
    assert delta(submit, method="SubmitSnapshotJob", code="OK") == 2
    assert delta(submit, method="SubmitSnapshotJob", code="InvalidParameter.ResourceNotFound") == 1
    assert delta("mps_snapshot_rpc_duration_seconds_count", method="SubmitSnapshotJob") == 3
    assert delta("mps_snapshot_jobs_submitted_total", pipeline=pipeline, mode="async") == 1
    assert delta("mps_snapshot_jobs_submitted_total", pipeline=pipeline, mode="sync") == 1
    assert delta("mps_snapshot_jobs_finished_total", pipeline=pipeline, state="Success") == 2
    assert delta("mps_snapshot_images_written_total", pipeline=pipeline) == 5
    assert delta("mps_snapshot_job_duration_seconds_count", pipeline=pipeline) == 1
    assert value(after, "mps_snapshot_jobs", state="Success", pipeline=pipeline) >= 2
    assert value(after, "mps_snapshot_pipeline_queue_depth", pipeline=pipeline) == 0
    assert value(after, "mps_snapshot_pipeline_running_jobs", pipeline=pipeline) == 0
    assert value(after, "mps_snapshot_ffmpeg_processes") == 0
    assert value(after, "mps_snapshot_ffmpeg_processes_limit") == observed.app.engine.max_processes
    ffmpeg_runs = total(after, "mps_snapshot_ffmpeg_run_duration_seconds_count", outcome="ok") - total(
        before, "mps_snapshot_ffmpeg_run_duration_seconds_count", outcome="ok"
    )
    assert ffmpeg_runs >= 2  # at least a probe and a capture
    assert total(after, "mps_snapshot_ffmpeg_run_duration_seconds_count", kind="probe") >= 1
    assert delta("mps_snapshot_storage_calls_total", backend="local", operation="put", outcome="ok") == 5
    assert delta("mps_snapshot_storage_written_bytes_total", backend="local") > 5 * 1000
    # Bounded labels: no job id, request id or object key ever becomes a label value.
    for _, labels in after:
        for _, label_value in labels:
            assert job_id not in label_value and "in.mp4" not in label_value and "/" not in label_value


async def test_throttled_calls_are_counted_by_limit_class(tmp_path: Path) -> None:
    settings = load(env={}, listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=tmp_path, rate_query=1.0)
    app = App(settings)
    await app.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{app.port}") as client:
            throttled = 0
            for _ in range(4):
                try:
                    await client.query([], state="Success")
                except MpsApiError as err:
                    assert err.code == "Throttling.User"
                    throttled += 1
            assert throttled >= 2
        samples = await scrape(f"http://127.0.0.1:{app.http_port}")
        assert value(samples, "mps_snapshot_throttled_calls_total", limit_class="query") == throttled
        assert value(
            samples, "mps_snapshot_rpc_calls_total", method="QuerySnapshotJobList", code="Throttling.User"
        ) == (throttled)
    finally:
        await app.stop(0.5)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_spans_link_the_async_run_to_the_submit_call(observed: Observed, videos: dict[str, Video]) -> None:
    put(observed.data_dir, "obs", "t/in.mp4", videos["tiny"].path)
    observed.exporter.clear()
    async with SnapshotClient(f"127.0.0.1:{observed.app.port}") as client:
        response = await client.submit(submit_request("obs", "t%2Fin.mp4", out="t/{Count}.jpg", interval=1, num=3))
        final = await client.wait(response.snapshot_job.id, timeout=60)
    assert final.state == "Success"
    spans = observed.exporter.get_finished_spans()
    submit = _by_name(spans, "/mps.snapshot.v1.SnapshotService/SubmitSnapshotJob")
    assert len(submit) == 1 and submit[0].kind is SpanKind.SERVER
    assert submit[0].attributes is not None and submit[0].attributes["mps.code"] == "OK"
    (run,) = [s for s in _by_name(spans, "job.run") if s.attributes and s.attributes["mps.job_id"] == final.id]
    submit_ctx = submit[0].get_span_context()
    assert run.parent is not None and run.parent.span_id == submit_ctx.span_id
    assert run.get_span_context().trace_id == submit_ctx.trace_id
    assert [link.context.span_id for link in run.links] == [submit_ctx.span_id]
    assert run.attributes is not None and run.attributes["mps.job.state"] == "Success"
    # Probe, ffmpeg runs and storage writes of the run are its descendants, in the same trace.
    by_id = {s.get_span_context().span_id: s for s in spans}

    def under_run(span: ReadableSpan) -> bool:
        parent = span.parent
        while parent is not None:
            if parent.span_id == run.get_span_context().span_id:
                return True
            ancestor = by_id.get(parent.span_id)
            parent = ancestor.parent if ancestor is not None else None
        return False

    ffmpeg_spans = [s for s in spans if s.name.startswith(("ffmpeg.", "ffprobe.")) and under_run(s)]
    assert {s.name for s in ffmpeg_spans} >= {"ffprobe.probe"}
    assert any(s.name.startswith("ffmpeg.") for s in ffmpeg_spans)
    puts = [s for s in spans if s.name == "storage.put" and under_run(s)]
    assert len(puts) == 3
    assert all(s.attributes and s.attributes["mps.storage.bucket"] == "obs" for s in puts)
    # The probe made while Submit checked the input belongs to the Submit span instead.
    heads = [s for s in spans if s.name == "storage.head" and s.parent is not None]
    assert any(s.parent is not None and s.parent.span_id == submit_ctx.span_id for s in heads)


async def test_json_log_lines_carry_job_pipeline_request_and_trace(
    observed: Observed, videos: dict[str, Video]
) -> None:
    put(observed.data_dir, "obs", "j/in.mp4", videos["tiny"].path)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        async with SnapshotClient(f"127.0.0.1:{observed.app.port}") as client:
            response = await client.submit(submit_request("obs", "j%2Fin.mp4", out="j/{Count}.jpg", interval=1, num=2))
            job_id = response.snapshot_job.id
            final = await client.wait(job_id, timeout=60)
        assert final.state == "Success"
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    submit = [line for line in lines if line["message"].startswith("SubmitSnapshotJob OK")]
    assert len(submit) == 1
    assert submit[0]["request_id"] == response.request_id
    assert submit[0]["job_id"] == job_id and submit[0]["principal"] == "anonymous"
    assert len(submit[0]["trace_id"]) == 32 and len(submit[0]["span_id"]) == 16
    ended = [line for line in lines if line["message"].startswith(f"job {job_id} ended Success")]
    assert len(ended) == 1
    assert ended[0]["job_id"] == job_id and ended[0]["pipeline_id"] == final.pipeline_id
    assert ended[0]["principal"] == "anonymous"  # the submitter, carried to the async run
    # The run is a child of the Submit span: the same trace id on both lines.
    assert ended[0]["trace_id"] == submit[0]["trace_id"]


async def test_metrics_endpoint_absent_without_http_listen(app: App) -> None:
    assert app.http is None and app.http_port == 0


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver on loopback, keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, Any]]:
        """(service name, span) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    found.extend((service, span) for span in scope_spans.spans)
        return found


async def test_served_process_exports_otlp_logs_json_and_serves_metrics(
    tmp_path: Path, videos: dict[str, Video]
) -> None:
    """`python -m mps_snapshot_server` configured by environment only: OTLP to a collector, JSON logs, /metrics."""
    collector = Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    put(tmp_path, "proc", "in.mp4", videos["tiny"].path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MPS_SNAPSHOT_", "OTEL_"))},
        "MPS_SNAPSHOT_DATA_DIR": str(tmp_path),
        "MPS_SNAPSHOT_LISTEN": "127.0.0.1:0",
        "MPS_SNAPSHOT_HTTP_LISTEN": "127.0.0.1:0",
        "MPS_SNAPSHOT_LOG_FORMAT": "json",
        "MPS_SNAPSHOT_TRACE_EXPORTER": "otlp",
        "MPS_SNAPSHOT_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mps_snapshot_server", env=env, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        ports: dict[str, int] = {}
        async with asyncio.timeout(30):
            while len(ports) < 2:
                raw = await proc.stderr.readline()
                assert raw, "server exited early"
                line = json.loads(raw)  # every line is JSON
                lines.append(line)
                if match := re.search(r"^(listening|HTTP).*\(port (\d+)\)", line["message"]):
                    ports[match.group(1)] = int(match.group(2))
        async with SnapshotClient(f"127.0.0.1:{ports['listening']}") as client:
            submitted = await client.submit(submit_request("proc", "in.mp4", out="p/{Count}.jpg", interval=1, num=2))
            final = await client.wait(submitted.snapshot_job.id, timeout=60)
        assert final.state == "Success"
        samples = await scrape(f"http://127.0.0.1:{ports['HTTP']}")
        assert value(samples, "mps_snapshot_images_written_total", pipeline=final.pipeline_id) == 2
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            lines.extend(json.loads(raw) for raw in (await proc.stderr.read()).splitlines())
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await receiver.stop(None)
    ended = [x for x in lines if x["message"].startswith(f"job {final.id} ended Success")]
    assert len(ended) == 1 and ended[0]["job_id"] == final.id and ended[0]["pipeline_id"] == final.pipeline_id
    spans = collector.spans()
    assert {service for service, _ in spans} == {"mps-snapshot"}
    submit = [s for _, s in spans if s.name == "/mps.snapshot.v1.SnapshotService/SubmitSnapshotJob"]
    runs = [s for _, s in spans if s.name == "job.run"]
    assert len(submit) == 1 and len(runs) == 1
    assert runs[0].parent_span_id == submit[0].span_id and runs[0].trace_id == submit[0].trace_id
    assert ended[0]["trace_id"] == submit[0].trace_id.hex()
    assert any(s.name == "ffprobe.probe" and s.trace_id == submit[0].trace_id for _, s in spans)


def test_text_lines_name_the_job_and_the_trace() -> None:
    tracing = Tracing.with_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("tests.text_format")
    logger.addHandler(handler)
    logger.propagate = False

    def emit() -> str:
        set_job("5f0c" * 8, "pipe-1")
        with tracing.tracer.start_as_current_span("job.run") as span:
            logger.warning("disk %s", "slow")
            return format(span.get_span_context().trace_id, "032x")

    try:
        trace_id = contextvars.copy_context().run(emit)
        logger.warning("outside any job")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"WARNING tests.text_format [-] disk slow (job {'5f0c' * 8}) trace={trace_id}")
    assert second.endswith("WARNING tests.text_format [-] outside any job")
