"""MPS's JSON wire format for answers, from the same protobuf responses gRPC sends.

What the official SDKs' models expect (``alibabacloud-mts20140618``): MPS's element names
(each field's json_name), every scalar as a string ("Count":"1", "Width":"640",
"IsKeepCellPic":"false") except the few the models type as numbers, lists inside wrappers
(``{"SnapshotJobList":{"SnapshotJob":[...]}}``, ``{"NonExistSnapshotJobIds":{"String":[...]}}``),
times as ``YYYY-MM-DDThh:mm:ssZ``. Our extensions (``Images``, ``Sprites``, ``WebVttObject``,
``StoryboardObject``, ``FinishTime``, pipeline limits) are extra keys, which the models ignore;
their numbers stay numbers.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mps_snapshot_server.domain.errors import MpsError

_PKG = "mps.snapshot.v1."

#: Repeated fields MPS wraps in an object, and the key of the list inside.
WRAPPERS: dict[str, str] = {
    _PKG + "QuerySnapshotJobListResponse.snapshot_job_list": "SnapshotJob",
    _PKG + "QuerySnapshotJobListResponse.non_exist_snapshot_job_ids": "String",
    _PKG + "QueryPipelineListResponse.pipeline_list": "Pipeline",
    _PKG + "QueryPipelineListResponse.non_exist_pids": "String",
    _PKG + "SearchPipelineResponse.pipeline_list": "Pipeline",
}

#: Fields sent as JSON numbers: the SDK models type these as int (Long), and extension
#: fields keep their natural type.
NUMBERS = frozenset(
    {
        _PKG + "SearchPipelineResponse.total_count",
        _PKG + "SearchPipelineResponse.page_number",
        _PKG + "SearchPipelineResponse.page_size",
        _PKG + "Pipeline.speed_level",
        _PKG + "Pipeline.quota_allocate",
        _PKG + "Pipeline.max_concurrent_jobs",
        _PKG + "Pipeline.queue_capacity",
        _PKG + "TimeArray.time_point_list",
        _PKG + "TimeArray.time_percent_list",
        _PKG + "SnapshotJob.attempts",
    }
)
#: Messages (our extensions) whose numbers all stay numbers.
NUMERIC_MESSAGES = frozenset({_PKG + "SnapshotImage", _PKG + "SpriteImage", _PKG + "AnimatedImage"})

#: Messages whose implicit-presence fields are sent even when empty or zero, as MPS does
#: (a job always has State, Count, Code ...); elsewhere unset values are left out.
ALWAYS_SENT = frozenset(
    {
        _PKG + "SnapshotJob",
        _PKG + "Pipeline",
        _PKG + "NotifyConfig",
        _PKG + "MNSMessageResult",
        _PKG + "QuerySnapshotJobListResponse",
        _PKG + "QueryPipelineListResponse",
        _PKG + "SearchPipelineResponse",
    }
)
#: Message fields sent even when unset (MPS always shows a pipeline's NotifyConfig).
ALWAYS_SENT_FIELDS = frozenset({_PKG + "Pipeline.notify_config"})
#: Extension fields left out when empty even in ALWAYS_SENT messages.
OPTIONAL_EXTENSIONS = frozenset(
    {
        _PKG + "SnapshotJob.request_id",
        _PKG + "SnapshotJob.web_vtt_object",
        _PKG + "SnapshotJob.storyboard_object",
        _PKG + "SnapshotJob.attempts",
    }
)


def _number(value: float | int) -> float | int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _scalar(field: FieldDescriptor, value: Any, as_number: bool) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        return value if as_number else ("true" if value else "false")
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values_by_number[value].name
    if isinstance(value, (int, float)):
        number = _number(value)
        return number if as_number else str(number)
    return value


def _value(field: FieldDescriptor, value: Any, as_number: bool) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            return value.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
        return encode(value)
    return _scalar(field, value, as_number)


def _sent(desc: Descriptor, field: FieldDescriptor, message: Message) -> bool:
    if field.is_repeated:
        return field.full_name in WRAPPERS or bool(getattr(message, field.name))
    if field.full_name in ALWAYS_SENT_FIELDS:
        return True
    if field.has_presence:
        return message.HasField(field.name)
    if desc.full_name in ALWAYS_SENT and field.full_name not in OPTIONAL_EXTENSIONS:
        return True
    return bool(getattr(message, field.name))


def encode(message: Message) -> dict[str, Any]:
    """The MPS JSON object of a response message (or of a message inside one)."""
    desc: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's descriptor type, same API
    numeric = desc.full_name in NUMERIC_MESSAGES
    out: dict[str, Any] = {}
    for field in desc.fields:
        if not _sent(desc, field, message):
            continue
        as_number = numeric or field.full_name in NUMBERS
        value = getattr(message, field.name)
        if field.is_repeated:
            items = [_value(field, v, as_number) for v in value]
            wrapper = WRAPPERS.get(field.full_name)
            out[field.json_name] = {wrapper: items} if wrapper else items
        else:
            out[field.json_name] = _value(field, value, as_number)
    return out


def error_body(error: MpsError, request_id: str, host_id: str) -> dict[str, Any]:
    """MPS's error envelope. ``Recommend`` lists the request fields at fault, if any."""
    recommend = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
    return {
        "RequestId": request_id,
        "HostId": host_id,
        "Code": error.code,
        "Message": error.message,
        "Recommend": recommend,
    }


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
