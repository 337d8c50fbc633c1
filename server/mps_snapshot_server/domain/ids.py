"""Identifiers: 32-hex job and pipeline ids as MPS uses, UUID request ids."""

from __future__ import annotations

import uuid


def new_id() -> str:
    return uuid.uuid4().hex


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()
