"""Rules for bucket names, locations and object keys, shared by every storage backend."""

from __future__ import annotations

import re
from urllib.parse import unquote

from mps_snapshot_server.domain.errors import ErrorCode, InvalidParameter

MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_LOCATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_bucket(bucket: str, field: str) -> None:
    if not _BUCKET.match(bucket):
        raise InvalidParameter.field(
            field,
            f"Bucket {bucket!r} is invalid: use 3-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit.",
            code=ErrorCode.INVALID_PARAMETER_BUCKET_NAME_INVALID,
        )


def check_location(location: str, field: str) -> None:
    if location and not _LOCATION.match(location):
        raise InvalidParameter.field(
            field,
            f"Location {location!r} is invalid: use up to 64 letters, digits, dots, "
            "underscores and hyphens (for example oss-cn-hangzhou).",
            code=ErrorCode.INVALID_PARAMETER_LOCATION_INVALID,
        )


def decode_key(encoded: str, field: str) -> str:
    """URL-decode an MPS ``Object`` once and check that the key is safe on every backend."""
    try:
        key = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise InvalidParameter.field(
            field,
            "Object is not valid URL-encoded UTF-8; encode the key with percent-encoding of its UTF-8 bytes.",
            code=ErrorCode.INVALID_PARAMETER_OBJECT_KEY_INVALID,
        ) from None
    check_key(key, field)
    return key


def check_key(key: str, field: str) -> None:
    problem = key_problem(key)
    if problem:
        raise InvalidParameter.field(
            field,
            f"Object key {key[:200]!r} is invalid: {problem}.",
            code=ErrorCode.INVALID_PARAMETER_OBJECT_KEY_INVALID,
        )


def key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"it is longer than {MAX_KEY_BYTES} bytes after URL-decoding"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "it contains a NUL or control character"
    if key.startswith("/"):
        return "it must be relative to the bucket (no leading '/')"
    if key.startswith("-"):
        return "it must not start with '-'"
    if "://" in key:
        return "it must be a key in the bucket, not a URL"
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        return "it must not contain '.' or '..' path segments"
    if any(s == "" for s in segments):
        return "it must not contain empty path segments ('//' or a trailing '/')"
    return None
