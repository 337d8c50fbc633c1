"""Signing calls with an access key: a bearer secret, or an HMAC signature over the
method, a timestamp and a fresh nonce (the secret never travels)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from grpc import aio

_LABEL = b"mps-snapshot-access-key-v1"


def derive_key(secret: str) -> str:
    """The key both sides sign with; also what the server stores (``mps-snapshot hash-secret``)."""
    return hmac.new(_LABEL, secret.encode(), hashlib.sha256).hexdigest()


def signature_metadata(
    access_key_id: str, secret: str, method: str, *, now: datetime | None = None, nonce: str | None = None
) -> list[tuple[str, str]]:
    timestamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    nonce = nonce or secrets.token_hex(16)
    message = f"{method}\n{timestamp}\n{nonce}".encode()
    digest = hmac.new(bytes.fromhex(derive_key(secret)), message, hashlib.sha256).digest()
    return [
        ("x-mps-access-key-id", access_key_id),
        ("x-mps-timestamp", timestamp),
        ("x-mps-signature-nonce", nonce),
        ("x-mps-signature", base64.b64encode(digest).decode()),
    ]


class _Credentials:
    """Adds credentials to a call's metadata. ``mode`` is "hmac" (default) or "bearer"."""

    def __init__(self, access_key_id: str, secret: str, mode: str) -> None:
        if mode not in ("hmac", "bearer"):
            raise ValueError("mode must be 'hmac' or 'bearer'")
        self.access_key_id = access_key_id
        self.secret = secret
        self.mode = mode

    def details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if self.mode == "bearer":
            extra = [("authorization", f"Bearer {self.access_key_id}:{self.secret}")]
        else:
            extra = signature_metadata(self.access_key_id, self.secret, method)
        metadata = aio.Metadata(*(details.metadata or ()), *extra)
        return aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryAuth(aio.UnaryUnaryClientInterceptor):
    def __init__(self, credentials: _Credentials) -> None:
        self.credentials = credentials

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.credentials.details(details), request)


class _StreamAuth(aio.UnaryStreamClientInterceptor):
    def __init__(self, credentials: _Credentials) -> None:
        self.credentials = credentials

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.credentials.details(details), request)


def access_key_interceptors(access_key_id: str, secret: str, mode: str = "hmac") -> list[aio.ClientInterceptor]:
    """Interceptors that sign every call; grpc.aio takes one per call shape."""
    credentials = _Credentials(access_key_id, secret, mode)
    return [_UnaryAuth(credentials), _StreamAuth(credentials)]
