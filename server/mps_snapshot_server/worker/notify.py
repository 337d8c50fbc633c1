"""Completion notifications: MPS's message, delivered after the final state is committed,
retried with backoff, outcome recorded in the job's MNSMessageResult. Delivery never
changes a job's state. Jobs still owed a notification when the server stops are sent
again at the next start (``notify_pending``), with the same message id."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from typing import Any, Protocol

import aiohttp

from mps_snapshot_server.domain import validation
from mps_snapshot_server.domain.models import Job, JobState, NotifyResult
from mps_snapshot_server.observability.logging import set_job
from mps_snapshot_server.observability.metrics import Metrics
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.worker.ports import Pipelines

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("6f1c1a52-8d1e-4d8e-9a53-6d7073e5a1c0")
_NOTIFIED_STATES = (JobState.SUCCESS, JobState.FAIL)


class DeliveryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Notifier(Protocol):
    """A way to deliver a message (HTTP today; a message broker can implement the same)."""

    #: The longest one delivery attempt may take.
    timeout_s: float

    async def deliver(self, destination: str, message_id: str, body: bytes) -> None:
        """Deliver or raise DeliveryError."""
        ...

    async def close(self) -> None: ...


class HttpNotifier:
    """POSTs the JSON message; any 2xx answer is an acknowledgement (MNS receivers send 204)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, destination: str, message_id: str, body: bytes) -> None:
        if self._session is None:
            # trust_env=False: the server's proxy variables are not the receiver's business.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        headers = {"Content-Type": "application/json", "X-Mps-Message-Id": message_id}
        try:
            async with self._session.post(destination, data=body, headers=headers, allow_redirects=False) as resp:
                if not 200 <= resp.status < 300:
                    raise DeliveryError("HttpStatus", f"The endpoint answered HTTP {resp.status}.")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(
                "EndpointUnreachable", f"The endpoint could not be reached ({type(exc).__name__})."
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def message_id(job: Job) -> str:
    """Stable per job: a receiver can drop duplicates of a message delivered twice."""
    return uuid.uuid5(_NAMESPACE, job.id).hex.upper()


def object_url(bucket: str, key: str) -> str:
    return f"oss://{bucket}/{key}"


def message(job: Job) -> dict[str, Any]:
    """MPS's snapshot notification, keys in both casings as MPS sends them."""
    body: dict[str, Any] = {}
    for name, value in (
        ("jobId", job.id),
        ("requestId", job.request_id),
        ("type", "Snapshot"),
        ("state", job.state.value),
        ("userData", job.request.user_data),
    ):
        body[name] = value
        body[name[0].upper() + name[1:]] = value
    body["MessageId"] = message_id(job)
    if job.state is JobState.FAIL:
        body["code"] = body["Code"] = job.code
        body["msg"] = body["Msg"] = job.message
    body["Count"] = job.count
    body["TileCount"] = job.tile_count
    try:
        valid = validation.validate(job.request)
    except Exception:
        return body
    bucket = valid.output_file.bucket
    body["UrlPattern"] = object_url(bucket, valid.output_name.pattern(input_key=valid.input_key))
    if job.images:
        body["LastUrl"] = object_url(bucket, job.images[-1].object)
        body["TimeArray"] = [img.time_ms for img in job.images]
    return body


class NotificationService:
    def __init__(
        self,
        *,
        ledger: JobLedger,
        registry: Pipelines,
        notifier: Notifier,
        metrics: Metrics,
        attempts: int,
        backoff_s: float,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.registry = registry
        self.notifier = notifier
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def delivery_window_s(self) -> float:
        """The longest a delivery may take, every attempt and backoff included (a replica
        holds an owed notification this long before another may send it)."""
        backoffs = self.backoff_s * ((1 << max(0, self.attempts - 1)) - 1)
        return self.attempts * self.notifier.timeout_s + backoffs

    def destination(self, job: Job) -> str:
        try:
            pipeline = self.registry.resolve(job.pipeline_id)
        except Exception:
            return ""
        return pipeline.notify_config.http_url

    def wanted(self, job: Job) -> bool:
        return job.state in _NOTIFIED_STATES and bool(self.destination(job))

    def job_finished(self, job: Job) -> None:
        if job.notify_pending:
            self._spawn(job)

    def resend_pending(self) -> None:
        asyncio.get_running_loop().call_soon(lambda: self._spawn_pending())

    def _spawn_pending(self) -> None:
        task = asyncio.create_task(self._pending())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pending(self) -> None:
        for job in await self.ledger.store.jobs_in_states(_NOTIFIED_STATES):
            if job.notify_pending:
                self._spawn(job)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._deliver(job), name=f"notify-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job: Job) -> None:
        set_job(job.id, job.pipeline_id)  # this task's log context
        metrics = self.metrics
        destination = self.destination(job)
        mid = message_id(job)
        result: NotifyResult
        if not destination:
            result = NotifyResult(
                error_code="NotifyConfigMissing", error_message="The pipeline no longer has a notification endpoint."
            )
            metrics.notifications.labels("no_endpoint").inc()
        else:
            body = json.dumps(message(job), ensure_ascii=False).encode()
            delay = self.backoff_s
            last = DeliveryError("NotSent", "not sent")
            for attempt in range(1, self.attempts + 1):
                try:
                    await self.notifier.deliver(destination, mid, body)
                    result = NotifyResult(message_id=mid)
                    metrics.notifications.labels("delivered").inc()
                    break
                except DeliveryError as exc:
                    last = exc
                    metrics.notifications.labels("failed_attempt").inc()
                    log.info(
                        "notification for job %s failed (attempt %d/%d): %s",
                        job.id,
                        attempt,
                        self.attempts,
                        exc.message,
                    )
                if attempt < self.attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
            else:
                result = NotifyResult(error_code=last.code, error_message=last.message)
                metrics.notifications.labels("given_up").inc()
        current = await self.ledger.get(job.id)
        if current is not None:
            await self.ledger.save(dataclasses.replace(current, notify_result=result, notify_pending=False))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.notifier.close()
