"""The console over S3-compatible storage (moto's server mode): images, sprites, the video and
the WebVTT track reach headless Chromium through the storage layer's presigned URLs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest
import pytest_asyncio

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from mps_snapshot_server.config import StorageRoute, load
from tests.helpers.cdp import browser
from tests.helpers.media import Video
from tests.helpers.s3util import MotoServer

LOCATION = "s3-cn-console"
BUCKET = "console-media"


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto-console"))
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module")
async def s3_console(
    tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer, videos: dict[str, Video]
) -> AsyncIterator[tuple[App, res.SnapshotJob]]:
    session = aioboto3.Session(aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1")
    async with session.client("s3", endpoint_url=moto_server.endpoint) as admin:
        await admin.create_bucket(Bucket=BUCKET)
        # The player fetches the WebVTT track with fetch(): the bucket allows the console's origin.
        await admin.put_bucket_cors(
            Bucket=BUCKET,
            CORSConfiguration={"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]},
        )
        await admin.upload_file(str(videos["main"].path), BUCKET, "in.mp4")
    settings = load(
        env={},
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("s3-console"),
        storage=(
            StorageRoute(
                location=LOCATION,
                kind="s3",
                endpoint_url=moto_server.endpoint,
                access_key_id="AKIACONSOLETEST00001",
                secret_access_key="console-test-secret",
            ),
        ),
    )
    app = App(settings)
    await app.start()
    ref: dict[str, Any] = {"bucket": BUCKET, "location": LOCATION}
    request = sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(object="in.mp4", **ref),
        snapshot_config=res.SnapshotConfig(
            output_file=res.OSSFile(object="shots/{Count}.jpg", **ref),
            tile_output_file=res.OSSFile(object="board/sheet-{TileCount}.jpg", **ref),
            tile_out=res.TileOut(lines=2, columns=2, cell_width=160, cell_height=90, is_keep_cell_pic=True),
            interval=2,
            format="vtt",
            sub_out=res.SubOut(is_spt_frag=True),
        ),
    )
    async with SnapshotClient(f"127.0.0.1:{app.port}") as client:
        job = await client.wait((await client.submit(request)).snapshot_job.id, timeout=90)
    assert job.state == "Success", job.message
    try:
        yield app, job
    finally:
        await app.stop(0.5)


async def test_console_shows_s3_objects_through_presigned_urls(
    s3_console: tuple[App, res.SnapshotJob], moto_server: MotoServer, tmp_path: Path
) -> None:
    app, job = s3_console
    async with browser(tmp_path / "profile") as page:
        await page.navigate(f"http://127.0.0.1:{app.http_port}/console/jobs/{job.id}")
        await page.wait_for("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        sources = await page.evaluate("[...document.images].map(i => [i.src, i.naturalWidth])")
        assert len(sources) == len(job.images) + len(job.sprites) == 5 + 2
        for src, width in sources:
            assert src.startswith(moto_server.endpoint + f"/{BUCKET}/") and width > 0
            assert re.search(r"[?&](X-Amz-Signature|Signature)=", src), src
        video = await page.evaluate("document.getElementById('video').src")
        assert video.startswith(moto_server.endpoint + f"/{BUCKET}/in.mp4?")
        assert await page.wait_for("document.getElementById('video').duration") == pytest.approx(10.0, abs=0.1)
        assert await page.wait_for("document.getElementById('scrub').dataset.cues") == "5"
