"""Authenticating calls: access keys (a bearer secret, or an HMAC signature over the
method, a timestamp and a single-use nonce) or a TLS client certificate.

Secrets are never stored: a principal holds ``derive_key(secret)`` (HMAC-SHA256 of the
secret under a fixed label). A bearer secret is checked by deriving and comparing; an
HMAC signature is made by the client with the same derived key. Comparisons are
constant-time.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mps_snapshot_server.domain.errors import ErrorCode, Unauthenticated
from mps_snapshot_server.security.policy import ALLOW_ALL, Statement

_LABEL = b"mps-snapshot-access-key-v1"
MAX_SKEW_S = 15 * 60
MAX_NONCE_LENGTH = 64

HEADER_AUTHORIZATION = "authorization"
HEADER_KEY_ID = "x-mps-access-key-id"
HEADER_TIMESTAMP = "x-mps-timestamp"
HEADER_NONCE = "x-mps-signature-nonce"
HEADER_SIGNATURE = "x-mps-signature"


def derive_key(secret: str) -> str:
    """What the server stores for a secret (hex). ``mps-snapshot hash-secret`` prints it."""
    return hmac.new(_LABEL, secret.encode(), hashlib.sha256).hexdigest()


def string_to_sign(method: str, timestamp: str, nonce: str) -> bytes:
    return f"{method}\n{timestamp}\n{nonce}".encode()


def sign(derived_key_hex: str, method: str, timestamp: str, nonce: str) -> str:
    digest = hmac.new(bytes.fromhex(derived_key_hex), string_to_sign(method, timestamp, nonce), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


@dataclass(frozen=True)
class Principal:
    name: str
    access_key_id: str = ""
    key_hash: str = ""
    cert_cn: str = ""
    statements: tuple[Statement, ...] = ()
    #: The raw AccessKeySecret, when configured (``access_key_secret_file``): Alibaba Cloud's
    #: V1/V3 signatures on the HTTP RPC endpoint use it as the HMAC key (docs/security.md).
    secret: str = field(default="", repr=False, compare=False)


ANONYMOUS = Principal(name="anonymous", statements=ALLOW_ALL)


class Authenticator:
    def __init__(
        self, principals: list[Principal], clock: Callable[[], float] = time.time, max_nonces: int = 1_000_000
    ) -> None:
        self.by_key = {p.access_key_id: p for p in principals if p.access_key_id}
        self.by_cn = {p.cert_cn: p for p in principals if p.cert_cn}
        self.enabled = bool(principals)
        self.clock = clock
        self.nonces = NonceStore(max_nonces)

    def authenticate(
        self, metadata: Mapping[str, str], method: str, cert_cn: str | None = None, *, consume: bool = True
    ) -> Principal:
        """The caller. A signed call's nonce is checked here and, with ``consume``, recorded
        as used; without it the caller records it with ``consume_nonce`` once the call is
        admitted (a throttled call does nothing, so its nonce stays unused)."""
        if cert_cn and cert_cn in self.by_cn:
            return self.by_cn[cert_cn]
        auth = metadata.get(HEADER_AUTHORIZATION, "")
        if auth:
            return self._bearer(auth)
        if metadata.get(HEADER_SIGNATURE):
            principal = self._signed(metadata, method)
            if consume:
                self.consume_nonce(metadata)
            return principal
        if not self.enabled:
            return ANONYMOUS
        raise Unauthenticated(
            "The call carries no credentials: send 'authorization: Bearer <AccessKeyId>:<AccessKeySecret>', "
            "an HMAC signature (x-mps-access-key-id, x-mps-timestamp, x-mps-signature-nonce, x-mps-signature), "
            "or a client certificate.",
            code=ErrorCode.MISSING_ACCESS_KEY_ID,
        )

    def principal(self, key_id: str) -> Principal:
        principal = self.by_key.get(key_id)
        if principal is None:
            raise Unauthenticated(f"The AccessKeyId {key_id[:64]!r} is not known to this server.")
        return principal

    def _bearer(self, header: str) -> Principal:
        scheme, _, token = header.partition(" ")
        key_id, sep, secret = token.strip().partition(":")
        if scheme.lower() != "bearer" or not sep:
            raise Unauthenticated(
                "The authorization header must be 'Bearer <AccessKeyId>:<AccessKeySecret>'.",
                code=ErrorCode.INCOMPLETE_SIGNATURE,
            )
        principal = self.principal(key_id)
        if not hmac.compare_digest(derive_key(secret), principal.key_hash):
            raise Unauthenticated(
                "The AccessKeySecret does not match the AccessKeyId.", code=ErrorCode.SIGNATURE_DOES_NOT_MATCH
            )
        return principal

    def _signed(self, metadata: Mapping[str, str], method: str) -> Principal:
        key_id = metadata.get(HEADER_KEY_ID, "")
        timestamp = metadata.get(HEADER_TIMESTAMP, "")
        nonce = metadata.get(HEADER_NONCE, "")
        signature = metadata.get(HEADER_SIGNATURE, "")
        if not (key_id and timestamp and nonce) or len(nonce) > MAX_NONCE_LENGTH:
            raise Unauthenticated(
                "A signed call needs x-mps-access-key-id, x-mps-timestamp (ISO 8601 UTC), "
                f"x-mps-signature-nonce (1-{MAX_NONCE_LENGTH} characters) and x-mps-signature.",
                code=ErrorCode.INCOMPLETE_SIGNATURE,
            )
        principal = self.principal(key_id)
        expected = sign(principal.key_hash, method, timestamp, nonce)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Unauthenticated(
                "The signature does not match: sign '<method>\\n<timestamp>\\n<nonce>' with HMAC-SHA256 under "
                "the derived key of your AccessKeySecret, base64-encoded.",
                code=ErrorCode.SIGNATURE_DOES_NOT_MATCH,
            )
        self.check_fresh(key_id, timestamp, nonce, HEADER_TIMESTAMP, HEADER_NONCE)
        return principal

    def check_fresh(self, key_id: str, timestamp: str, nonce: str, timestamp_name: str, nonce_name: str) -> None:
        """A signed request's timestamp is within 15 minutes of the server's clock and its
        nonce is new; the one replay rule of gRPC's and HTTP's signatures (``*_name`` is what
        the caller calls the two fields, for the message)."""
        try:
            when = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise Unauthenticated(
                f"{timestamp_name} {timestamp[:40]!r} is not ISO 8601 (2026-01-02T03:04:05Z).",
                code=ErrorCode.INVALID_TIME_STAMP_FORMAT,
            ) from None
        now = self.clock()
        if abs(now - when) > MAX_SKEW_S:
            raise Unauthenticated(
                f"{timestamp_name} is more than 15 minutes from the server's clock; sync the "
                "caller's clock and sign again.",
                code=ErrorCode.INVALID_TIME_STAMP_EXPIRED,
            )
        if self.nonces.used(f"{key_id}\n{nonce}", now):
            raise Unauthenticated(
                f"This {nonce_name} was used before; use a new random nonce per call.",
                code=ErrorCode.SIGNATURE_NONCE_USED,
            )

    def use_nonce(self, key_id: str, nonce: str) -> None:
        """Record a signed call's nonce as used, once the call is admitted (a throttled call
        did nothing, and storing its nonce would let a flood fill the store at no cost)."""
        self.nonces.add(f"{key_id}\n{nonce}", self.clock())

    def consume_nonce(self, metadata: Mapping[str, str]) -> None:
        """Record a signed gRPC call's nonce as used (no-op for other calls)."""
        if metadata.get(HEADER_SIGNATURE) and not metadata.get(HEADER_AUTHORIZATION):
            self.use_nonce(metadata.get(HEADER_KEY_ID, ""), metadata.get(HEADER_NONCE, ""))


