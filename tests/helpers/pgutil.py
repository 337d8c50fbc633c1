"""PostgreSQL for tests: the server at MPS_TEST_DATABASE_URL (scripts/test.sh exports one
for the throwaway cluster it starts where none runs), else postgres@127.0.0.1:5432 when
it answers. Each test gets a database of its own, created and dropped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
_reachable: dict[str, bool] = {}


def base_dsn() -> str:
    return os.environ.get("MPS_TEST_DATABASE_URL", _DEFAULT)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def require_postgres() -> str:
    dsn = base_dsn()
    if dsn not in _reachable:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
            await conn.close()
            _reachable[dsn] = True
        except (OSError, asyncpg.PostgresError, TimeoutError):
            _reachable[dsn] = False
    if not _reachable[dsn]:
        pytest.skip(f"no PostgreSQL at {dsn}: run scripts/test.sh, which starts a throwaway one")
    return dsn


@contextlib.asynccontextmanager
async def temp_database() -> AsyncIterator[str]:
    """A fresh, empty database's DSN; dropped afterwards (connections forced off)."""
    dsn = await require_postgres()
    name = "mps_test_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(dsn, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(dsn, name)
    finally:
        admin = await asyncpg.connect(dsn, timeout=5)
        try:
            async with asyncio.timeout(30):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
