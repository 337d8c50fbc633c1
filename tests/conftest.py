"""Fixtures: media generated with ffmpeg, and a real server on 127.0.0.1:0 over gRPC."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from mps_snapshot_client import SnapshotClient
from mps_snapshot_server.app import App
from mps_snapshot_server.config import load
from tests.helpers.media import Video, make_video


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.fail("ffmpeg and ffprobe must be installed (apt-get install ffmpeg)")
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def videos(media_dir: Path) -> dict[str, Video]:
    """Small, fast-to-decode videos; every frame of testsrc2 differs from its neighbours."""
    return {
        "main": make_video(media_dir / "main.mp4", size="640x360", rate="25", seconds=10, gop=50),
        "audio": make_video(media_dir / "audio.mkv", size="320x240", rate="30", seconds=6, gop=30, audio=True),
        "odd_rate": make_video(media_dir / "odd.mp4", size="426x240", rate="24000/1001", seconds=6, gop=48),
        "hd": make_video(media_dir / "hd.mp4", size="1280x720", rate="30", seconds=4, gop=60),
        "tiny": make_video(media_dir / "tiny.mp4", size="176x144", rate="15", seconds=4, gop=15),
        "anamorphic": make_video(
            media_dir / "anamorphic.mp4", size="480x360", rate="25", seconds=3, gop=25, extra=("-vf", "setsar=4/3")
        ),
    }


@pytest.fixture(scope="session")
def slow_video(media_dir: Path) -> Video:
    """Long GOPs at 720p: every exact frame costs a real decode, so jobs last seconds."""
    return make_video(media_dir / "slow.mp4", size="1280x720", rate="30", seconds=30, gop=300)


@pytest.fixture(scope="session")
def heavy(media_dir: Path) -> Path:
    """Six seconds of noisy 720p in one GOP: a frame near the end costs ~180 costly decoded frames."""
    out = media_dir / "heavy.mp4"
    if not out.exists():
        from tests.helpers.media import ffmpeg

        ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30,noise=alls=30:allf=t",
            "-t",
            "6",
            *("-c:v", "libx264", "-preset", "ultrafast", "-crf", "24", "-g", "180", "-keyint_min", "180"),
            *("-pix_fmt", "yuv420p"),
            str(out),
        )
    return out


@pytest.fixture(scope="session")
def black_start(media_dir: Path) -> Path:
    """Two seconds of black, then picture: for the black-frame filter."""
    from tests.helpers.media import ffmpeg

    out = media_dir / "black_start.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=black:size=320x240:rate=25:duration=2",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25:duration=6",
        "-filter_complex",
        "[0][1]concat=n=2:v=1",
        "-c:v",
        "libx264",
        "-g",
        "25",
        "-pix_fmt",
        "yuv420p",
        str(out),
    )
    return out


@pytest.fixture(scope="session")
def rotated(media_dir: Path, videos: dict[str, Video]) -> Path:
    """The main video with a 90-degree display rotation flag (a phone's portrait video)."""
    from tests.helpers.media import ffmpeg

    out = media_dir / "rotated.mp4"
    ffmpeg("-i", str(videos["tiny"].path), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest_asyncio.fixture(scope="session")
async def app(data_dir: Path) -> AsyncIterator[App]:
    settings = load(env={}, listen="127.0.0.1:0", data_dir=data_dir, shutdown_grace_s=1.0, notify_backoff_s=0.05)
    application = App(settings)
    await application.start()
    yield application
    await application.stop(0.5)


@pytest_asyncio.fixture(scope="session")
async def client(app: App) -> AsyncIterator[SnapshotClient]:
    async with SnapshotClient(f"127.0.0.1:{app.port}") as c:
        yield c


@pytest.fixture
def bucket(data_dir: Path) -> Iterator[str]:
    """A fresh bucket (folder) for one test's inputs and outputs."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    (data_dir / name).mkdir()
    yield name


def put(data_dir: Path, bucket: str, key: str, source: Path) -> None:
    """Place a file in the embedded store the way `mps-snapshot put` does."""
    dest = data_dir / bucket / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
