"""Protobuf <-> domain. The only server module that touches generated message types
besides the servicers' signatures."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from google.protobuf import timestamp_pb2

from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.domain.models import (
    AnimatedOut,
    Job,
    JobEventKind,
    NotifyConfig,
    ObjectRef,
    Pipeline,
    SmartPick,
    SnapshotConfig,
    SnapshotRequest,
    TileOut,
)
from mps_snapshot_server.store.base import JobQuery


def ref_from_proto(msg: res.OSSFile) -> ObjectRef:
    return ObjectRef(bucket=msg.bucket, location=msg.location, object=msg.object, role_arn=msg.role_arn)


def ref_to_proto(ref: ObjectRef) -> res.OSSFile:
    return res.OSSFile(bucket=ref.bucket, location=ref.location, object=ref.object, role_arn=ref.role_arn)


def tile_from_proto(msg: res.TileOut) -> TileOut:
    return TileOut(
        lines=msg.lines if msg.HasField("lines") else None,
        columns=msg.columns if msg.HasField("columns") else None,
        cell_width=msg.cell_width if msg.HasField("cell_width") else None,
        cell_height=msg.cell_height if msg.HasField("cell_height") else None,
        margin=msg.margin,
        padding=msg.padding,
        color=msg.color,
        is_keep_cell_pic=msg.is_keep_cell_pic if msg.HasField("is_keep_cell_pic") else None,
        cell_sel_step=msg.cell_sel_step if msg.HasField("cell_sel_step") else None,
        auto_cells=msg.auto_cells if msg.HasField("auto_cells") else None,
    )


def tile_to_proto(tile: TileOut) -> res.TileOut:
    msg = res.TileOut(margin=tile.margin, padding=tile.padding, color=tile.color)
    for name in ("lines", "columns", "cell_width", "cell_height", "is_keep_cell_pic", "cell_sel_step", "auto_cells"):
        value = getattr(tile, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def _present(msg: object, names: tuple[str, ...]) -> dict[str, object]:
    """The optional fields of ``msg`` that are set (absent ones stay None in the domain)."""
    return {n: getattr(msg, n) for n in names if msg.HasField(n)}  # type: ignore[attr-defined]


_ANIMATED = tuple(f.name for f in dataclasses.fields(AnimatedOut))
_SMART = tuple(f.name for f in dataclasses.fields(SmartPick))
_BEYOND = ("quality", "lossless", "fit", "pad_color", "no_upscale", "time_percent", "interval_percent", "tone_map")


def config_from_proto(msg: res.SnapshotConfig) -> SnapshotConfig:
    return SnapshotConfig(
        output_file=ref_from_proto(msg.output_file) if msg.HasField("output_file") else None,
        time=msg.time if msg.HasField("time") else None,
        interval=msg.interval if msg.HasField("interval") else None,
        num=msg.num if msg.HasField("num") else None,
        frame_type=msg.frame_type,
        width=msg.width if msg.HasField("width") else None,
        height=msg.height if msg.HasField("height") else None,
        tile_output_file=ref_from_proto(msg.tile_output_file) if msg.HasField("tile_output_file") else None,
        tile_out=tile_from_proto(msg.tile_out) if msg.HasField("tile_out") else None,
        time_points=tuple(msg.time_array.time_point_list) if msg.HasField("time_array") else None,
        format=msg.format,
        sub_out_is_spt_frag=(
            msg.sub_out.is_spt_frag if msg.HasField("sub_out") and msg.sub_out.HasField("is_spt_frag") else None
        ),
        has_sub_out=msg.HasField("sub_out"),
        black_level=msg.black_level if msg.HasField("black_level") else None,
        pixel_black_threshold=msg.pixel_black_threshold if msg.HasField("pixel_black_threshold") else None,
        time_percent_points=tuple(msg.time_array.time_percent_list),
        animated_out=AnimatedOut(**_present(msg.animated_out, _ANIMATED)) if msg.HasField("animated_out") else None,  # type: ignore[arg-type]
        animated_output_file=(
            ref_from_proto(msg.animated_output_file) if msg.HasField("animated_output_file") else None
        ),
        smart_pick=SmartPick(**_present(msg.smart_pick, _SMART)) if msg.HasField("smart_pick") else None,  # type: ignore[arg-type]
        **_present(msg, _BEYOND),  # type: ignore[arg-type]
    )


def config_to_proto(cfg: SnapshotConfig) -> res.SnapshotConfig:
    msg = res.SnapshotConfig(frame_type=cfg.frame_type, format=cfg.format)
    if cfg.output_file is not None:
        msg.output_file.CopyFrom(ref_to_proto(cfg.output_file))
    if cfg.tile_output_file is not None:
        msg.tile_output_file.CopyFrom(ref_to_proto(cfg.tile_output_file))
    if cfg.tile_out is not None:
        msg.tile_out.CopyFrom(tile_to_proto(cfg.tile_out))
    if cfg.time_points is not None:
        msg.time_array.SetInParent()
        msg.time_array.time_point_list.extend(cfg.time_points)
    if cfg.time_percent_points:
        msg.time_array.time_percent_list.extend(cfg.time_percent_points)
    if cfg.animated_output_file is not None:
        msg.animated_output_file.CopyFrom(ref_to_proto(cfg.animated_output_file))
    for part, names in ((cfg.animated_out, _ANIMATED), (cfg.smart_pick, _SMART)):
        if part is not None:
            sub = msg.animated_out if isinstance(part, AnimatedOut) else msg.smart_pick
            sub.SetInParent()
            for name in names:
                if (value := getattr(part, name)) is not None:
                    setattr(sub, name, value)
    if cfg.has_sub_out:
        msg.sub_out.SetInParent()
        if cfg.sub_out_is_spt_frag is not None:
            msg.sub_out.is_spt_frag = cfg.sub_out_is_spt_frag
    for name in ("time", "interval", "num", "width", "height", "black_level", "pixel_black_threshold", *_BEYOND):
        value = getattr(cfg, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def submit_from_proto(msg: sps.SubmitSnapshotJobRequest) -> SnapshotRequest:
    return SnapshotRequest(
        input=ref_from_proto(msg.input) if msg.HasField("input") else None,
        config=config_from_proto(msg.snapshot_config) if msg.HasField("snapshot_config") else None,
        user_data=msg.user_data,
        pipeline_id=msg.pipeline_id,
    )


def query_from_proto(msg: sps.QuerySnapshotJobListRequest) -> tuple[list[str], JobQuery, int | None]:
    """The ids asked for (comma lists allowed), the filter, and the page size if given."""
    flt = JobQuery(
        state=msg.state,
        pipeline_id=msg.pipeline_id,
        created_from=(
            from_timestamp(msg.start_of_job_created_time_range)
            if msg.HasField("start_of_job_created_time_range")
            else None
        ),
        created_to=(
            from_timestamp(msg.end_of_job_created_time_range) if msg.HasField("end_of_job_created_time_range") else None
        ),
    )
    ids = [i.strip() for raw in msg.snapshot_job_ids for i in raw.split(",") if i.strip()]
    return ids, flt, msg.maximum_page_size if msg.HasField("maximum_page_size") else None


_EVENT_KIND = {
    JobEventKind.INITIAL: sps.SnapshotJobEvent.KIND_INITIAL,
    JobEventKind.STATE: sps.SnapshotJobEvent.KIND_STATE_CHANGED,
    JobEventKind.IMAGE: sps.SnapshotJobEvent.KIND_IMAGE_WRITTEN,
    JobEventKind.SPRITE: sps.SnapshotJobEvent.KIND_SPRITE_WRITTEN,
}


def event_to_proto(kind: JobEventKind, job: Job) -> sps.SnapshotJobEvent:
    return sps.SnapshotJobEvent(
        kind=_EVENT_KIND[kind],
        snapshot_job=job_to_proto(job),
        progress=sps.SnapshotJobProgress(
            images_done=len(job.images),
            images_planned=job.images_planned,
            sprites_done=len(job.sprites),
            sprites_planned=job.sprites_planned,
        ),
    )


def timestamp(ts: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    # MPS reports whole seconds; the JSON form is then "2021-05-19T03:11:48Z".
    out.FromDatetime(ts.replace(microsecond=0))
    return out


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=datetime.now().astimezone().tzinfo).astimezone()


def job_to_proto(job: Job) -> res.SnapshotJob:
    req = job.request
    msg = res.SnapshotJob(
        id=job.id,
        state=job.state.value,
        code=job.code,
        message=job.message,
        count=job.count,
        tile_count=job.tile_count,
        user_data=req.user_data,
        pipeline_id=job.pipeline_id,
        attempts=job.attempts,
        request_id=job.request_id,
        web_vtt_object=job.web_vtt_object,
        storyboard_object=job.storyboard_object,
        images_planned=job.images_planned,
        sprites_planned=job.sprites_planned,
    )
    if req.input is not None:
        msg.input.CopyFrom(ref_to_proto(req.input))
    if req.config is not None:
        msg.snapshot_config.CopyFrom(config_to_proto(req.config))
    msg.creation_time.CopyFrom(timestamp(job.creation_time))
    if job.finish_time is not None:
        msg.finish_time.CopyFrom(timestamp(job.finish_time))
    if job.notify_result is not None:
        msg.mns_message_result.CopyFrom(
            res.MNSMessageResult(
                message_id=job.notify_result.message_id,
                error_code=job.notify_result.error_code,
                error_message=job.notify_result.error_message,
            )
        )
    for img in job.images:
        msg.images.add(
            object=img.object,
            time=img.time_ms,
            requested_time=img.requested_time_ms,
            width=img.width,
            height=img.height,
            replaced=img.replaced,
        )
    if job.animated is not None:
        a = job.animated
        msg.animated.CopyFrom(
            res.AnimatedImage(
                object=a.object,
                format=a.format,
                frame_count=a.frame_count,
                duration=a.duration_ms,
                width=a.width,
                height=a.height,
                bytes=a.bytes,
            )
        )
    for sprite in job.sprites:
        msg.sprites.add(object=sprite.object, cell_count=sprite.cell_count, width=sprite.width, height=sprite.height)
    return msg


def notify_from_proto(msg: res.NotifyConfig) -> NotifyConfig:
    return NotifyConfig(
        topic=msg.topic, queue_name=msg.queue_name, mq_topic=msg.mq_topic, mq_tag=msg.mq_tag, http_url=msg.http_url
    )


def pipeline_to_proto(p: Pipeline) -> res.Pipeline:
    n = p.notify_config
    return res.Pipeline(
        id=p.id,
        name=p.name,
        state=p.state.value,
        speed=p.speed,
        speed_level=p.speed_level,
        role=p.role,
        notify_config=res.NotifyConfig(
            topic=n.topic, queue_name=n.queue_name, mq_topic=n.mq_topic, mq_tag=n.mq_tag, http_url=n.http_url
        ),
        max_concurrent_jobs=p.max_concurrent_jobs,
        queue_capacity=p.queue_capacity,
    )


def add_pipeline_notify(msg: pps.AddPipelineRequest | pps.UpdatePipelineRequest) -> NotifyConfig | None:
    return notify_from_proto(msg.notify_config) if msg.HasField("notify_config") else None
