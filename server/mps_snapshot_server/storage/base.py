"""The storage interface every backend implements (local folders, S3-compatible stores)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells: the size, and a version that changes when the object does."""

    size: int
    version: str


@dataclass(frozen=True)
class InputHandle:
    """How ffmpeg reads an input: a URL and the exact protocols it needs."""

    url: str
    protocols: tuple[str, ...]


class ObjectStore(Protocol):
    """A bucket/key store. Keys reaching it have passed mps_snapshot_server.domain.keys."""

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size and version of an object; ResourceNotFound if it does not exist."""
        ...

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        """A URL ffmpeg can read the object from without copying it whole."""
        ...

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        """Publish a local file as an object, whole or not at all."""
        ...

    async def delete(self, bucket: str, key: str) -> None:
        """Remove an object; no error if it is already gone."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    def for_role(self, role_arn: str) -> ObjectStore:
        """The store as the request's RoleArn sees it (a credentials profile); ``self`` when
        roles mean nothing to the backend. Returns the same object for the same role."""
        ...


class StoreWrapper:
    """An ObjectStore around another one (observation, fencing): every call passes through
    unless a subclass changes it, and each RoleArn's view is wrapped once, the same way."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self._roles: dict[str, ObjectStore] = {}

    def wrap(self, inner: ObjectStore) -> ObjectStore:
        """This wrapper around another store (a role's view of the same backend)."""
        raise NotImplementedError

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await self.inner.head(bucket, key)

    async def input_handle(self, bucket: str, key: str) -> InputHandle:
        return await self.inner.input_handle(bucket, key)

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        await self.inner.put_file(bucket, key, path, content_type)

    async def delete(self, bucket: str, key: str) -> None:
        await self.inner.delete(bucket, key)

    async def close(self) -> None:
        await self.inner.close()

    def for_role(self, role_arn: str) -> ObjectStore:
        inner = self.inner.for_role(role_arn)
        if inner is self.inner:
            return self
        view = self._roles.get(role_arn)
        if view is None:
            view = self._roles[role_arn] = self.wrap(inner)
        return view
