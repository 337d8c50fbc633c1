"""JSON encoding of the domain dataclasses for storage (no protobuf in the store)."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)


def _build(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], data)
    if origin is tuple:
        args = typing.get_args(tp)
        return tuple(_build(args[0], v) for v in data)
    if origin is list:
        return [_build(typing.get_args(tp)[0], v) for v in data]
    if origin is dict:
        return dict(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {f.name: _build(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data}
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is datetime:
        return datetime.fromisoformat(data)
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def loads(cls: type[T], text: str) -> T:
    result: T = _build(cls, json.loads(text))
    return result
