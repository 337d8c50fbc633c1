"""The server as an operator sees it: start-up, configuration, health, reflection,
graceful shutdown on SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mps_snapshot_client import SnapshotClient
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from tests.helpers.children import ServerProcess


async def test_health_and_reflection(app: App, client: SnapshotClient) -> None:
    assert await client.health() == "SERVING"
    assert await client.health("mps.snapshot.v1.SnapshotService") == "SERVING"
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for response in stub.ServerReflectionInfo(requests()):
            names |= {s.name for s in response.list_services_response.service}
    assert {"mps.snapshot.v1.SnapshotService", "mps.snapshot.v1.PipelineService", "grpc.health.v1.Health"} <= names


def test_settings_from_file_env_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "mps.toml"
    cfg.write_text(
        'listen = "127.0.0.1:6000"\nsync_timeout_s = 2.5\nreflection = false\n'
        '[[storage]]\nlocation = "oss-*"\nkind = "local"\n'
    )
    settings = load(
        cfg,
        env={"MPS_SNAPSHOT_SYNC_TIMEOUT_S": "3", "MPS_SNAPSHOT_DATA_DIR": str(tmp_path / "d")},
        listen="127.0.0.1:7000",
    )
    assert settings.listen == "127.0.0.1:7000"  # flag beats file
    assert settings.sync_timeout_s == 3.0  # env beats file
    assert settings.reflection is False
    assert settings.data_dir == tmp_path / "d"
    assert [r.location for r in settings.storage] == ["oss-*"]
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        load(cfg, env={})


async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--listen", "127.0.0.1:0", shutdown_grace_s="2")
    port = await server.start()
    try:
        async with SnapshotClient(f"127.0.0.1:{port}") as c:
            assert await c.health() == "SERVING"
            assert await server.kill(signal.SIGTERM) == 0
        assert (tmp_path / "data" / "mps-snapshot.db").exists()
    finally:
        await server.kill(signal.SIGKILL)
