"""Benchmark media: made once, on demand, into bench/.media/ (gitignored).

The encodes are the ones the reference measurements used (/work/shared/reference/perf-anchors.md,
"Regenerate the media", files a and c): testsrc2 plus temporal noise, 1920x1080, 30 fps, H.264
x264 ``veryfast`` at about 6 Mbit/s, a fixed GOP (``-g N -keyint_min N -sc_threshold 0``: 60
frames = 2 s for file a, 300 frames = 10 s for file c), AAC 128k. The reference then remuxed
them with ``-movflags +faststart``; here the encode writes faststart directly (ffmpeg moves the
moov to the front after encoding: same bytes, no re-encode).

    .venv/bin/python -m bench.media            # the 10-minute files (each about 10-20 min on 2 cores)
    .venv/bin/python -m bench.media --quick    # the 60-second files (each about 1-2 min)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FFMPEG = "/usr/bin/ffmpeg"
MEDIA_DIR = Path(__file__).resolve().parent / ".media"

SRC_1080 = "testsrc2=size=1920x1080:rate=30,noise=alls=8:allf=t+u"
AUDIO = "sine=frequency=440:sample_rate=48000"
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-sc_threshold", "0"]
BITRATE = ["-b:v", "6M", "-maxrate", "8M", "-bufsize", "12M"]
AAC = ["-c:a", "aac", "-b:a", "128k"]
# The GOP-2 s rate options as before (kept for callers of this name).
RATE = [*BITRATE, "-g", "60", "-keyint_min", "60"]


@dataclass(frozen=True)
class Media:
    """One benchmark file: where it lives, how long it is and its (fixed) keyframe interval."""

    path: Path
    duration_s: float
    gop_s: float = 2.0
    fps: int = 30

    @property
    def gop_frames(self) -> int:
        return round(self.gop_s * self.fps)


FULL = Media(MEDIA_DIR / "a_1080p_gop2_faststart.mp4", 600.0)
QUICK = Media(MEDIA_DIR / "q_1080p_gop2_60s_faststart.mp4", 60.0)
# File c of the reference: the same content with a keyframe every 10 s.
FULL_GOP10 = Media(MEDIA_DIR / "c_1080p_gop10_faststart.mp4", 600.0, gop_s=10.0)
QUICK_GOP10 = Media(MEDIA_DIR / "qc_1080p_gop10_60s_faststart.mp4", 60.0, gop_s=10.0)

ALL_FULL = (FULL, FULL_GOP10)
ALL_QUICK = (QUICK, QUICK_GOP10)


def encode_argv(out: Path, duration_s: float, gop_frames: int = 60) -> list[str]:
    """The reference encode (file a, or file c with ``gop_frames`` 300), moov at the front."""
    gop = ["-g", str(gop_frames), "-keyint_min", str(gop_frames)]
    return [
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        SRC_1080,
        "-f",
        "lavfi",
        "-i",
        AUDIO,
        "-t",
        f"{duration_s:g}",
        "-map",
        "0:v",
        "-map",
        "1:a",
        *X264,
        *BITRATE,
        *gop,
        *AAC,
        "-movflags",
        "+faststart",
        str(out),
    ]


def media_argv(media: Media, out: Path | None = None) -> list[str]:
    """The encode of one benchmark file (to ``out``, default its own path)."""
    return encode_argv(media.path if out is None else out, media.duration_s, media.gop_frames)


def ensure(media: Media, *, log: bool = True) -> Path:
    """Return the file, encoding it first if it is missing. A partial file never survives."""
    if media.path.is_file() and media.path.stat().st_size > 0:
        return media.path
    media.path.parent.mkdir(parents=True, exist_ok=True)
    part = media.path.with_name(media.path.stem + ".part.mp4")
    argv = media_argv(media, part)
    if log:
        print(
            f"generating {media.path.name} ({media.duration_s:g} s of 1080p30, GOP {media.gop_s:g} s); this runs "
            f"x264 on {os.cpu_count()} cores:\n  {' '.join(argv)}",
            file=sys.stderr,
            flush=True,
        )
    started = time.monotonic()
    try:
        # Bounded: even the slowest box encodes 10 min of 1080p veryfast well inside 2 hours.
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=7200)
        part.replace(media.path)
    finally:
        part.unlink(missing_ok=True)
    took = time.monotonic() - started
    if log:
        size = media.path.stat().st_size
        print(
            f"generated {media.path} in {took:.1f} s ({media.duration_s / took:.2f}x realtime), "
            f"{size:,} bytes, {size * 8 / media.duration_s / 1e6:.2f} Mbit/s",
            file=sys.stderr,
            flush=True,
        )
    return media.path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.media", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the 60-second files")
    args = parser.parse_args(argv)
    for media in ALL_QUICK if args.quick else ALL_FULL:
        existed = media.path.is_file()
        path = ensure(media)
        if existed:
            print(f"{path} already exists ({path.stat().st_size:,} bytes); delete it to regenerate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
