"""Alibaba Cloud's request signatures, as the official SDKs and the aliyun CLI compute them.

V1 (``SignatureMethod=HMAC-SHA1``): the signature is a query parameter over every other
parameter. V3 (``ACS3-HMAC-SHA256``): an ``Authorization`` header over the method, path, query,
chosen headers and the body's SHA-256. Both use the raw AccessKeySecret as the HMAC key, which
is why principals that call over HTTP need ``access_key_secret_file`` (docs/security.md).

Pure functions: parsing the request and checking clocks and nonces happen in mps_rpc.py, with
the same Authenticator the gRPC side uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

V3_ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Headers a V3 signature must cover, or a captured request could be re-aimed at another
#: action, version, time or nonce without breaking it.
V3_REQUIRED_HEADERS = frozenset(
    {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"}
)


def pct(text: str) -> str:
    """RFC 3986 encoding as ACS signs it: unreserved ``A-Za-z0-9-_.~`` kept, everything else
    (space as ``%20``, ``*`` as ``%2A``) percent-encoded from UTF-8."""
    return quote(text, safe="-_.~", encoding="utf-8")


def v1_string_to_sign(method: str, params: Sequence[tuple[str, str]]) -> str:
    pairs = sorted((k, v) for k, v in params if k != "Signature")
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in pairs)
    return f"{method.upper()}&{pct('/')}&{pct(canonical)}"


def v1_sign(secret: str, method: str, params: Sequence[tuple[str, str]]) -> str:
    digest = hmac.new((secret + "&").encode(), v1_string_to_sign(method, params).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def v1_matches(secret: str, method: str, params: Sequence[tuple[str, str]], signature: str) -> bool:
    return hmac.compare_digest(v1_sign(secret, method, params).encode(), signature.encode())


@dataclass(frozen=True)
class V3Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_v3_authorization(header: str) -> V3Authorization | None:
    """The parts of ``ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex``, or None
    when any part is missing."""
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != V3_ALGORITHM:
        return None
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts[key] = value.strip()
    key_id, headers, signature = parts.get("Credential"), parts.get("SignedHeaders"), parts.get("Signature")
    if not (key_id and headers and signature):
        return None
    return V3Authorization(key_id, tuple(h.strip().lower() for h in headers.split(";") if h.strip()), signature)


def v3_canonical_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    canonical_query = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed_headers)
    return "\n".join((method.upper(), path, canonical_query, canonical_headers, ";".join(signed_headers), payload_hash))


def v3_sign(secret: str, canonical_request: str) -> str:
    string_to_sign = f"{V3_ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def v3_matches(secret: str, canonical_request: str, signature: str) -> bool:
    return hmac.compare_digest(v3_sign(secret, canonical_request).encode(), signature.lower().encode())
