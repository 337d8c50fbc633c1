"""The call checks whose state several replicas must share: signature nonces (a replay
to another replica is still a replay) and per-principal rate limits (50 Submit/s is 50/s
for the whole service, not per replica). Both live in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping

from mps_snapshot_server.domain.errors import ErrorCode, Throttled, Unauthenticated
from mps_snapshot_server.security.authn import (
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    MAX_SKEW_S,
    Authenticator,
    Principal,
)
from mps_snapshot_server.security.guard import Guard
from mps_snapshot_server.security.methods import limit_class
from mps_snapshot_server.security.ratelimit import RateLimiter
from mps_snapshot_server.store.postgres import PostgresStore


class ClusterGuard(Guard):
    """A Guard whose rate buckets are in the database (its local limiter is unlimited)."""

    def __init__(
        self,
        authenticator: Authenticator,
        limits: dict[str, float],
        max_watch_streams: int,
        store: PostgresStore,
    ) -> None:
        super().__init__(authenticator, RateLimiter({}), max_watch_streams)
        self.limits = limits
        self.store = store

    async def admit_shared(self, principal: Principal, method: str, metadata: Mapping[str, str]) -> None:
        nonce = metadata.get(HEADER_NONCE, "")
        key_id = metadata.get(HEADER_KEY_ID, "")
        # admit() has verified the signature by now, so only genuine first uses are recorded.
        if (
            metadata.get(HEADER_SIGNATURE)
            and nonce
            and key_id
            and not await self.store.use_nonce(key_id, nonce, 2 * MAX_SKEW_S)
        ):
            raise Unauthenticated(
                "This x-mps-signature-nonce was used before; use a new random nonce per call.",
                code=ErrorCode.SIGNATURE_NONCE_USED,
            )
        kind = limit_class(method)
        rate = self.limits.get(kind)
        if not rate:
            return
        wait = await self.store.take_token(principal.name, kind, rate, max(1.0, rate))
        if wait:
            raise Throttled(
                f"Request was denied due to user flow control: {principal.name} is over the "
                f"{kind} rate limit; retry in {wait:.2f} s.",
                retry_after=wait,
            )
