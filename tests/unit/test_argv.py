"""Every ffprobe/ffmpeg argv the service builds, for inputs named by nasty object keys.

Each argv must carry -nostdin (ffmpeg), the exact protocol whitelist of its input, the
format whitelist (no playlists, concat scripts, image sequences or raw formats), the decoder
whitelist and the pixel limit before its only ``-i``, whose value is ``file:`` + the absolute
path the service made; the key appears nowhere else, so it cannot become an option, a
protocol, an image pattern or a filter. Keys are chosen by hand (hypothesis is not installed).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mps_snapshot_server.domain.errors import InvalidParameter
from mps_snapshot_server.media.argv import (
    Encoding,
    ExactPoint,
    KeyPoint,
    Source,
    black_scan_argv,
    capture_argv,
    keyframes_argv,
    packets_argv,
    pass_argv,
    probe_argv,
)
from mps_snapshot_server.media.hardening import (
    AUDIO_DECODERS,
    FORMAT_WHITELIST,
    MAX_PIXELS,
    PICTURE_DECODERS,
    SUBTITLE_DECODERS,
    VIDEO_DECODERS,
)
from mps_snapshot_server.media.probe import probe
from mps_snapshot_server.storage.local import LocalStore
from tests.helpers.media import ffmpeg_limits, make_video, probe_limits

# Demuxers that open other files or URLs, read image sequences, or take any bytes as a picture.
FORBIDDEN_DEMUXERS = {
    "hls",
    "applehttp",
    "dash",
    "concat",
    "image2",
    "image2pipe",
    "bin",
    "xbin",
    "tty",
    "rawvideo",
    "data",
    "lavfi",
    "mpjpeg",
    "gif",
    "subviewer",
    "ass",
    "srt",
    "webvtt",
    "sdp",
    "rtsp",
    "rtp",
    "libopenmpt",
}

NASTY_KEYS = [
    "plain.mp4",
    "x -f lavfi -i testsrc.mp4",
    "a/-i/b.mp4",
    "concat:a.mp4|b.mp4",
    "subfile,,start,0,end,0,,:passwd",
    "pipe:0",
    "file:etc.mp4",
    "http:x.mp4",
    "a%03d.jpg",
    "%d.mp4",
    "$(id).mp4",
    "`id`;a&b|c>d.mp4",
    "'single' \"double\".mp4",
    "[0:v]scale=1:1,movie=x[out];.mp4",
    "a,b:c=d\\e.mp4",
    "a?b#c.mp4",
    "中文/视频 1.mp4",
    "...mp4",
    "a/..b/c.mp4",
    "x" * 200 + ".mp4",
]

REFUSED_KEYS = [
    "-i",
    "-protocol_whitelist",
    "../x.mp4",
    "a/../../etc/passwd",
    "/etc/passwd",
    "http://127.0.0.1/x.mp4",
    "file:///etc/passwd",
    "a\x00b",
    "a\nb",
    "a\tb",
    "a//b",
    ".",
    "",
]


def _all_argvs(url: str, protocols: tuple[str, ...], workdir: Path) -> dict[str, list[str]]:
    src = Source(url, protocols)
    ffmpeg = "/usr/bin/ffmpeg"
    return {
        "probe": probe_argv("/usr/bin/ffprobe", url, protocols),
        "keyframes": keyframes_argv("/usr/bin/ffprobe", url, protocols),
        "packets": packets_argv("/usr/bin/ffprobe", url, protocols),
        "exact": capture_argv(ffmpeg, src, [ExactPoint(1.5, (1.46, 1.5))], Encoding(320, None), workdir),
        "exact-window": capture_argv(ffmpeg, src, [ExactPoint(0.5, (0.75, 2.75))], Encoding(None, 240), workdir),
        "keyframe": capture_argv(ffmpeg, src, [KeyPoint(3.0)], Encoding(), workdir),
        "black-scan": black_scan_argv(ffmpeg, src, window_s=5.0, pixel_threshold=32),
        "seek-batch": capture_argv(
            ffmpeg,
            src,
            [ExactPoint(t, (t - 0.04, t)) for t in (1.0, 5.0, 9.0)],
            Encoding(320, None),
            workdir,
            threads=1,
        ),
        "seek-batch-intra": capture_argv(ffmpeg, src, [KeyPoint(1.0), KeyPoint(5.0)], Encoding(), workdir, threads=1),
        "pass": pass_argv(
            ffmpeg,
            src,
            start_s=1.0,
            duration_s=2.0,
            windows=[(1.0, 1.04), (2.0, 2.04)],
            intra=False,
            enc=Encoding(None, 180),
            outdir=workdir,
        ),
        "pass-intra": pass_argv(
            ffmpeg,
            src,
            start_s=0.0,
            duration_s=10.0,
            windows=None,
            intra=True,
            enc=Encoding(64, 64, full_chroma=True),
            outdir=workdir,
        ),
    }


def _value(argv: list[str], option: str) -> str:
    assert argv.count(option) == 1, (option, argv)
    return argv[argv.index(option) + 1]


INPUT_OPTIONS = ("-protocol_whitelist", "-format_whitelist", "-codec_whitelist", "-max_pixels", "-probesize")


def check_argv(name: str, argv: list[str], url: str, protocols: tuple[str, ...]) -> None:
    """Every input (a seek batch has several) gets all the whitelists just before its -i."""
    ffmpeg = name not in ("probe", "keyframes", "packets")
    assert os.path.basename(argv[0]) == ("ffmpeg" if ffmpeg else "ffprobe")
    if ffmpeg:
        assert "-nostdin" in argv[:3]  # a global option, first
    inputs = [i for i, a in enumerate(argv) if a == "-i"]
    assert inputs and all(argv[i + 1] == url for i in inputs)
    # Nothing but the inputs carries the URL (no filter or output reading it).
    assert [a for a in argv if url in a] == [url] * len(inputs)
    previous = 0
    for at in inputs:
        segment = argv[previous:at]
        previous = at + 2
        for option in INPUT_OPTIONS:
            assert segment.count(option) == 1, (name, option, segment)
        assert _value(segment, "-protocol_whitelist") == ",".join(protocols)
        formats = _value(segment, "-format_whitelist")
        assert formats == ",".join(FORMAT_WHITELIST)
        assert not FORBIDDEN_DEMUXERS & set(formats.split(","))
        assert not any(f.endswith("_pipe") for f in formats.split(","))
        assert _value(segment, "-codec_whitelist") == ",".join(
            VIDEO_DECODERS + AUDIO_DECODERS + SUBTITLE_DECODERS + PICTURE_DECODERS
        )
        assert _value(segment, "-max_pixels") == str(MAX_PIXELS)
    if ffmpeg and name != "black-scan":  # the scan writes no file
        assert "-an" in argv and "-sn" in argv
        assert "-f" in argv[inputs[-1] :] and "image2" in argv[inputs[-1] :]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    root = tmp_path_factory.mktemp("argv-data")
    (root / "bucket").mkdir()
    return LocalStore(root)


@pytest.mark.parametrize("key", NASTY_KEYS)
def test_every_argv_is_hardened_whatever_the_key(store: LocalStore, key: str, tmp_path: Path) -> None:
    handle = asyncio.run(store.input_handle("bucket", key))
    expected_path = os.path.realpath(store.root / "bucket" / key)
    assert handle.url == "file:" + expected_path
    assert os.path.isabs(handle.url.removeprefix("file:"))
    assert handle.protocols == ("file",)
    for name, argv in _all_argvs(handle.url, handle.protocols, tmp_path).items():
        check_argv(name, argv, handle.url, handle.protocols)
        # The key is inside the input URL and nowhere else.
        assert {a for a in argv if key in a} == {handle.url}, (name, argv)


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_keys_that_could_escape_or_become_options_are_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidParameter):
        asyncio.run(store.input_handle("bucket", key))


@pytest.mark.parametrize(
    ("url", "protocols"),
    [
        ("https://s3.example.com/b/k.mp4?X-Amz-Signature=abc", ("https", "tls", "tcp")),
        ("http://127.0.0.1:9000/b/k.mp4?X-Amz-Signature=abc", ("http", "tcp")),
    ],
)
def test_remote_inputs_get_exactly_their_protocols(url: str, protocols: tuple[str, ...], tmp_path: Path) -> None:
    for name, argv in _all_argvs(url, protocols, tmp_path).items():
        check_argv(name, argv, url, protocols)
        for at, arg in enumerate(argv):
            if arg == "-protocol_whitelist":
                assert "file" not in argv[at + 1].split(",")


def test_no_user_string_reaches_a_filter() -> None:
    """The filter graph is built from validated integers only: a width is an int here."""
    src = Source("file:/data/b/k.mp4", ("file",))
    argv = capture_argv("ffmpeg", src, [ExactPoint(1.0, (0.96, 1.0))], Encoding(320, 180), Path("/w"))
    graph = _value(argv, "-filter:v")
    assert "movie" not in graph and "/" not in graph.replace("/dar", "")


KEYS_ON_DISK = [
    "concat:a.mp4|b.mp4",
    "subfile,,start,0,end,0,,:passwd",
    "pipe:0",
    "%d.mp4",
    "x -f lavfi -i testsrc.mp4",
    "$(id).mp4",
]


@pytest.mark.parametrize("key", KEYS_ON_DISK)
def test_ffprobe_reads_nasty_keys_as_plain_files(
    store: LocalStore, key: str, tmp_path: Path, tiny: Callable[[], Path]
) -> None:
    """Run for real: the object stored under the nasty key is probed as the video it is."""
    path = store.root / "bucket" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny().read_bytes())
    handle = asyncio.run(store.input_handle("bucket", key))
    info = asyncio.run(
        probe("ffprobe", handle.url, handle.protocols, ffmpeg_limits(20), probe_limits(), cwd=str(tmp_path))
    )
    assert (info.width, info.height) == (64, 48)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    made: list[Path] = []

    def get() -> Path:
        if not made:
            made.append(make_video(tmp_path_factory.mktemp("argv-media") / "t.mp4", size="64x48", seconds=1).path)
        return made[0]

    return get
