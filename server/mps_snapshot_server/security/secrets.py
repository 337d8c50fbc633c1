"""Reading a principal's raw AccessKeySecret from its ``access_key_secret_file``.

Alibaba Cloud's request signatures (V1 HMAC-SHA1, V3 ACS3-HMAC-SHA256) use the secret itself
as the HMAC key, so a server that verifies them must hold it. It lives in a file of its own,
outside the TOML settings (which are often copied around and checked in), readable only by the
service's user; docs/security.md states the choice and its risks.
"""

from __future__ import annotations

import hmac
import logging
import stat
from pathlib import Path

from mps_snapshot_server.security.authn import derive_key

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 256


def read_secret(path: str, key_id: str) -> str:
    """The secret in ``path``: its text without the trailing newline an editor adds."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        raw = file.read_bytes()
    except OSError as exc:
        raise SystemExit(f"principal {key_id!r}: cannot read access_key_secret_file {path!r}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Refusing would break read-only secret mounts (Kubernetes defaults to 0644), so warn.
        log.warning("access_key_secret_file %s of principal %r is readable by other users; chmod 600 it", path, key_id)
    secret = raw.decode("utf-8", errors="strict").rstrip("\r\n")
    if not secret or len(raw) > MAX_SECRET_BYTES or any(c.isspace() for c in secret):
        raise SystemExit(
            f"principal {key_id!r}: access_key_secret_file {path!r} must hold the secret alone "
            f"(1-{MAX_SECRET_BYTES} bytes, no spaces or line breaks inside)."
        )
    return secret


def principal_keys(key_id: str, key_hash: str, secret_file: str) -> tuple[str, str]:
    """(access key hash, raw secret) of a principal: the hash is derived from the secret when
    only the secret file is given, and must agree with it when both are."""
    if not secret_file:
        return key_hash.lower(), ""
    secret = read_secret(secret_file, key_id)
    derived = derive_key(secret)
    if key_hash and not hmac.compare_digest(derived, key_hash.lower()):
        raise SystemExit(
            f"principal {key_id!r}: access_key_hash does not match the secret in access_key_secret_file; "
            "remove the hash (it is derived from the file) or fix one of them."
        )
    return derived, secret
