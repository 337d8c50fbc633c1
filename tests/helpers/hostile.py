"""A hostile media corpus, generated at test time with Debian's ffmpeg and Python only, and a
canary HTTP listener on 127.0.0.1 that must never be contacted.

Each item is a file a caller could upload as a "video": playlists and concat scripts named
.mp4 that point at other files or URLs, damaged and empty files, decompression bombs,
files with hundreds of streams. ``build`` writes them all in about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.media import ffmpeg, make_video

#: The bucket folder a ``../`` reference from an input bucket lands in (another bucket).
SECRET_BUCKET = "secret-files"
#: The file every playlist and concat script tries to read.
LEAK = "leak.ts"


@dataclass(frozen=True)
class Item:
    """One hostile input: stored under ``key``, it must end the job with ResourceContentBad
    and a message containing ``expect``."""

    name: str
    key: str
    path: Path
    expect: str
    #: The snapshot time requested (ms).
    time_ms: int = 500
    #: "probe": refused before any ffmpeg runs; "decode": ffprobe accepts it, ffmpeg refuses it.
    stage: str = "probe"


@dataclass
class Corpus:
    root: Path
    #: A valid MPEG-TS every playlist points at (also the sibling/``../`` target).
    leak: Path
    #: A small valid video for the job that runs beside each hostile one.
    normal: Path
    items: dict[str, Item] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        self.items[item.name] = item


class Canary:
    """An HTTP listener on 127.0.0.1 that counts every connection and answers 404 (or the
    body in ``routes`` for its path).

    ffmpeg runs in its own process, so the listener (on the test's event loop) can answer
    while a job runs; a connection here means a hostile file made ffmpeg open a URL."""

    def __init__(self, routes: dict[str, bytes] | None = None) -> None:
        self.routes = routes or {}
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                request = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(request)
            path = request.split(b" ", 2)[1].decode()
            body = self.routes.get(path)
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body or b""
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def playlist(*uris: str) -> bytes:
    """An HLS media playlist whose segments are ``uris``."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    for uri in uris:
        lines += ["#EXTINF:2.0,", uri]
    return ("\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n").encode()


def ffconcat(*names: str) -> bytes:
    return ("ffconcat version 1.0\n" + "".join(f"file {n}\n" for n in names)).encode()


def png_bomb(path: Path, side: int = 16000) -> None:
    """A ``side`` x ``side`` 8-bit grey PNG of a few hundred KB (256 MB once decoded).

    The IDAT stream repeats one deflate block ended by a full flush (which resets the
    compressor's history), so making it costs one block's compression, not 256 MB of it."""
    rows = 200
    block = (b"\x00" + b"\x80" * side) * rows
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    header, body = first[:2], first[2:]
    adler = 1
    for _ in range(side // rows):
        adler = zlib.adler32(block, adler)
    idat = header + body * (side // rows) + b"\x03\x00" + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _mjpeg_claiming(path: Path, source: Path, side: int, *, container_too: bool) -> None:
    """Rewrite a 256x256 MJPEG-in-Matroska so every frame (and, with ``container_too``, the
    track header) claims ``side`` x ``side``: a decoder that believes it allocates side^2."""
    data = bytearray(source.read_bytes())
    if container_too:
        for element in (b"\xb0\x82\x01\x00", b"\xba\x82\x01\x00"):  # PixelWidth/PixelHeight = 256
            at = data.find(element)
            assert at > 0, "Matroska PixelWidth/PixelHeight not found"
            data[at + 2 : at + 4] = struct.pack(">H", side)
    frames, at = 0, 0
    while (at := data.find(b"\xff\xc0", at)) >= 0:  # JPEG SOF0: length, precision, height, width
        if struct.unpack(">HH", data[at + 5 : at + 9]) == (256, 256):
            data[at + 5 : at + 9] = struct.pack(">HH", side, side)
            frames += 1
        at += 2
    assert frames, "no JPEG frame header found"
    path.write_bytes(bytes(data))


def build(root: Path, canary_url: str) -> Corpus:
    """Write the corpus under ``root``; playlists point at ``canary_url`` and at the leak file."""
    root.mkdir(parents=True, exist_ok=True)
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    leak = outside / LEAK
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=2", "-c:v", "libx264", "-f", "mpegts", str(leak)
    )
    normal = make_video(root / "normal.mp4", size="176x144", rate="25", seconds=2, gop=25).path
    corpus = Corpus(root, leak, normal)
    files = root / "items"
    files.mkdir(exist_ok=True)

    def item(name: str, key: str, data: bytes | None, expect: str, **kw: object) -> Path:
        path = files / key
        if data is not None:
            path.write_bytes(data)
        corpus.add(Item(name=name, key=key, path=path, expect=expect, **kw))  # type: ignore[arg-type]
        return path

    hls = "format (hls)"
    item("hls-absolute", "hls-absolute.mp4", playlist(str(leak)), hls)
    item("hls-parent", "hls-parent.mp4", playlist(f"../{SECRET_BUCKET}/{LEAK}"), hls)
    item("hls-file-url", "hls-file-url.mp4", playlist("file:///etc/passwd", f"file:{leak}"), hls)
    item("hls-canary", "hls-canary.mp4", playlist(f"{canary_url}/hls.ts"), hls)
    item("hls-canary-m3u8", "playlist.m3u8", playlist(f"{canary_url}/m3u8.ts"), hls)
    concat = "format (concat)"
    item("ffconcat-sibling", "ffconcat-sibling.mp4", ffconcat(LEAK), concat)
    item("ffconcat-parent", "ffconcat-parent.mp4", ffconcat(f"../{SECRET_BUCKET}/{LEAK}", str(leak)), concat)
    item("ffconcat-canary", "ffconcat-canary.mp4", ffconcat(f"{canary_url}/concat.ts"), concat)

    item("random-bytes", "random.mp4", random.Random(20260101).randbytes(200_000), "not a readable video")
    item("zero-bytes", "empty.mp4", b"", "not a readable video")

    # moov first (faststart), then half the media data cut off: it probes as 4 s long, but
    # no frame exists at 3.5 s.
    whole = root / "faststart.mp4"
    make_video(whole, size="320x240", rate="25", seconds=4, gop=25, extra=("-movflags", "+faststart"))
    raw = whole.read_bytes()
    item(
        "truncated",
        "truncated.mp4",
        raw[: len(raw) * 2 // 5],
        "truncated",
        time_ms=3500,
        stage="decode",
    )
    # Only the first 1000 bytes: the index itself is cut.
    item("truncated-head", "truncated-head.mp4", raw[:1000], "not a readable video")
    # moov last (no faststart), cut at two thirds: the index is gone.
    tail = root / "moov-last.mp4"
    make_video(tail, size="320x240", rate="25", seconds=4, gop=25)
    raw = tail.read_bytes()
    item("no-moov", "no-moov.mp4", raw[: len(raw) * 2 // 3], "moov atom not found")

    bomb = item("png-bomb", "bomb.png", None, "format (png_pipe)")
    png_bomb(bomb)
    item("png-bomb-as-mp4", "bomb.mp4", bomb.read_bytes(), "format (png_pipe)")

    small = root / "mjpeg256.mkv"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=256x256:rate=25:duration=1", "-c:v", "mjpeg", "-f", "matroska", str(small)
    )
    # Track header and frames both say 16000x16000: refused at probe by the pixel limit.
    _mjpeg_claiming(item("huge-frames", "huge.mkv", None, "16000x16000"), small, 16000, container_too=True)
    # The header says 256x256, every frame 16000x16000: the probe believes the header, and
    # ffmpeg's -max_pixels refuses the frames (without it the decoder would allocate 256 MP).
    _mjpeg_claiming(
        item("lying-dimensions", "lying.mkv", None, "could not be decoded", stage="decode"),
        small,
        16000,
        container_too=False,
    )

    av = root / "av.mkv"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10:duration=1",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=1:sample_rate=8000",
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        "-b:a",
        "16k",
        "-shortest",
        str(av),
    )
    maps = [arg for _ in range(100) for arg in ("-map", "0:v", "-map", "0:a")]
    many = item("many-streams", "many.mkv", None, "200 streams")
    ffmpeg("-i", str(av), *maps, "-c", "copy", str(many))

    audio = item("audio-only", "audio-only.mp4", None, "no video stream")
    ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac", "-f", "mp4", str(audio))
    # 90 s of a 64x64 picture at one frame per second (the hostile server's limit is 60 s).
    long = item("too-long", "long.mp4", None, "limit of 60 s")
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=64x64:rate=1", "-t", "90", "-c:v", "libx264", "-g", "90", str(long))
    return corpus
