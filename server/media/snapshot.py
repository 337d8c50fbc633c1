"""Taking one snapshot with ffmpeg: the exact frame shown at a time, or the nearest keyframe.

The argv builders are pure (unit-tested without ffmpeg); ``capture_exact`` and
``capture_keyframe`` run them. ffmpeg's accurate seek returns the first frame at or
after the seek point, so the exact frame *shown* at T (the last frame with a timestamp
<= T) is found by seeking to just after T minus one frame duration.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
from PIL import Image

from server.domain.errors import ResourceContentBad
from server.media import process
from server.media.hardening import input_options
from server.media.probe import MediaInfo, scrub

_TIME_BASE = re.compile(r"Parsed_showinfo.*?config in time_base:\s*(\d+)/(\d+)")
_PTS = re.compile(r"Parsed_showinfo.*?\bn:\s*\d+\s+pts:\s*(-?\d+)")
# The mov/mp4 demuxer's complaint when a sample's data lies past the end of the file.
_PARTIAL = ": partial file"
# Half a millisecond: below any real frame interval, above timestamp rounding.
_EPS = 0.0005
JPEG_QUALITY = 2
#: Set (for the current task) when frames are only intermediate sprite cells, decoded
#: straight to cell size: there, 4:2:0 chroma at a few dozen pixels would visibly smear
#: colours, so those JPEGs keep full chroma. Published snapshots stay 4:2:0.
full_chroma: contextvars.ContextVar[bool] = contextvars.ContextVar("full_chroma", default=False)


def pixel_format_options() -> list[str]:
    return ["-pix_fmt", "yuvj444p"] if full_chroma.get() else []


#: Lanczos: thumbnails and sprite cells are often a tenth of the source's size, where
#: swscale's default bicubic aliases visibly.
SCALE_FLAGS = "lanczos"


@dataclass(frozen=True)
class Frame:
    """A JPEG written by ffmpeg and the media time (seconds) of the frame in it."""

    path: Path
    time_s: float
    width: int
    height: int


@dataclass(frozen=True)
class Source:
    url: str
    protocols: tuple[str, ...]


def _scaled(stream: Any, width: int | None, height: int | None) -> Any:
    # Sizes follow the display aspect ratio (dar = iw/ih*sar), after ffmpeg's
    # auto-rotation; "+0.5" because scale truncates its expressions.
    if width and height:
        stream = stream.filter("scale", w=width, h=height, flags=SCALE_FLAGS)
    elif width:
        stream = stream.filter("scale", w=width, h=f"{width}/dar+0.5", flags=SCALE_FLAGS)
    elif height:
        stream = stream.filter("scale", w=f"{height}*dar+0.5", h=height, flags=SCALE_FLAGS)
    else:
        stream = stream.filter("scale", w="iw*sar+0.5", h="ih", flags=SCALE_FLAGS)
    return stream.filter("setsar", "1").filter("showinfo")


_GLOBAL = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"]


def _compile(node: Any, ffmpeg_bin: str) -> list[str]:
    # ffmpeg-python appends global options at the end; ffmpeg wants them first.
    args = [str(a) for a in node.compile(cmd=ffmpeg_bin)]
    return [args[0], *_GLOBAL, *args[1:]]


def exact_argv(
    ffmpeg_bin: str,
    src: Source,
    *,
    start_s: float,
    window_s: float | None,
    width: int | None,
    height: int | None,
    out: Path,
    start_offset_s: float = 0.0,
    seek_s: float | None = None,
) -> list[str]:
    """First frame at or after ``start_s``; with ``window_s``, the last frame before start+window.

    The input seeks to the keyframe at or before ``seek_s`` (default ``start_s``) and a trim
    drops the frames before ``start_s``. Seeking to T rather than to ``start_s`` matters when
    ``start_s`` sits just before a keyframe at T: ffmpeg would otherwise decode the whole
    previous group of pictures to reach a frame it then throws away.
    """
    seek = start_s if seek_s is None else seek_s
    stream = ffmpeg.input(src.url, ss=f"{seek:.6f}", noaccurate_seek=None, copyts=None, **_input_kwargs(src))["v:0"]
    # With -copyts, trim sees the file's own timestamps.
    if window_s is None:
        stream = stream.filter("trim", start=f"{start_offset_s + start_s:.6f}")
    else:
        stream = stream.filter(
            "trim", start=f"{start_offset_s + start_s:.6f}", end=f"{start_offset_s + start_s + window_s:.6f}"
        )
    stream = _scaled(stream, width, height)
    opts: dict[str, object] = {"f": "image2", "update": 1, "q:v": JPEG_QUALITY, "an": None, "sn": None}
    if full_chroma.get():
        opts["pix_fmt"] = "yuvj444p"
    if window_s is None:
        opts["frames:v"] = 1
    return _compile(stream.output(str(out), **opts), ffmpeg_bin)


def keyframe_argv(
    ffmpeg_bin: str,
    src: Source,
    *,
    time_s: float,
    width: int | None,
    height: int | None,
    out_pattern: Path,
) -> list[str]:
    """The keyframe at or before ``time_s`` and the one after it, as two images."""
    kwargs = {
        "skip_frame": "nokey",
        "noaccurate_seek": None,
        "copyts": None,
        "ss": f"{time_s:.6f}",
        **_input_kwargs(src),
    }
    stream = _scaled(ffmpeg.input(src.url, **kwargs)["v:0"], width, height)
    opts: dict[str, object] = {
        "f": "image2",
        "fps_mode": "passthrough",
        "frames:v": 2,
        "q:v": JPEG_QUALITY,
        "an": None,
        "sn": None,
    }
    if full_chroma.get():
        opts["pix_fmt"] = "yuvj444p"
    return _compile(stream.output(str(out_pattern), **opts), ffmpeg_bin)


def _input_kwargs(src: Source) -> dict[str, object]:
    opts = input_options(src.protocols)
    return {opts[i].lstrip("-"): opts[i + 1] for i in range(0, len(opts), 2)}


def frame_times(stderr: str) -> list[float]:
    """The timestamp (seconds) of every frame showinfo saw, in order.

    Computed from the integer pts and the time base: showinfo's pts_time has only six
    significant digits, which is 10 ms at 1000 s.
    """
    tb = _TIME_BASE.search(stderr)
    if tb is None or int(tb.group(2)) == 0:
        return []
    num, den = int(tb.group(1)), int(tb.group(2))
    return [int(m.group(1)) * num / den for m in _PTS.finditer(stderr)]


def check_jpeg(path: Path, max_bytes: int) -> tuple[int, int]:
    """Refuse to publish anything that is not a whole, decodable JPEG of sane size."""
    if not path.exists() or path.stat().st_size == 0:
        raise ResourceContentBad("No frame could be decoded at the requested time; the file may be damaged.")
    if path.stat().st_size > max_bytes:
        raise ResourceContentBad(f"The snapshot is larger than {max_bytes} bytes; request a smaller Width/Height.")
    try:
        with Image.open(path) as img:
            if img.format != "JPEG":
                raise ResourceContentBad("The snapshot is not a JPEG image.")
            size = img.size
            # Decoding at 1/8 scale still reads every entropy-coded block (so a cut or
            # corrupt file fails) for a fraction of a full decode: ~0.7 ms instead of ~6 ms
            # at 1080p.
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            return size
    except ResourceContentBad:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        # Pillow's "cannot identify", "image file is truncated", broken markers...
        raise ResourceContentBad(
            "The snapshot ffmpeg wrote is not a whole JPEG image; the input may be damaged."
        ) from None


async def _run(argv: list[str], limits: process.Limits, cwd: Path) -> process.Result:
    try:
        result = await process.run(argv, limits=limits, cwd=str(cwd))
    except process.ProcessTimeout:
        # A source that stalls or a file that decodes forever: the group is already killed.
        raise ResourceContentBad(
            f"Decoding the input took longer than {limits.wall_seconds:g} s and was stopped; "
            "the file may be damaged or unreadable."
        ) from None
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "Parsed_showinfo" not in ln]
        detail = scrub(lines[-1].rsplit(": ", 1)[-1])[:200] if lines else ""
        detail = detail or f"exit code {result.returncode}"
        raise ResourceContentBad(f"The input could not be decoded ({detail}).")
    return result


async def capture_exact(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    *,
    time_s: float,
    width: int | None,
    height: int | None,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> Frame:
    """The frame displayed at ``time_s`` (the last frame whose timestamp is <= time_s)."""
    out = workdir / "exact.jpg"
    fd = info.frame_duration_s
    base = info.start_time_s

    truncated = False

    async def attempt(start: float, window: float | None) -> list[float]:
        nonlocal truncated
        out.unlink(missing_ok=True)
        argv = exact_argv(
            ffmpeg_bin,
            src,
            start_s=start,
            window_s=window,
            width=width,
            height=height,
            out=out,
            start_offset_s=base,
            seek_s=time_s,
        )
        result = await _run(argv, limits, workdir)
        truncated = truncated or _PARTIAL in result.stderr
        return [t - base for t in frame_times(result.stderr)] if out.exists() else []

    # One nominal frame interval ending at T holds exactly the frame shown at T.
    times = await attempt(max(0.0, time_s - fd + min(_EPS, fd / 4)), None)
    if times and times[0] <= time_s + _EPS:
        chosen = times[0]
    else:
        # Variable frame rate: the frame shown at T began more than one nominal
        # interval before T. Decode a wider window ending at T and keep its last frame.
        start = max(0.0, time_s - max(2.0, 4 * fd))
        times = await attempt(start, time_s - start + _EPS)
        if truncated:
            # Not a variable frame rate: the index lists frames the file has no data for
            # (cut short), and the last frame decoded would be an earlier one.
            raise ResourceContentBad(
                "The input is truncated: the data of the frame at the requested time is missing from the file."
            )
        if not times:
            # T precedes the first frame: the first frame is what a player shows.
            times = await attempt(time_s, None)
        if not times:
            if truncated:
                raise ResourceContentBad(
                    "The input is truncated: the data of the frame at the requested time is missing from the file."
                )
            raise ResourceContentBad(
                "No frame could be decoded at the requested time: the file may be truncated (its index lists "
                "frames it has no data for) or damaged."
            )
        chosen = times[-1] if len(times) > 1 or times[0] <= time_s + _EPS else times[0]
    w, h = check_jpeg(out, max_bytes)
    return Frame(out, chosen, w, h)


async def capture_keyframe(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    *,
    time_s: float,
    width: int | None,
    height: int | None,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> Frame:
    """The keyframe nearest ``time_s`` (ties go to the earlier one); past the end, the last."""
    pattern = workdir / "key%d.jpg"
    result = await _run(
        keyframe_argv(ffmpeg_bin, src, time_s=time_s, width=width, height=height, out_pattern=pattern),
        limits,
        workdir,
    )
    times = [t - info.start_time_s for t in frame_times(result.stderr)[:2]]
    files = [workdir / f"key{i + 1}.jpg" for i in range(len(times))]
    candidates = [(abs(t - time_s), i) for i, t in enumerate(times) if files[i].exists()]
    if not candidates:
        raise ResourceContentBad("No keyframe could be decoded from the input; the file may be damaged.")
    _, best = min(candidates)
    w, h = check_jpeg(files[best], max_bytes)
    return Frame(files[best], times[best], w, h)


_BLACK = re.compile(r"Parsed_blackframe.*?\bpblack:(\d+)\s+pts:(-?\d+)\s+t:(-?[0-9.]+)")


def black_scan_argv(ffmpeg_bin: str, src: Source, *, window_s: float, pixel_threshold: int) -> list[str]:
    """Decode the first ``window_s`` seconds small and report every frame's share of black pixels."""
    stream = ffmpeg.input(src.url, t=f"{window_s:.3f}", **_input_kwargs(src))["v:0"]
    # amount=0 makes blackframe report every frame, black or not, with its pblack.
    stream = stream.filter("scale", w=160, h=-2).filter("blackframe", amount=0, threshold=pixel_threshold)
    return _compile(stream.output("-", f="null"), ffmpeg_bin)


async def first_non_black(
    ffmpeg_bin: str,
    src: Source,
    *,
    window_s: float,
    level: int,
    pixel_threshold: int,
    workdir: Path,
    limits: process.Limits,
) -> float | None:
    """Media time (s) of the first frame whose black share is below ``level`` percent."""
    result = await _run(
        black_scan_argv(ffmpeg_bin, src, window_s=window_s, pixel_threshold=pixel_threshold), limits, workdir
    )
    for match in _BLACK.finditer(result.stderr):
        if int(match.group(1)) < level:
            return float(match.group(3))
    return None
