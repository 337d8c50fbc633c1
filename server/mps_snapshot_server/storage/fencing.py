"""Object writes fenced by the job's lease: a replica that lost a job publishes nothing
and removes nothing (the objects now belong to the job's new owner)."""

from __future__ import annotations

from pathlib import Path

from mps_snapshot_server.storage.base import ObjectStore, StoreWrapper
from mps_snapshot_server.storage.router import Route, StorageRouter
from mps_snapshot_server.store.leases import check_current


class FencedObjectStore(StoreWrapper):
    """Checks the current task's lease (if any) before each put or delete; reads pass."""

    def wrap(self, inner: ObjectStore) -> ObjectStore:
        return FencedObjectStore(inner)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        check_current()
        await self.inner.put_file(bucket, key, path, content_type)

    async def delete(self, bucket: str, key: str) -> None:
        check_current()
        await self.inner.delete(bucket, key)


def fenced(router: StorageRouter) -> StorageRouter:
    """The same routes, each store wrapped once (routes sharing a store still share it)."""
    wrapped: dict[int, FencedObjectStore] = {}
    routes = []
    for route in router.routes:
        store = wrapped.setdefault(id(route.store), FencedObjectStore(route.store))
        routes.append(Route(route.pattern, store))
    return StorageRouter(routes)
