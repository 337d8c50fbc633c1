"""The checks every call passes, in order: who is calling, whether they are within their
rate, and (with the request's resources) whether their policies allow the action."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping

from mps_snapshot_server.domain.errors import ErrorCode, Forbidden, Throttled
from mps_snapshot_server.security.authn import Authenticator, Principal
from mps_snapshot_server.security.methods import METHODS, limit_class
from mps_snapshot_server.security.policy import is_allowed, may_ever
from mps_snapshot_server.security.ratelimit import RateLimiter


class Guard:
    def __init__(self, authenticator: Authenticator, limiter: RateLimiter, max_watch_streams: int) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.max_watch_streams = max_watch_streams
        self._watches: Counter[str] = Counter()

    def admit(self, method: str, full_method: str, metadata: Mapping[str, str], cert_cn: str | None) -> Principal:
        principal = self.authenticator.authenticate(metadata, full_method, cert_cn, consume=False)
        self.throttle(principal, method)
        # Only an admitted call uses up its nonce.
        self.authenticator.consume_nonce(metadata)
        return principal

    def throttle(self, principal: Principal, method: str) -> None:
        """Take one call from the principal's budget for ``method`` (gRPC and HTTP alike)."""
        wait = self.limiter.check(principal.name, limit_class(method))
        if wait:
            raise Throttled(
                f"Request was denied due to user flow control: {principal.name} is over the "
                f"{limit_class(method)} rate limit; retry in {wait:.2f} s.",
                retry_after=wait,
            )

    def allowed(self, principal: Principal, method: str, resources: tuple[str, ...]) -> bool:
        return is_allowed(principal.statements, METHODS[method].action, resources)

    def authorize_action(self, principal: Principal, method: str) -> None:
        """Refuse a caller whose policies never allow the method's action on anything."""
        action = METHODS[method].action
        if not may_ever(principal.statements, action):
            raise Forbidden(
                f"{principal.name} is not allowed to perform {action}; ask for a policy that allows it "
                "(an explicit Deny overrides any Allow)."
            )

    async def admit_shared(self, principal: Principal, method: str, metadata: Mapping[str, str]) -> None:
        """Checks on state shared by several replicas (server/mps_snapshot_server/security/cluster.py); nothing
        to do for a single process."""

    def authorize(self, principal: Principal, method: str, resources: tuple[str, ...]) -> None:
        action = METHODS[method].action
        if not is_allowed(principal.statements, action, resources):
            shown = ", ".join(resources) or "*"
            raise Forbidden(
                f"{principal.name} is not allowed to perform {action} on {shown}; ask for a policy "
                "that allows it (an explicit Deny overrides any Allow)."
            )

    @contextlib.contextmanager
    def watch_slot(self, principal: Principal) -> Iterator[None]:
        if self._watches[principal.name] >= self.max_watch_streams:
            raise Throttled(
                f"{principal.name} already has {self.max_watch_streams} WatchSnapshotJob streams open, the limit; "
                "close one or poll with QuerySnapshotJobList.",
                code=ErrorCode.THROTTLING_WATCH_STREAMS,
                retry_after=1.0,
            )
        self._watches[principal.name] += 1
        try:
            yield
        finally:
            self._watches[principal.name] -= 1
            if not self._watches[principal.name]:
                del self._watches[principal.name]
