"""MPS JSON -> request messages.

MPS sends every scalar as a string ("Time":"5", "IsKeepCellPic":"false"), nested
objects as JSON strings (Input='{"Bucket":...}'), id lists comma-separated, and wraps
lists (SnapshotJobList.SnapshotJob[]). This module accepts all of that, and also the
plain JSON mapping of the messages, and refuses unknown fields so typos are caught.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mps_snapshot_client.api import snapshot_service_pb2 as sps

M = TypeVar("M", bound=Message)

#: Alibaba Cloud RPC common parameters: part of an MPS call, not of the request body.
COMMON_PARAMETERS = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "RegionId",
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "SecurityToken",
        "OwnerId",
        "OwnerAccount",
        "ResourceOwnerId",
        "ResourceOwnerAccount",
    }
)


def _field_by_json(desc: Descriptor, key: str) -> FieldDescriptor | None:
    for f in desc.fields:
        if key in (f.json_name, f.name, f.camelcase_name):
            return f
    return None


def _normalize_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        if field.message_type.full_name.startswith("google.protobuf."):
            return value  # well-known types have their own JSON form (a Timestamp is a string)
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        return normalize(field.message_type, value)
    if field.type == FieldDescriptor.TYPE_BOOL and isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "false"):
            return text == "true"
        raise json_format.ParseError(
            f"Invalid value for {field.json_name}: {value[:64]!r}; expected true or false, with or without quotes"
        )
    return value


def normalize(desc: Descriptor, doc: Any) -> Any:
    """Rewrite an MPS-style JSON value into the proto3 JSON mapping of ``desc``."""
    if not isinstance(doc, Mapping):
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        field = _field_by_json(desc, key)
        if field is None:
            out[key] = value  # ParseDict reports it as unknown
            continue
        if _is_repeated(field):
            if isinstance(value, Mapping) and len(value) == 1:
                value = next(iter(value.values()))  # MPS's {"SnapshotJob": [...]} wrapper
            if isinstance(value, str):
                if field.type == FieldDescriptor.TYPE_STRING:
                    value = [v.strip() for v in value.split(",") if v.strip()]
                else:
                    value = json.loads(value)
            value = [_normalize_value(field, v) for v in value]
        elif value is not None:
            value = _normalize_value(field, value)
        out[key] = value
    return out


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def parse(doc: Mapping[str, Any] | str, message: M) -> M:
    """Fill ``message`` from MPS JSON (a mapping or a JSON text)."""
    data = json.loads(doc) if isinstance(doc, str) else dict(doc)
    data = {k: v for k, v in data.items() if k not in COMMON_PARAMETERS}
    json_format.ParseDict(normalize(message.DESCRIPTOR, data), message)  # type: ignore[arg-type]
    return message


def submit_request(doc: Mapping[str, Any] | str) -> sps.SubmitSnapshotJobRequest:
    """A SubmitSnapshotJobRequest from the parameters of an MPS SubmitSnapshotJob call."""
    return parse(doc, sps.SubmitSnapshotJobRequest())


_INT64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
)


def _int64_as_numbers(desc: Descriptor, doc: Any) -> Any:
    """Proto3 JSON writes 64-bit integers as strings; make them numbers, like 32-bit ones."""
    if not isinstance(doc, dict):
        return doc
    for field in desc.fields:
        if field.json_name not in doc:
            continue
        value = doc[field.json_name]
        if field.type in _INT64:
            doc[field.json_name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type is not None
            and not field.message_type.GetOptions().map_entry
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            items = value if isinstance(value, list) else [value]
            for item in items:
                _int64_as_numbers(field.message_type, item)
    return doc


def to_json(message: Message) -> str:
    """The MPS-style JSON of a response (element names as MPS spells them), for the CLI: every
    field, at its zero value too, and every integer a number (docs/api.md)."""
    doc = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    desc: Any = message.DESCRIPTOR
    return json.dumps(_int64_as_numbers(desc, doc), indent=2, ensure_ascii=False)
