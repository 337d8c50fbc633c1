"""Object writes fenced by the job's lease: a replica that lost a job publishes nothing
and removes nothing (the objects now belong to the job's new owner)."""

from __future__ import annotations

from pathlib import Path

from mps_snapshot_server.storage.base import InputHandle, ObjectInfo, ObjectStore
from mps_snapshot_server.storage.router import Route, StorageRouter
from mps_snapshot_server.store.leases import check_current


class FencedObjectStore:
    """Checks the current task's lease (if any) before each put or delete; reads pass."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self._roles: dict[str, FencedObjectStore] = {}

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await self.inner.head(bucket, key)

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        return await self.inner.input_handle(bucket, key)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        check_current()
        await self.inner.put_file(bucket, key, path, content_type)

    async def delete(self, bucket: str, key: str) -> None:
        check_current()
        await self.inner.delete(bucket, key)

    async def close(self) -> None:
        await self.inner.close()

    def for_role(self, role_arn: str) -> ObjectStore:
        inner = self.inner.for_role(role_arn)
        if inner is self.inner:
            return self
        if role_arn not in self._roles:
            self._roles[role_arn] = FencedObjectStore(inner)
        return self._roles[role_arn]


def fenced(router: StorageRouter) -> StorageRouter:
    """The same routes, each store wrapped once (routes sharing a store still share it)."""
    wrapped: dict[int, FencedObjectStore] = {}
    routes = []
    for route in router.routes:
        store = wrapped.setdefault(id(route.store), FencedObjectStore(route.store))
        routes.append(Route(route.pattern, store))
    return StorageRouter(routes)
