"""Authenticating calls: access keys (a bearer secret, or an HMAC signature over the
method, a timestamp and a single-use nonce) or a TLS client certificate.

Secrets are never stored: a principal holds ``derive_key(secret)`` (HMAC-SHA256 of the
secret under a fixed label). A bearer secret is checked by deriving and comparing; an
HMAC signature is made by the client with the same derived key. Comparisons are
constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from server.domain.errors import Unauthenticated
from server.security.policy import ALLOW_ALL, Statement

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
        self.max_nonces = max_nonces
        self._nonces: dict[tuple[str, str], float] = {}

    def authenticate(self, metadata: Mapping[str, str], method: str, cert_cn: str | None = None) -> Principal:
        if cert_cn and cert_cn in self.by_cn:
            return self.by_cn[cert_cn]
        auth = metadata.get(HEADER_AUTHORIZATION, "")
        if auth:
            return self._bearer(auth)
        if metadata.get(HEADER_SIGNATURE):
            return self._signed(metadata, method)
        if not self.enabled:
            return ANONYMOUS
        raise Unauthenticated(
            "The call carries no credentials: send 'authorization: Bearer <AccessKeyId>:<AccessKeySecret>', "
            "an HMAC signature (x-mps-access-key-id, x-mps-timestamp, x-mps-signature-nonce, x-mps-signature), "
            "or a client certificate.",
            code="MissingAccessKeyId",
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
                "The authorization header must be 'Bearer <AccessKeyId>:<AccessKeySecret>'.", code="IncompleteSignature"
            )
        principal = self.principal(key_id)
        if not hmac.compare_digest(derive_key(secret), principal.key_hash):
            raise Unauthenticated("The AccessKeySecret does not match the AccessKeyId.", code="SignatureDoesNotMatch")
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
                code="IncompleteSignature",
            )
        principal = self.principal(key_id)
        expected = sign(principal.key_hash, method, timestamp, nonce)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Unauthenticated(
                "The signature does not match: sign '<method>\\n<timestamp>\\n<nonce>' with HMAC-SHA256 under "
                "the derived key of your AccessKeySecret, base64-encoded.",
                code="SignatureDoesNotMatch",
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
                code="InvalidTimeStamp.Format",
            ) from None
        now = self.clock()
        if abs(now - when) > MAX_SKEW_S:
            raise Unauthenticated(
                f"{timestamp_name} is more than 15 minutes from the server's clock; sync the "
                "caller's clock and sign again.",
                code="InvalidTimeStamp.Expired",
            )
        self._use_nonce(key_id, nonce, now, nonce_name)

    def _use_nonce(self, key_id: str, nonce: str, now: float, nonce_name: str) -> None:
        key = (key_id, nonce)
        expiry = self._nonces.get(key)
        if expiry is not None and expiry > now:
            raise Unauthenticated(
                f"This {nonce_name} was used before; use a new random nonce per call.",
                code="SignatureNonceUsed",
            )
        if len(self._nonces) >= self.max_nonces:
            self._nonces = {k: v for k, v in self._nonces.items() if v > now}
        # A nonce must be remembered as long as its timestamp could still be accepted.
        self._nonces[key] = now + 2 * MAX_SKEW_S
