"""Choosing the storage backend for a request's Location."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from mps_snapshot_server.domain.errors import ErrorCode, InvalidParameter
from mps_snapshot_server.domain.models import ObjectRef
from mps_snapshot_server.storage.base import ObjectStore


@dataclass(frozen=True)
class Route:
    pattern: str
    store: ObjectStore


class StorageRouter:
    """Routes are tried in order; a pattern may use shell wildcards (``oss-*``)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def for_location(self, location: str, field: str) -> ObjectStore:
        for route in self.routes:
            if fnmatch.fnmatchcase(location, route.pattern):
                return route.store
        raise InvalidParameter.field(
            field,
            f"Location {location!r} is not configured on this server; use one of: "
            + ", ".join(r.pattern for r in self.routes)
            + ".",
            code=ErrorCode.INVALID_PARAMETER_LOCATION_INVALID,
        )

    def store_for(self, ref: ObjectRef, field: str) -> ObjectStore:
        """The backend of ``ref``'s Location, as ``ref``'s RoleArn sees it."""
        return self.for_location(ref.location, f"{field}.location").for_role(ref.role_arn)

    async def close(self) -> None:
        seen: set[int] = set()
        for route in self.routes:
            if id(route.store) not in seen:
                seen.add(id(route.store))
                await route.store.close()
