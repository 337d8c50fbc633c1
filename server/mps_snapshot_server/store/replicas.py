"""Start-up checks and connections of PostgreSQL mode."""

from __future__ import annotations

import os
import secrets
import socket

from mps_snapshot_server.config import Settings
from mps_snapshot_server.store.postgres import PostgresStore, PostgresUnavailable


def replica_id() -> str:
    """Unique per process start: a restarted replica is a new lease owner."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def check_settings(settings: Settings) -> None:
    """Refuse configurations several replicas cannot share.

    Outputs must be visible to every replica and to callers whichever replica wrote them,
    so every storage route must be S3-compatible object storage: a "local" route keeps
    objects in this replica's own data folder (which is locked to it)."""
    local = [route.location for route in settings.storage if route.kind == "local"]
    if local:
        raise SystemExit(
            "refusing to start: database_url is set (several replicas share jobs), but the storage "
            f"route(s) {', '.join(repr(x) for x in local)} keep inputs and outputs in this replica's own data "
            "folder, which the other replicas cannot see. Route every Location to S3-compatible storage ([[storage]] "
            'kind = "s3"; see docs/deploy.md), or leave database_url empty for one server on SQLite.'
        )
    if settings.lease_s < 1:
        raise SystemExit(f"refusing to start: lease_s must be at least 1 second, not {settings.lease_s}.")


async def open_store(settings: Settings) -> PostgresStore:
    try:
        return await PostgresStore.open(settings.database_url, origin=replica_id())
    except PostgresUnavailable as exc:
        raise SystemExit(
            f"refusing to start: {exc}. Check database_url (MPS_SNAPSHOT_DATABASE_URL, --database-url): "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, and that the server accepts connections."
        ) from None
