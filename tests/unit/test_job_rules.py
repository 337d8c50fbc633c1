"""Pure job rules of the domain and the service: state transitions, the sync plan, the
resources a call is authorized against."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from mps_snapshot_server.domain import planning
from mps_snapshot_server.domain.errors import ErrorCode
from mps_snapshot_server.domain.models import (
    AnimatedImage,
    Job,
    JobState,
    ObjectRef,
    SnapshotConfig,
    SnapshotImage,
    SnapshotRequest,
    SpriteImage,
    TileOut,
)
from mps_snapshot_server.service import access

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 29, 12, 1, tzinfo=UTC)


def _request(tile: bool = False) -> SnapshotRequest:
    config = SnapshotConfig(
        output_file=ObjectRef(bucket="out", object="a.jpg"),
        tile_out=TileOut(lines=2, columns=2) if tile else None,
        tile_output_file=ObjectRef(bucket="tiles", object="t.jpg") if tile else None,
    )
    return SnapshotRequest(input=ObjectRef(bucket="in", object="v.mp4"), config=config)


def _job_with_outputs() -> Job:
    """A job in the middle of an attempt: images, sprites and a preview already written."""
    job = Job(
        id="j" * 32,
        request=_request(),
        state=JobState.SUBMITTED,
        creation_time=T0,
        request_id="r",
        pipeline_id="p",
        is_async=True,
        owner="alice",
    ).started()
    return dataclasses.replace(
        job,
        count=2,
        tile_count=1,
        images=(SnapshotImage("a-1.jpg", 0, 0, 8, 8), SnapshotImage("a-2.jpg", 1, 1, 8, 8)),
        sprites=(SpriteImage("t.jpg", 2, 16, 16),),
        web_vtt_object="v.vtt",
        storyboard_object="v.json",
        animated=AnimatedImage("p.webp", "webp", 3, 100, 8, 8, 99),
    )


def test_started_counts_the_attempt_and_clears_the_last_code() -> None:
    job = _job_with_outputs().failed("InternalError", "boom", at=T1).requeued(code="X", message="again")
    assert (job.state, job.attempts, job.code) == (JobState.SUBMITTED, 1, "X")
    again = job.started()
    assert (again.state, again.attempts, again.code, again.message) == (JobState.SNAPSHOTING, 2, "", "")


def test_every_way_out_of_an_attempt_leaves_no_outputs_behind() -> None:
    """Failed, requeued and cancelled jobs never keep what the interrupted attempt wrote
    (the old code kept sprites on a failed job)."""
    running = _job_with_outputs()
    ends = [
        running.failed(ErrorCode.INVALID_PARAMETER_RESOURCE_CONTENT_BAD, "bad", at=T1),
        running.requeued(),
        running.requeued(count_attempt=False),
        running.cancelled(at=T1),
    ]
    for job in ends:
        assert (job.count, job.tile_count, job.images, job.sprites) == (0, 0, (), ())
        assert (job.web_vtt_object, job.storyboard_object, job.animated) == ("", "", None)
    failed, requeued, handed_back, cancelled = ends
    assert (failed.state, failed.code, failed.finish_time) == (JobState.FAIL, "InvalidParameter.ResourceContentBad", T1)
    assert (requeued.state, requeued.attempts, requeued.finish_time) == (JobState.SUBMITTED, 1, None)
    assert handed_back.attempts == 0  # shutdown: as if the attempt had not started
    assert (cancelled.state, cancelled.message) == (JobState.CANCELLED, "Cancelled by CancelSnapshotJob.")


def test_success_keeps_the_outputs_and_records_the_notification_owed() -> None:
    done = _job_with_outputs().succeeded(at=T1, notify=True)
    assert (done.state, done.count, len(done.sprites), done.notify_pending) == (JobState.SUCCESS, 2, 1, True)
    assert done.state.finished and done.finish_time == T1


def test_a_sync_snapshot_plans_one_point_and_leaves_the_end_to_the_decode() -> None:
    plan = planning.plan_single(SnapshotConfig(time=9000), duration_s=5.0)
    assert [p.time_ms for p in plan.points] == [9000.0] and plan.black is None  # past the end: decided later
    assert planning.plan_single(SnapshotConfig(time_percent=50.0), duration_s=5.0).points[0].time_ms == 2500.0
    assert planning.plan_single(SnapshotConfig(), duration_s=5.0).points[0].time_ms == 0.0


def test_resources_a_submit_and_a_job_are_checked_against() -> None:
    assert access.submit_resources(_request(tile=True), "p1") == (
        "pipeline/p1",
        "bucket/in:read",
        "bucket/out:write",
        "bucket/tiles:write",
    )
    # A request without outputs is checked for bucket "" (it then fails validation).
    assert access.submit_resources(SnapshotRequest(), "p1") == ("pipeline/p1", "bucket/:read", "bucket/:write")
    job = _job_with_outputs()
    assert access.job_resources(job, "alice", write=False) == ("pipeline/p", "bucket/in:read", "bucket/out:read")
    assert access.job_resources(job, "bob", write=True) == (
        "pipeline/p",
        "bucket/in:read",
        "bucket/out:write",
        "owner/alice",
    )
