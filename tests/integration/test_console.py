"""The web console in a real headless Chromium (Debian's package): jobs and pipelines pages,
a job's images and sprites, and the storyboard player's WebVTT scrub preview, compared
pixel for pixel with the sprite cell it shows. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image, ImageChops, ImageStat

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_client.auth import derive_key
from mps_snapshot_server.app import App
from mps_snapshot_server.config import PrincipalConfig, StatementConfig, load
from tests.conftest import put
from tests.helpers.cdp import browser
from tests.helpers.media import Video
from tests.integration.test_async_jobs import submit_request

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class Console:
    def __init__(self, app: App, data_dir: Path, job: res.SnapshotJob) -> None:
        self.app = app
        self.data_dir = data_dir
        self.job = job
        self.base = f"http://127.0.0.1:{app.http_port}"


@pytest_asyncio.fixture(scope="module")
async def console(tmp_path_factory: pytest.TempPathFactory, videos: dict[str, Video]) -> AsyncIterator[Console]:
    data_dir = tmp_path_factory.mktemp("console")
    settings = load(env={}, listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=data_dir)
    app = App(settings)
    await app.start()
    put(data_dir, "media", "clips/in.mp4", videos["main"].path)
    request = submit_request("media", "clips%2Fin.mp4", out="shots/{Count}.jpg", interval=1, format="vtt")
    request.snapshot_config.tile_out.CopyFrom(
        res.TileOut(lines=2, columns=3, cell_width=160, cell_height=90, margin=4, padding=2, is_keep_cell_pic=True)
    )
    request.snapshot_config.tile_output_file.CopyFrom(
        res.OSSFile(bucket="media", location="oss-cn-hangzhou", object="board/sheet-{TileCount}.jpg")
    )
    request.snapshot_config.sub_out.is_spt_frag = True
    async with SnapshotClient(f"127.0.0.1:{app.port}") as client:
        job = await client.wait((await client.submit(request)).snapshot_job.id, timeout=90)
        assert job.state == "Success", job.message
        # A failed job too, for the list's filter.
        failed = await client.submit(
            sps.SubmitSnapshotJobRequest(
                input=res.OSSFile(bucket="media", location="oss-cn-hangzhou", object="clips%2Fin.mp4"),
                snapshot_config=res.SnapshotConfig(
                    output_file=res.OSSFile(bucket="media", location="oss-cn-hangzhou", object="late/{Count}.jpg"),
                    time_array=res.TimeArray(time_point_list=[60_000]),
                ),
            )
        )
        await client.wait(failed.snapshot_job.id, timeout=60)
    try:
        yield Console(app, data_dir, job)
    finally:
        await app.stop(0.5)


async def test_jobs_and_pipelines_pages(console: Console, tmp_path: Path) -> None:
    job = console.job
    async with browser(tmp_path / "profile") as page:
        await page.navigate(console.base + "/console/")
        assert await page.evaluate("location.pathname") == "/console/jobs"
        rows = await page.evaluate(
            "[...document.querySelectorAll('table.jobs tbody tr')].map(r => [...r.cells].map(c => c.innerText))"
        )
        assert len(rows) == 2
        mine = next(r for r in rows if r[0] == job.id)
        assert mine[1] == "Success" and mine[2] == job.pipeline_id and mine[3] == "media/clips%2Fin.mp4"
        assert mine[4] == "10/10 images"
        assert any(r[1] == "Fail" for r in rows)
        # Filter by state with the form, as a user would.
        await page.evaluate("document.querySelector('select[name=state]').value = 'Fail'")
        await page.evaluate("document.querySelector('form.filter').submit()")
        await page.wait_for("location.search.includes('state=Fail')")
        await page.wait_for("document.readyState === 'complete'")
        states = await page.evaluate(
            "[...document.querySelectorAll('table.jobs tbody tr')].map(r => r.cells[1].innerText)"
        )
        assert states == ["Fail"]
        await page.navigate(console.base + f"/console/jobs?pipeline={job.pipeline_id}&state=Cancelled")
        assert await page.evaluate("document.querySelector('p.empty').innerText") == "No jobs match."
        await page.navigate(console.base + "/console/pipelines")
        cells = await page.evaluate(
            "[...document.querySelectorAll('table.pipelines tbody tr')].map(r => [...r.cells].map(c => c.innerText))"
        )
        assert [c[0] for c in cells] == [job.pipeline_id]
        assert cells[0][2] == "Active" and cells[0][3].startswith("0/") and cells[0][4].startswith("0/")


async def test_jobs_list_is_paged(console: Console, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mps_snapshot_server import console as console_module

    monkeypatch.setattr(console_module, "PAGE_SIZE", 1)
    seen = []
    async with browser(tmp_path / "profile") as page:
        await page.navigate(console.base + "/console/jobs")
        while True:
            seen += await page.evaluate(
                "[...document.querySelectorAll('table.jobs tbody tr')].map(r => r.cells[0].innerText)"
            )
            if not await page.evaluate("!!document.querySelector('a[rel=next]')"):
                break
            await page.navigate(
                console.base + await page.evaluate("document.querySelector('a[rel=next]').getAttribute('href')")
            )
    assert len(seen) == 2 and console.job.id in seen and len(set(seen)) == 2
    async with aiohttp.ClientSession() as http:
        async with http.get(console.base + "/console/jobs?state=Bogus") as response:
            assert response.status == 400 and "State 'Bogus' is unknown" in await response.text()
        async with http.get(console.base + "/console/jobs?page=garbage") as response:
            assert response.status == 400


async def test_job_page_shows_images_with_times_and_sprites(console: Console, tmp_path: Path) -> None:
    job = console.job
    async with browser(tmp_path / "profile") as page:
        await page.navigate(console.base + f"/console/jobs/{job.id}")
        await page.wait_for(
            "[...document.images].length > 0 && [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )
        shots = await page.evaluate(
            "[...document.querySelectorAll('figure.shot')].map(f => [f.querySelector('img').naturalWidth,"
            " f.querySelector('img').naturalHeight, f.querySelector('.t').innerText])"
        )
        assert len(shots) == 10
        assert [s[:2] for s in shots] == [[640, 360]] * 10
        assert [s[2] for s in shots] == [f"{img.time:,.1f} ms" for img in job.images]
        sheets = await page.evaluate(
            "[...document.querySelectorAll('figure.sprite img')].map(i => [i.naturalWidth, i.naturalHeight])"
        )
        assert sheets == [[s.width, s.height] for s in job.sprites] and len(sheets) == 2
        facts = await page.evaluate("document.querySelector('dl.facts').innerText")
        assert "Success" in facts and "board/in.vtt" in facts and "10/10 images" in facts
        await page.screenshot(ARTIFACTS / "console-job.png")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _cell_of(sheet: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    x, y, w, h = box
    return sheet.crop((x, y, x + w, y + h)).convert("RGB")


async def test_storyboard_player_previews_vtt_thumbnails(console: Console, tmp_path: Path) -> None:
    job = console.job
    vtt = (console.data_dir / "media" / job.web_vtt_object).read_text()
    cues = re.findall(r"([\d:.]+) --> ([\d:.]+)\n(\S+)#xywh=(\d+),(\d+),(\d+),(\d+)", vtt)
    assert len(cues) == 10
    async with browser(tmp_path / "profile") as page:
        await page.navigate(console.base + f"/console/jobs/{job.id}")
        assert await page.wait_for("document.getElementById('scrub').dataset.cues") == "10"
        # The video's metadata arrives through the signed media route.
        duration = await page.wait_for("document.getElementById('video').duration")
        assert duration == pytest.approx(10.0, abs=0.1)
        await page.evaluate("document.getElementById('player').scrollIntoView()")
        rect = await page.evaluate(
            "(() => { const r = document.getElementById('scrub').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        left, top, width, height = rect
        # Hover at 7.5 s: the cue 7-8 s, the second cell of the second sheet.
        await page.mouse("mouseMoved", left + width * 0.75, top + height / 2)
        await page.wait_for("!document.getElementById('preview').hidden")
        cue_index = int(await page.evaluate("document.getElementById('preview').dataset.cue"))
        assert cue_index == 7
        name, x, y, w, h = cues[7][2], *(int(v) for v in cues[7][3:])
        assert await page.evaluate("document.getElementById('preview').dataset.target") == name
        assert await page.evaluate("document.getElementById('preview-time').innerText") == "0:07"
        box = await page.evaluate(
            "(() => { const r = document.getElementById('preview-image').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        assert box[2:] == [w, h]
        # Screenshot clips are in page coordinates; the rectangles above are in the viewport's.
        scroll = await page.evaluate("[window.scrollX, window.scrollY]")
        await page.wait_for("document.getElementById('preview-image').style.backgroundImage.includes('/console/media')")
        await page.evaluate("new Promise(r => setTimeout(r, 300))", await_promise=True)  # the sheet paints
        shot = await page.screenshot(
            ARTIFACTS / "console-player-preview.png",
            clip={"x": box[0] + scroll[0], "y": box[1] + scroll[1], "width": w, "height": h},
        )
        sheet = Image.open(console.data_dir / "media" / "board" / name)
        expected = _cell_of(sheet, (x, y, w, h))
        got = Image.open(io.BytesIO(shot)).convert("RGB").resize(expected.size)
        diff = sum(ImageStat.Stat(ImageChops.difference(got, expected)).mean) / 3
        assert diff < 6.0, f"preview differs from the sprite cell by {diff:.1f} on average"
        player = await page.evaluate(
            "(() => { const r = document.getElementById('player').getBoundingClientRect();"
            " const p = document.querySelector('#player .player').getBoundingClientRect();"
            " return {x: p.left + scrollX, y: r.top + scrollY, width: p.width, height: r.height}; })()"
        )
        await page.screenshot(ARTIFACTS / "console-player.png", clip=player)
        # A click seeks the video there (the media route answers Range requests).
        await page.mouse("mousePressed", left + width * 0.5, top + height / 2)
        await page.mouse("mouseReleased", left + width * 0.5, top + height / 2)
        current = await page.wait_for("document.getElementById('video').currentTime")
        assert current == pytest.approx(5.0, abs=0.2)


async def test_media_urls_are_signed_expiring_and_serve_ranges(console: Console) -> None:
    job = console.job
    async with aiohttp.ClientSession() as http:
        async with http.get(console.base + f"/console/jobs/{job.id}") as response:
            html = await response.text()
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
        video = re.search(r'<video id="video" preload="metadata" src="([^"]+)"', html)
        assert video
        url = console.base + video.group(1).replace("&amp;", "&")
        size = (console.data_dir / "media" / "clips" / "in.mp4").stat().st_size
        async with http.get(url, headers={"Range": "bytes=100-199"}) as response:
            assert response.status == 206
            body = await response.read()
        assert body == (console.data_dir / "media" / "clips" / "in.mp4").read_bytes()[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{size}"
        query = parse_qs(urlparse(url).query)
        assert int(query["e"][0]) - time.time() == pytest.approx(600, abs=30)
        tampered = url.replace("clips%2Fin.mp4", "clips%2Fother.mp4")
        async with http.get(tampered) as response:
            assert response.status == 403 and "signature" in await response.text()
        expired = re.sub(r"e=\d+", "e=1000", url)
        async with http.get(expired) as response:
            assert response.status == 403


async def test_console_needs_an_access_key_when_principals_are_configured(tmp_path: Path) -> None:
    secret = "console-secret"
    principals = (
        PrincipalConfig(
            name="viewer",
            access_key_id="VIEWER",
            access_key_hash=derive_key(secret),
            statements=(StatementConfig(actions=("mts:QuerySnapshotJobList",), resources=("*",)),),
        ),
        PrincipalConfig(
            name="submitter",
            access_key_id="SUBMITTER",
            access_key_hash=derive_key(secret),
            statements=(StatementConfig(actions=("mts:SubmitSnapshotJob",), resources=("*",)),),
        ),
    )
    settings = load(env={}, listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=tmp_path, principals=principals)
    app = App(settings)
    await app.start()
    base = f"http://127.0.0.1:{app.http_port}/console/jobs"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base) as response:
                assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
            async with http.get(base, headers=basic("VIEWER", "wrong")) as response:
                assert response.status == 401
            async with http.get(base, headers=basic("SUBMITTER", secret)) as response:
                assert response.status == 403 and "mts:QuerySnapshotJobList" in await response.text()
            async with http.get(base, headers=basic("VIEWER", secret)) as response:
                assert response.status == 200 and "<h1>Jobs</h1>" in await response.text()
            # /metrics stays open for the scraper.
            async with http.get(f"http://127.0.0.1:{app.http_port}/metrics") as response:
                assert response.status == 200
        async with browser(tmp_path / "profile", basic("VIEWER", secret)) as page:
            await page.navigate(f"http://127.0.0.1:{app.http_port}/console/pipelines")
            assert await page.evaluate("document.querySelector('h1').innerText") == "Pipelines"
    finally:
        await app.stop(0.5)
