"""A first access key for a server that must listen beyond loopback (a container) before
anyone has configured principals: made once, kept in a file only its owner can read.

Without it, such a server would either refuse to start (no authentication on a public
port) or answer anyone. With ``bootstrap_key_file`` set and no ``[[principals]]``, the
server creates an access key (or reads the one it created before), admits only callers
that present it, and logs where the secret is. The same file is what ``mps-snapshot``
reads with ``--access-key-file`` (env ``MPS_SNAPSHOT_ACCESS_KEY_FILE``). Beside it,
``<file>.secret`` holds the secret alone: the principal's ``access_key_secret_file``, which
the HTTP endpoint's Alibaba Cloud signatures need.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from mps_snapshot_client.auth import derive_key
from mps_snapshot_server.config import PrincipalConfig, StatementConfig


def read_key(path: Path) -> tuple[str, str]:
    """(AccessKeyId, AccessKeySecret) from a key file."""
    doc = json.loads(path.read_text())
    return str(doc["AccessKeyId"]), str(doc["AccessKeySecret"])


def ensure_key(path: Path) -> tuple[str, str, bool]:
    """The key in ``path``, created (mode 0600) if the file does not exist yet; the flag
    says whether it was created now."""
    if path.exists():
        key_id, secret = read_key(path)
        return key_id, secret, False
    path.parent.mkdir(parents=True, exist_ok=True)
    key_id = "LTAI" + secrets.token_hex(10)
    secret = secrets.token_urlsafe(30)
    # O_EXCL: two servers starting at once never overwrite each other's key.
    _write_private(secret_path(path), secret + "\n")
    _write_private(path, json.dumps({"AccessKeyId": key_id, "AccessKeySecret": secret}) + "\n")
    return key_id, secret, True


def secret_path(path: Path) -> Path:
    return path.with_name(path.name + ".secret")


def _write_private(path: Path, text: str) -> None:
    # O_EXCL: two servers starting at once never overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def bootstrap_principal(key_id: str, secret: str, path: Path) -> PrincipalConfig:
    """The owner of the first key: every action on every resource."""
    return PrincipalConfig(
        name="bootstrap",
        access_key_id=key_id,
        access_key_hash=derive_key(secret),
        access_key_secret_file=str(secret_path(path)) if secret_path(path).exists() else "",
        statements=(StatementConfig(effect="Allow", actions=("*",), resources=("*",)),),
    )
