"""Test media made with ffmpeg's lavfi sources, and exact reference frames to compare with."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import io
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageChops, ImageStat, UnidentifiedImageError

from mps_snapshot_server.config import Settings
from mps_snapshot_server.media import process
from mps_snapshot_server.media.probe import ProbeLimits


@dataclass(frozen=True)
class Video:
    path: Path
    width: int
    height: int
    rate: Fraction
    duration_s: float
    gop: int

    def frame_index(self, time_s: float) -> int:
        """Index of the frame shown at ``time_s`` (the last one starting at or before it)."""
        return int(Fraction(time_s).limit_denominator(100000) * self.rate + Fraction(1, 10**6))


@functools.cache
def frame_times(video: Path) -> tuple[float, ...]:
    """Presentation time of every video frame, as ffprobe reads them from the container."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "csv=p=0",
            str(video),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(sorted(float(line.strip(",")) for line in out.split() if line.strip(",")))


def index_at(video: Path, time_s: float) -> int:
    """Index of the frame a player shows at ``time_s``: the last one starting at or before it."""
    times = frame_times(video)
    return max(0, bisect.bisect_right(times, time_s + 1e-6) - 1)


def ffmpeg(*args: str) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True
    ).stdout


def make_video(
    path: Path,
    *,
    size: str = "640x360",
    rate: str = "25",
    seconds: float = 10,
    gop: int = 50,
    audio: bool = False,
    extra: tuple[str, ...] = (),
    source: str = "testsrc2",
) -> Video:
    args = ["-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    args += [
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        *extra,
    ]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    ffmpeg(*args, str(path))
    w, h = (int(x) for x in size.split("x"))
    return Video(path, w, h, Fraction(rate), seconds, gop)


def reference_frame(video: Path, index: int, size: tuple[int, int] | None = None) -> Image.Image:
    """Frame ``index`` decoded exactly (frame-accurate select), scaled like the service scales."""
    vf = f"select=eq(n\\,{index})"
    if size is not None:
        vf += f",scale={size[0]}:{size[1]}:flags=lanczos"  # as the service scales
    png = ffmpeg("-i", str(video), "-vf", vf, "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-")
    return Image.open(io.BytesIO(png)).convert("RGB")


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0-255."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


def closest_frame(image: Image.Image, video: Path, candidates: list[int]) -> tuple[int, dict[int, float]]:
    """Which of ``candidates`` the image shows, and the difference to each."""
    diffs = {}
    for i in candidates:
        if i < 0:
            continue
        try:
            diffs[i] = mean_diff(image, reference_frame(video, i, image.size))
        except UnidentifiedImageError:  # past the last frame: ffmpeg wrote nothing
            continue
    return min(diffs, key=lambda i: diffs[i]), diffs


def ffmpeg_limits(wall_seconds: float) -> process.Limits:
    """The limits the server's default settings give one ffmpeg or ffprobe run."""
    s = Settings()
    return process.Limits(wall_seconds, cpu_seconds=s.ffmpeg_cpu_s, address_space_bytes=s.ffmpeg_memory_mb * 1024**2)


def probe_limits(**changes: int) -> ProbeLimits:
    """What the server's default settings accept at probe time, with ``changes``."""
    s = Settings()
    limits = ProbeLimits(
        max_streams=s.max_input_streams, max_pixels=s.max_input_pixels, max_duration_s=s.max_duration_s
    )
    return dataclasses.replace(limits, **changes)  # type: ignore[arg-type]
