"""One attempt of a queued job, shared by both schedulers (in-process and replica)."""

from __future__ import annotations

from datetime import datetime

from mps_snapshot_server.domain.errors import ErrorCode
from mps_snapshot_server.domain.models import Job
from mps_snapshot_server.observability.tracing import Tracing
from mps_snapshot_server.worker.runner import JobRunner


async def run_attempt(runner: JobRunner, tracing: Tracing, job: Job, *, retry: bool) -> Job:
    """Run a job committed as Snapshoting in a ``job.run`` span (a child of its Submit's span
    when that is known here, else linked to it) and return it as committed."""
    parent, links = tracing.job_run_context(job.id)
    with tracing.tracer.start_as_current_span(
        "job.run",
        context=parent,
        links=links,
        attributes={"mps.job_id": job.id, "mps.pipeline_id": job.pipeline_id, "mps.attempt": job.attempts},
    ) as span:
        final = await runner.run(job, retry=retry)
        span.set_attribute("mps.job.state", final.state.value)
        if final.code:
            span.set_attribute("mps.job.code", final.code)
        return final


def interrupted(job: Job, *, at: datetime, notify: bool, where: str) -> Job:
    """A job interrupted on every one of its attempts: it ends Fail and is not retried."""
    return job.failed(
        ErrorCode.INTERNAL_ERROR,
        f"The job was interrupted on each of its {job.attempts} attempts ({where} stopped or crashed while "
        "it ran); it will not be retried.",
        at=at,
        notify=notify,
    )
