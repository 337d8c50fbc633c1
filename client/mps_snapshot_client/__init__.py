"""Python client for mps-snapshot: ``SnapshotClient`` plus typed errors keyed by MPS code."""

from mps_snapshot_client._client import DEFAULT_TARGET, FINAL_STATES, SnapshotClient
from mps_snapshot_client.errors import (
    IncorrectStateError,
    InvalidParameterError,
    MpsApiError,
    PermissionDeniedError,
    ResourceContentBadError,
    ResourceNotFoundError,
    SnapshotTimeOutError,
    ThrottlingError,
    UnavailableError,
)

__all__ = [
    "DEFAULT_TARGET",
    "FINAL_STATES",
    "IncorrectStateError",
    "InvalidParameterError",
    "MpsApiError",
    "PermissionDeniedError",
    "ResourceContentBadError",
    "ResourceNotFoundError",
    "SnapshotClient",
    "SnapshotTimeOutError",
    "ThrottlingError",
    "UnavailableError",
]
