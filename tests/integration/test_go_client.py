"""The Go client (clients/go) against the in-process server.

clients/go/build.sh generates the Go code and builds the client's test binary with Debian's Go
toolchain in GOPATH mode (cached in build/go), then the binary runs against this test's server.
Both run as asyncio subprocesses: the server lives on this test's event loop.
scripts/setup.sh --dev installs the Debian packages.
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
TEST_BINARY = ROOT / "build" / "go" / "bin" / "mpsclient.test"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or shutil.which("protoc-gen-go-grpc") is None,
    reason="Go is not installed: the Go client test needs Debian's golang-go, protoc-gen-go-grpc and "
    "golang-google-grpc-dev (scripts/setup.sh --dev installs them)",
)


@pytest.mark.timeout(240)
async def test_go_client_end_to_end(app: App, data_dir: Path, bucket: str, videos: dict[str, Video]) -> None:
    # A first build takes about 30 s on two cores; later ones come from build/go/cache.
    code, output = await run_child(["bash", "clients/go/build.sh"], dict(os.environ), timeout=100)
    assert code == 0, f"clients/go/build.sh failed:\n{output}"

    put(data_dir, bucket, "in/clip.mp4", videos["main"].path)
    env = {
        **os.environ,
        "MPS_SNAPSHOT_TARGET": f"127.0.0.1:{app.port}",
        "MPS_TEST_BUCKET": bucket,
        "MPS_TEST_OBJECT": "in/clip.mp4",
    }
    code, output = await run_child([str(TEST_BINARY), "-test.v", "-test.timeout", "90s"], env, timeout=100)
    assert code == 0, output
    assert "--- FAIL" not in output and "--- SKIP" not in output, output
    # What the Go client's jobs wrote, seen from the storage side.
    written = data_dir / bucket / "go"
    assert (written / "sync" / "clip-1000.jpg").stat().st_size > 0
    assert sorted(p.name for p in (written / "seq").iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    # Outputs beyond MPS, decoded: formats by content, sizes, the animation's frames.
    beyond = written / "beyond"
    with Image.open(beyond / "crop.png") as img:
        assert img.format == "PNG" and img.size == (120, 120)
    with Image.open(beyond / "sprite.webp") as img:
        assert img.format == "WEBP" and img.size == (192, 72)
    with Image.open(beyond / "00001.webp") as img:
        assert img.format == "WEBP"
    with Image.open(beyond / "preview.webp") as img:
        assert img.format == "WEBP" and getattr(img, "n_frames", 1) == 8 and img.size == (128, 72)
    assert "00006.webp" in (beyond / "clip.vtt").read_text()
