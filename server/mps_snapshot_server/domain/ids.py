"""Identifiers: 32-hex job and pipeline ids as MPS uses, UUID request ids."""

from __future__ import annotations

import re
import uuid

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def new_id() -> str:
    return uuid.uuid4().hex


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def is_id(text: str) -> bool:
    return bool(_HEX32.match(text))
