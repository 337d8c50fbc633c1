"""ClientToken: a Submit repeated with the same token within the window returns the job
the first call created, instead of creating another (the same request is required)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from mps_snapshot_server.domain.errors import FieldViolation, IdempotentParameterMismatch, InvalidParameter
from mps_snapshot_server.domain.models import Job, SnapshotRequest
from mps_snapshot_server.store import codec
from mps_snapshot_server.store.base import Store

#: How long a ClientToken is remembered.
TOKEN_WINDOW = timedelta(hours=24)


class ClientTokens:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def once(
        self, principal: str, token: str, request: SnapshotRequest, create: Callable[[], Awaitable[Job]]
    ) -> Job:
        """The job of an earlier call with this token and request, or ``create()``'s."""
        if not (1 <= len(token) <= 64 and token.isascii() and token.isprintable()):
            raise InvalidParameter.field("client_token", "ClientToken must be 1-64 printable ASCII characters.")
        key = (principal, token)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            # Concurrent retries with one token wait for the first, then find its job (the
            # store's lock does the same across replicas).
            async with lock, self.store.token_lock(principal, token):
                digest = hashlib.sha256(codec.dumps(request).encode()).hexdigest()
                now = datetime.now(UTC)
                since = now - TOKEN_WINDOW
                found = await self.store.get_token(principal, token, since)
                if found is not None:
                    if found[0] != digest:
                        raise IdempotentParameterMismatch(
                            "This ClientToken was used for a different request; use a new token for a new job.",
                            violations=(FieldViolation("client_token", "used before with another request"),),
                        )
                    job = await self.store.get_job(found[1])
                    if job is not None:
                        return job
                job = await create()
                await self.store.put_token(principal, token, digest, job.id, datetime.now(UTC), since)
                return job
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]
