"""The Node.js client (clients/node) against the in-process server.

Runs `node --test clients/node/client.test.mjs` as an asyncio subprocess: the server lives on
this test's event loop, so the test must await the child rather than block on it.
scripts/setup.sh --dev installs the npm packages (npm ci in clients/node).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mps_snapshot_server.app import App
from tests.conftest import put
from tests.helpers.children import run_child
from tests.helpers.media import Video

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the Node.js client test needs Node.js 18+")


async def test_node_client_end_to_end(app: App, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    assert NODE is not None
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules is missing: run `bash scripts/setup.sh --dev` (npm ci in clients/node)")
    put(data_dir, bucket, "in/clip.mp4", videos["main"].path)
    env = {
        **os.environ,
        "MPS_SNAPSHOT_TARGET": f"127.0.0.1:{app.port}",
        "MPS_TEST_BUCKET": bucket,
        "MPS_TEST_OBJECT": "in/clip.mp4",
    }
    code, output = await run_child([NODE, "--test", str(NODE_DIR / "client.test.mjs")], env, timeout=90)
    assert code == 0, output
    assert "# fail 0" in output and "# SKIP" not in output, output
    # What the Node client's jobs wrote, seen from the storage side.
    written = data_dir / bucket / "node"
    assert (written / "sync" / "clip-1000.jpg").stat().st_size > 0
    assert sorted(p.name for p in (written / "seq").iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    # Outputs beyond MPS, decoded: formats by content, sizes, the animation's frames.
    beyond = written / "beyond"
    with Image.open(beyond / "pad.webp") as img:
        assert img.format == "WEBP" and img.size == (200, 200)
    with Image.open(beyond / "grid.png") as img:
        assert img.format == "PNG" and img.size == (128, 72)
    with Image.open(beyond / "preview.gif") as img:
        assert img.format == "GIF" and getattr(img, "n_frames", 1) == 5
