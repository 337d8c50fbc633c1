"""Animated previews (beyond MPS): an animated WebP or GIF of a time range, as Mux's
animated thumbnails, bounded in frames (validation: at most 300) and bytes (here).

The range is clipped to the video; the result is decoded back (Pillow) before it is
published, and its frame count and play time are what the file itself says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mps_snapshot_server.domain import percent
from mps_snapshot_server.domain.errors import ResourceContentBad
from mps_snapshot_server.domain.models import AnimatedOut
from mps_snapshot_server.media import argv, process
from mps_snapshot_server.media.argv import Animation, Source
from mps_snapshot_server.media.capture import run_ffmpeg
from mps_snapshot_server.media.probe import MediaInfo

DEFAULT_DURATION_MS = 3000
DEFAULT_FPS = 10.0
DEFAULT_WIDTH = 320
DEFAULT_QUALITY = 75


@dataclass(frozen=True)
class Preview:
    path: Path
    format: str
    frame_count: int
    duration_ms: float
    width: int
    height: int
    bytes: int


def wanted_format(anim: AnimatedOut, key: str) -> str:
    """webp or gif: the request's, else the object's extension, else webp."""
    if anim.format:
        return anim.format.lower()
    return "gif" if key.lower().endswith(".gif") else "webp"


def plan(anim: AnimatedOut, info: MediaInfo, key: str, tone_map: str | None) -> Animation:
    duration_ms = info.duration_s * 1000
    start = percent.at(anim.start_percent, duration_ms) if anim.start_percent is not None else anim.start or 0
    if start >= duration_ms:
        raise ResourceContentBad(
            f"AnimatedOut.Start {start} ms is at or past the end of the video, which is {round(duration_ms)} ms "
            "long; start the preview earlier."
        )
    length = min(float(anim.duration or DEFAULT_DURATION_MS), duration_ms - start)
    fps = anim.fps or DEFAULT_FPS
    width = anim.width if anim.width or anim.height else DEFAULT_WIDTH
    return Animation(
        start_s=start / 1000,
        duration_s=length / 1000,
        fps=fps,
        size=info.output_size(width, anim.height),
        frames=max(1, math.ceil(length / 1000 * fps - 1e-9)),
        gif=wanted_format(anim, key) == "gif",
        quality=anim.quality or DEFAULT_QUALITY,
        loop=anim.loop or 0,
        tone_map=tone_map,
    )


def check(path: Path, fmt: str, max_bytes: int) -> Preview:
    """Decode the whole animation; refuse anything that is not one, or too large."""
    if not path.exists() or path.stat().st_size == 0:
        raise ResourceContentBad("No frame could be decoded in the preview's time range; the file may be damaged.")
    size = path.stat().st_size
    if size > max_bytes:
        raise ResourceContentBad(
            f"The animated preview is {size} bytes, over the limit of {max_bytes}; "
            "use a shorter Duration, a lower Fps, a smaller Width or a lower Quality."
        )
    try:
        with Image.open(path) as img:
            if img.format != fmt.upper():
                raise ResourceContentBad(f"The animated preview is not a {fmt.upper()} image.")
            frames: int = getattr(img, "n_frames", 1)  # set by the animated formats' plugins
            total = 0.0
            for n in range(frames):
                img.seek(n)
                img.load()
                total += float(img.info.get("duration", 0))
            return Preview(path, fmt, frames, total, img.size[0], img.size[1], size)
    except ResourceContentBad:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise ResourceContentBad("The animated preview ffmpeg wrote is not a whole image.") from None


async def render(
    ffmpeg_bin: str, src: Source, anim: Animation, *, workdir: Path, limits: process.Limits, max_bytes: int
) -> Preview:
    fmt = "gif" if anim.gif else "webp"
    out = workdir / f"preview.{fmt}"
    await run_ffmpeg(argv.animated_argv(ffmpeg_bin, src, anim, out), limits, workdir)
    return check(out, fmt, max_bytes)