class NonceStore:
    """Nonces seen, each kept until its timestamp can no longer be accepted.

    A nonce added at ``now`` carries a timestamp within MAX_SKEW_S of ``now``, so it can be
    forgotten at ``now + 2 * MAX_SKEW_S``. Expiry times therefore grow with insertion order:
    a FIFO of (expiry, key) beside a dict gives O(1) lookups and amortised O(1) expiry (a
    few entries dropped per call), never a rebuild. Past ``max_nonces`` live entries the
    oldest is forgotten first: memory stays bounded; a replay of that nonce would then need
    ``max_nonces`` newer signed calls within its 30-minute window.
    """

    def __init__(self, max_nonces: int) -> None:
        self.max_nonces = max_nonces
        self._expiry: dict[str, float] = {}
        self._order: collections.deque[tuple[float, str]] = collections.deque()

    def __len__(self) -> int:
        return len(self._expiry)

    def _expire(self, now: float) -> None:
        order, expiry = self._order, self._expiry
        while order and (order[0][0] <= now or len(order) > self.max_nonces):
            when, key = order.popleft()
            if expiry.get(key) == when:
                del expiry[key]

    def used(self, key: str, now: float) -> bool:
        self._expire(now)
        return key in self._expiry

    def add(self, key: str, now: float) -> None:
        when = now + 2 * MAX_SKEW_S
        self._expiry[key] = when
        self._order.append((when, key))
        self._expire(now)
