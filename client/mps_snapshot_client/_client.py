"""An async client for the snapshot and pipeline services with typed MPS errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mps_snapshot_client import mps_json
from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.api import pipeline_service_pb2_grpc as pps_grpc
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_client.api import snapshot_service_pb2_grpc as sps_grpc
from mps_snapshot_client.auth import access_key_interceptors
from mps_snapshot_client.errors import ResourceNotFoundError, from_rpc_error

T = TypeVar("T")

DEFAULT_TARGET = "127.0.0.1:50051"
FINAL_STATES = frozenset({"Success", "Fail", "Cancelled"})


async def _call(coro: Awaitable[T]) -> T:
    try:
        return await coro
    except aio.AioRpcError as err:
        raise from_rpc_error(err) from None


class SnapshotClient:
    """``async with SnapshotClient("127.0.0.1:50051") as c: job = await c.snapshot(...)``.

    Every method raises a subclass of client.errors.MpsApiError on failure.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: aio.Channel | None = None,
        timeout: float | None = 30.0,
        access_key_id: str = "",
        access_key_secret: str = "",
        auth_mode: str = "hmac",
        root_certificates: bytes | None = None,
        client_certificate: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``access_key_id``/``access_key_secret`` sign every call (``auth_mode`` "hmac" or
        "bearer"); ``root_certificates`` switches to TLS, and ``client_certificate`` (key, chain)
        presents a client certificate for mutual TLS."""
        self._own_channel = channel is None
        interceptors = access_key_interceptors(access_key_id, access_key_secret, auth_mode) if access_key_id else []
        if channel is None:
            if root_certificates is not None or client_certificate is not None:
                key, chain = client_certificate or (None, None)
                creds = grpc.ssl_channel_credentials(root_certificates, key, chain)
                channel = aio.secure_channel(target, creds, interceptors=interceptors)
            else:
                channel = aio.insecure_channel(target, interceptors=interceptors)
        self.channel = channel
        self.timeout = timeout
        self.snapshots = sps_grpc.SnapshotServiceStub(self.channel)
        self.pipelines = pps_grpc.PipelineServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def __aenter__(self) -> SnapshotClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    # Snapshot jobs

    async def submit(
        self, request: sps.SubmitSnapshotJobRequest | Mapping[str, Any] | str, *, timeout: float | None = None
    ) -> sps.SubmitSnapshotJobResponse:
        """Submit a request message, or MPS JSON exactly as MPS takes it."""
        if not isinstance(request, sps.SubmitSnapshotJobRequest):
            request = mps_json.submit_request(request)
        return await _call(self.snapshots.SubmitSnapshotJob(request, timeout=timeout or self.timeout))

    async def snapshot(
        self,
        *,
        bucket: str,
        object: str,
        output_bucket: str,
        output_object: str,
        time_ms: int = 0,
        location: str = "",
        width: int | None = None,
        height: int | None = None,
        frame_type: str = "",
        image_format: str = "",
        quality: int | None = None,
        lossless: bool | None = None,
        fit: str | None = None,
        pad_color: str | None = None,
        no_upscale: bool | None = None,
        time_percent: float | None = None,
        smart_pick_window_ms: int | None = None,
        tone_map: bool | None = None,
    ) -> res.SnapshotJob:
        """One synchronous snapshot; returns the finished job. The keywords after frame_type
        are the fields beyond MPS (docs/api.md); None leaves a field unset. With
        time_percent, time_ms is not sent."""
        config = res.SnapshotConfig(
            output_file=res.OSSFile(bucket=output_bucket, location=location, object=output_object),
            frame_type=frame_type,
            format=image_format,
        )
        if time_percent is None:
            config.time = time_ms
        optional = {
            "width": width,
            "height": height,
            "quality": quality,
            "lossless": lossless,
            "fit": fit,
            "pad_color": pad_color,
            "no_upscale": no_upscale,
            "time_percent": time_percent,
            "tone_map": tone_map,
        }
        for name, value in optional.items():
            if value is not None:
                setattr(config, name, value)
        if smart_pick_window_ms is not None:
            config.smart_pick.window = smart_pick_window_ms
        request = sps.SubmitSnapshotJobRequest(
            input=res.OSSFile(bucket=bucket, location=location, object=object), snapshot_config=config
        )
        return (await self.submit(request)).snapshot_job

    async def query(
        self,
        ids: list[str] | None = None,
        *,
        state: str = "",
        pipeline_id: str = "",
        page_size: int | None = None,
        page_token: str = "",
    ) -> sps.QuerySnapshotJobListResponse:
        request = sps.QuerySnapshotJobListRequest(
            snapshot_job_ids=ids or [], state=state, pipeline_id=pipeline_id, next_page_token=page_token
        )
        if page_size is not None:
            request.maximum_page_size = page_size
        return await _call(self.snapshots.QuerySnapshotJobList(request, timeout=self.timeout))

    async def get(self, job_id: str) -> res.SnapshotJob:
        response = await self.query([job_id])
        if not response.snapshot_job_list:
            raise ResourceNotFoundError(
                "InvalidParameter.ResourceNotFound", f"job {job_id} does not exist", grpc.StatusCode.NOT_FOUND
            )
        job: res.SnapshotJob = response.snapshot_job_list[0]
        return job

    async def iter_jobs(
        self, *, state: str = "", pipeline_id: str = "", page_size: int = 100
    ) -> AsyncIterator[res.SnapshotJob]:
        """Every job matching the filters, newest first, page by page."""
        token = ""
        while True:
            page = await self.query(state=state, pipeline_id=pipeline_id, page_size=page_size, page_token=token)
            for job in page.snapshot_job_list:
                yield job
            token = page.next_page_token
            if not token:
                return

    async def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[sps.SnapshotJobEvent]:
        """The job's events until it ends.

        Leaving early (``break``, an exception, or closing the generator) cancels the call,
        so the server frees the stream at once; use ``contextlib.aclosing(c.watch(...))``
        to close it at a known point rather than when the generator is collected."""
        call = self.snapshots.WatchSnapshotJob(sps.WatchSnapshotJobRequest(snapshot_job_id=job_id), timeout=timeout)
        try:
            async for event in call:
                yield event
        except aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        finally:
            # Without this an abandoned stream stays open on the channel until it closes,
            # and counts against the server's per-principal watch limit.
            if not call.done():
                call.cancel()

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[sps.SnapshotJobEvent], None] | None = None,
    ) -> res.SnapshotJob:
        """Follow the job until it ends and return its final state."""
        last: res.SnapshotJob | None = None
        async for event in self.watch(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
            last = event.snapshot_job
        assert last is not None
        return last

    async def cancel(self, job_id: str) -> res.SnapshotJob:
        response = await _call(
            self.snapshots.CancelSnapshotJob(sps.CancelSnapshotJobRequest(snapshot_job_id=job_id), timeout=self.timeout)
        )
        return response.snapshot_job

    # Pipelines

    async def add_pipeline(self, name: str, **fields: Any) -> res.Pipeline:
        response: pps.AddPipelineResponse = await _call(
            self.pipelines.AddPipeline(pps.AddPipelineRequest(name=name, **fields), timeout=self.timeout)
        )
        return response.pipeline

    async def update_pipeline(self, pipeline_id: str, *, name: str, state: str, **fields: Any) -> res.Pipeline:
        request = pps.UpdatePipelineRequest(pipeline_id=pipeline_id, name=name, state=state, **fields)
        return (await _call(self.pipelines.UpdatePipeline(request, timeout=self.timeout))).pipeline

    async def query_pipelines(self, ids: list[str]) -> pps.QueryPipelineListResponse:
        return await _call(
            self.pipelines.QueryPipelineList(pps.QueryPipelineListRequest(pipeline_ids=ids), timeout=self.timeout)
        )

    async def search_pipelines(
        self, state: str = "All", page_number: int = 1, page_size: int = 10
    ) -> pps.SearchPipelineResponse:
        request = pps.SearchPipelineRequest(state=state, page_number=page_number, page_size=page_size)
        return await _call(self.pipelines.SearchPipeline(request, timeout=self.timeout))

    async def delete_pipeline(self, pipeline_id: str) -> None:
        await _call(
            self.pipelines.DeletePipeline(pps.DeletePipelineRequest(pipeline_id=pipeline_id), timeout=self.timeout)
        )

    # Health

    async def health(self, service: str = "", timeout: float = 3.0) -> str:
        """ "SERVING", "NOT_SERVING", ... for the whole server ("") or one service."""
        response = await _call(self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
