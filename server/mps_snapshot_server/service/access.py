"""The resources a call touches, for authorization (security/policy.py matches them against
the caller's statements): ``pipeline/<id>``, ``bucket/<name>:read|write`` and, for another
principal's job, ``owner/<submitter>``. Transport-free: gRPC and HTTP calls use the same."""

from __future__ import annotations

from mps_snapshot_server.domain.models import Job, SnapshotRequest
from mps_snapshot_server.security.policy import bucket


def submit_resources(request: SnapshotRequest, pipeline: str) -> tuple[str, ...]:
    """A Submit reads its input's bucket and writes its outputs' buckets, on ``pipeline``."""
    config = request.config
    # A missing bucket is checked as "" (the request then fails validation, if allowed).
    output = config.output_file if config is not None else None
    outputs = {output.bucket if output is not None else ""}
    if config is not None and config.tile_out is not None:
        outputs.add(config.tile_output_file.bucket if config.tile_output_file is not None else "")
    read = request.input.bucket if request.input is not None else ""
    return (
        f"pipeline/{pipeline}",
        bucket(read, "read"),
        *(bucket(b, "write") for b in sorted(outputs)),
    )


def job_resources(job: Job, caller: str, *, write: bool) -> tuple[str, ...]:
    """What a call about an existing job is checked against: its pipeline, its input
    bucket (read), its output buckets (read to look at the job, write to cancel it, which
    removes outputs), and, for another principal's job, ``owner/<submitter>``."""
    request, config = job.request, job.request.config
    outputs = {config.output_file.bucket} if config and config.output_file else set()
    if config and config.tile_out is not None and config.tile_output_file is not None:
        outputs.add(config.tile_output_file.bucket)
    resources = [f"pipeline/{job.pipeline_id}"]
    if request.input is not None:
        resources.append(bucket(request.input.bucket, "read"))
    resources += [bucket(b, "write" if write else "read") for b in sorted(outputs)]
    if job.owner != caller:
        resources.append(f"owner/{job.owner or '-'}")
    return tuple(resources)
