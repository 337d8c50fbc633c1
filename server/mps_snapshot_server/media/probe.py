"""Probing an input with ffprobe: duration, display size, frame rate, rotation.

The probe is also the gate for hostile inputs: a file without a video stream, with more
streams, pixels or seconds than the server accepts, or one ffprobe cannot read, ends here
with ``ResourceContentBad`` before any ffmpeg runs. Messages name the limit and the value
found, never a server path or URL.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from mps_snapshot_server.domain.errors import ResourceContentBad
from mps_snapshot_server.media import process
from mps_snapshot_server.media.argv import key_index_argv, keyframes_argv, packets_argv, probe_argv
from mps_snapshot_server.media.hardening import MAX_PIXELS


@dataclass(frozen=True)
class ProbeLimits:
    """What the server accepts from an input (settings max_input_streams, max_input_pixels,
    max_duration_s). ffmpeg's own ``-max_pixels`` (hardening.MAX_PIXELS) stays the ceiling."""

    max_streams: int
    max_pixels: int
    #: 0: no limit.
    max_duration_s: float

    @property
    def pixels(self) -> int:
        return min(self.max_pixels, MAX_PIXELS)


@dataclass(frozen=True)
class MediaInfo:
    duration_s: float
    width: int
    height: int
    rotation: int
    frame_rate: Fraction
    stream_count: int
    format_name: str
    video_codec: str
    #: The presentation start (the container's start_time): the origin of every time.
    start_time_s: float = 0.0
    sample_aspect: Fraction = Fraction(1)
    #: One tick of the video stream's clock, in seconds (1/25 in an AVI, 1/1000 in Matroska).
    tick_s: float = 1e-6
    #: The stream's timestamps are not evenly spaced (its average rate differs from its
    #: base rate: dropped frames, phone recordings): exact windows are widened.
    variable_rate: bool = False
    #: The video's colour tags (ffprobe's names): "smpte2084" (PQ) or "arib-std-b67"
    #: (HLG) transfer means HDR (media.hdr).
    color_transfer: str = ""
    color_primaries: str = ""
    color_space: str = ""

    @property
    def seek_lead_s(self) -> float:
        """How far before T a seek starts. MPEG program and transport streams have no index:
        a seek there lands near the byte position of T, often just after it, and would have
        to be repeated from earlier; indexed containers seek exactly."""
        return 1.0 if self.format_name.split(",")[0] in ("mpegts", "mpeg") else 0.0

    @property
    def frame_duration_s(self) -> float:
        return float(1 / self.frame_rate) if self.frame_rate > 0 else 0.04

    def _oriented(self) -> tuple[int, int, Fraction]:
        """Width, height and sample aspect ratio after ffmpeg's auto-rotation (a quarter
        turn swaps the sides and inverts the sample aspect ratio, as its transpose does)."""
        if self.rotation % 180:
            return self.height, self.width, 1 / self.sample_aspect
        return self.width, self.height, self.sample_aspect

    @property
    def display_size(self) -> tuple[int, int]:
        """The size a snapshot gets with no Width/Height: what a player shows."""
        return self.output_size(None, None)

    def output_size(self, width: int | None, height: int | None) -> tuple[int, int]:
        """The snapshot size ffmpeg produces for the requested Width/Height; mirrors the
        expressions in argv.scale_chain (which truncate after adding 0.5)."""
        iw, ih, sar = self._oriented()
        dar = iw * sar / ih
        half = Fraction(1, 2)
        if width and height:
            return width, height
        if width:
            return width, int(width / dar + half)
        if height:
            return int(height * dar + half), height
        return int(iw * sar + half), ih


def _fraction(text: Any) -> Fraction:
    try:
        value = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return Fraction(0)
    return value if value > 0 else Fraction(0)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _float(text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value


def _rotation(stream: dict[str, Any]) -> int:
    values = [side["rotation"] for side in stream.get("side_data_list", []) or [] if "rotation" in side]
    rotate = (stream.get("tags") or {}).get("rotate")
    for raw in [*values, rotate]:
        value = _float(raw)
        if math.isfinite(value):
            return round(value) % 360
    return 0


# ffmpeg's image-size check, when -max_pixels refuses a frame: the size comes from the file.
_TOO_BIG = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")


def _duration(video: dict[str, Any], fmt: dict[str, Any], origin: float) -> float:
    """The end of the video stream, in seconds from the presentation start (the origin of
    every time): its start plus its duration. A video that starts after the audio ends that
    much later than its own duration says; the container's duration already counts from the
    origin. 0: unknown (no index, written to a pipe): the engine then reads it from the packets."""
    stream_start, stream_duration = _float(video.get("start_time")), _float(video.get("duration"))
    if math.isfinite(stream_duration) and stream_duration > 0:
        return stream_duration + (stream_start - origin if math.isfinite(stream_start) else 0.0)
    container = _float(fmt.get("duration"))
    return container if math.isfinite(container) and container > 0 else 0.0


def parse_probe(output: bytes, limits: ProbeLimits, stderr: str = "") -> MediaInfo:
    """Turn ffprobe's JSON into MediaInfo, or say exactly why the file is unusable.

    ``stderr`` is ffprobe's log: when ``-max_pixels`` refused the picture, ffprobe reports
    the size as 0x0 and only the log tells the real size.
    """
    try:
        doc = json.loads(output or b"{}")
    except ValueError:
        raise ResourceContentBad("The input could not be probed: ffprobe gave no readable result.") from None
    if not isinstance(doc, dict):
        raise ResourceContentBad("The input could not be probed: ffprobe gave no readable result.")
    streams = [s for s in doc.get("streams") or [] if isinstance(s, dict)]
    raw_format = doc.get("format")
    fmt: dict[str, Any] = raw_format if isinstance(raw_format, dict) else {}
    if len(streams) > limits.max_streams:
        raise ResourceContentBad(
            f"The input has {len(streams)} streams, more than the server's limit of {limits.max_streams}; "
            "submit a file with fewer audio, subtitle or attachment streams."
        )
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        raise ResourceContentBad("The input has no video stream; submit a video file.")
    width, height = _int(video.get("width")), _int(video.get("height"))
    too_big = _TOO_BIG.search(stderr)
    if (width <= 0 or height <= 0) and too_big:
        width, height = int(too_big.group(1)), int(too_big.group(2))
    if width * height > limits.pixels:
        raise ResourceContentBad(
            f"The input's video is {width}x{height} ({width * height} pixels), more than the server's "
            f"limit of {limits.pixels} pixels."
        )
    if width <= 0 or height <= 0:
        raise ResourceContentBad("The input's video stream has no picture size; the file may be damaged.")
    origin = start if math.isfinite(start := _float(fmt.get("start_time"))) else 0.0
    duration = _duration(video, fmt, origin)
    if limits.max_duration_s > 0 and duration > limits.max_duration_s:
        raise ResourceContentBad(
            f"The input is {duration:.3f} s long, more than the server's limit of {limits.max_duration_s:g} s."
        )
    average, base = _fraction(video.get("avg_frame_rate")), _fraction(video.get("r_frame_rate"))
    rate = average or base
    if rate > 1000:
        rate = Fraction(0)
    variable = rate == 0 or (average > 0 and base > 0 and abs(average - base) > base / 100)
    return MediaInfo(
        duration_s=duration,
        width=width,
        height=height,
        rotation=_rotation(video),
        frame_rate=rate,
        stream_count=len(streams),
        format_name=str(fmt.get("format_name", "")),
        video_codec=str(video.get("codec_name", "")),
        start_time_s=origin,
        sample_aspect=_fraction(str(video.get("sample_aspect_ratio", "1:1")).replace(":", "/")) or Fraction(1),
        variable_rate=variable,
        tick_s=float(_fraction(str(video.get("time_base", "")))) or 1e-6,
        color_transfer=str(video.get("color_transfer", "")),
        color_primaries=str(video.get("color_primaries", "")),
        color_space=str(video.get("color_space", "")),
    )


async def probe(
    ffprobe: str,
    url: str,
    protocols: tuple[str, ...],
    limits: process.Limits,
    checks: ProbeLimits,
    *,
    cwd: str | None = None,
) -> MediaInfo:
    """Probe ``url`` within ``limits`` (wall clock, CPU, memory) and check it against ``checks``."""
    try:
        result = await process.run(probe_argv(ffprobe, url, protocols), limits=limits, cwd=cwd)
    except process.ProcessTimeout:
        raise ResourceContentBad(
            f"Probing the input took longer than {limits.wall_seconds:g} s and was stopped; "
            "the file may be damaged or unreadable."
        ) from None
    if result.returncode != 0:
        raise ResourceContentBad(f"The input is not a readable video: {_first_error(result.stderr)}.")
    return parse_probe(result.stdout, checks, result.stderr)


def packets_end(csv: str, origin: float) -> float:
    """The display end of the last video packet (pts + duration), from the presentation start."""
    end = 0.0
    for line in csv.splitlines():
        pts_text, _, duration_text = line.partition(",")
        pts, duration = _float(pts_text), _float(duration_text)
        if math.isfinite(pts):
            end = max(end, pts + (duration if math.isfinite(duration) else 0.0))
    return max(0.0, end - origin)


async def probe_end(
    ffprobe: str, url: str, protocols: tuple[str, ...], origin: float, limits: process.Limits, *, cwd: str | None = None
) -> float:
    """Read every video packet's time to find where the video ends, for files that state no
    duration (a WebM written by a browser's MediaRecorder, Matroska or MPEG-TS written to a
    pipe). Packets are read, not decoded."""
    try:
        result = await process.run(packets_argv(ffprobe, url, protocols), limits=limits, cwd=cwd)
    except process.ProcessTimeout:
        raise ResourceContentBad(
            f"Finding the end of an input that states no duration took longer than {limits.wall_seconds:g} s."
        ) from None
    if result.returncode != 0:
        raise ResourceContentBad(f"The input is not a readable video: {_first_error(result.stderr)}.")
    end = packets_end(result.stdout.decode(errors="replace"), origin)
    if end <= 0:
        raise ResourceContentBad("The input has no video packets with times; the file may be truncated or damaged.")
    return end


def keyframe_interval(csv: str) -> float:
    """The distance between the first keyframes, or, with fewer than two in the packets
    read, the span read (a lower bound: underestimating only makes the planner seek, which
    is never much slower, whereas overestimating could make it decode far too much)."""
    keys: list[float] = []
    span = 0.0
    for line in csv.splitlines():
        time_text, _, flags = line.partition(",")
        value = _float(time_text)
        if not math.isfinite(value):
            continue
        span = max(span, value)
        if "K" in flags:
            keys.append(value)
    distinct = sorted(set(keys))
    if len(distinct) >= 2:
        return max(0.04, min(b - a for a, b in itertools.pairwise(distinct)))
    return max(1.0, span - (distinct[0] if distinct else 0.0))


async def probe_keyframes(
    ffprobe: str, url: str, protocols: tuple[str, ...], limits: process.Limits, *, cwd: str | None = None
) -> float:
    try:
        result = await process.run(keyframes_argv(ffprobe, url, protocols), limits=limits, cwd=cwd)
    except process.ProcessTimeout:
        raise ResourceContentBad(f"Reading the input's keyframes took longer than {limits.wall_seconds:g} s.") from None
    if result.returncode != 0:
        raise ResourceContentBad(f"The input is not a readable video: {_first_error(result.stderr)}.")
    return keyframe_interval(result.stdout.decode(errors="replace"))


@dataclass(frozen=True)
class KeyIndex:
    """The keyframes of the video stream: their times (seconds from the presentation start,
    ascending, distinct) and, per time, the packet's decoding timestamp (the stream's time base)."""

    times: tuple[float, ...]
    dts: dict[float, int]


def parse_key_index(csv: str, origin_s: float) -> KeyIndex:
    """The keyframe index from ffprobe's ``packet=pts,dts,flags:stream=time_base`` CSV: the
    packets the container flags as keyframes. Times are the integer pts times the exact time
    base, as showinfo computes them, so a keyframe's time here equals the time a decode logs
    for it."""
    base: Fraction | None = None
    found: dict[int, int | None] = {}
    for line in csv.splitlines():
        text = line.strip()
        if "," not in text:
            if "/" in text and (tb := _fraction(text)) > 0:
                base = tb
            continue
        parts = text.split(",")
        value, flags = parts[0], parts[-1]
        dts = parts[1] if len(parts) > 2 and parts[1].lstrip("-").isdigit() else None
        if "K" in flags and value.lstrip("-").isdigit():
            found.setdefault(int(value), None if dts is None else int(dts))
    if base is None:
        return KeyIndex((), {})
    times = {p * base.numerator / base.denominator - origin_s: d for p, d in found.items()}
    return KeyIndex(tuple(sorted(times)), {t: d for t, d in times.items() if d is not None})


async def probe_key_index(
    ffprobe: str, url: str, protocols: tuple[str, ...], limits: process.Limits, origin_s: float, *, cwd: str | None
) -> KeyIndex:
    try:
        result = await process.run(key_index_argv(ffprobe, url, protocols), limits=limits, cwd=cwd)
    except process.ProcessTimeout:
        raise ResourceContentBad(f"Reading the input's keyframes took longer than {limits.wall_seconds:g} s.") from None
    if result.returncode != 0:
        raise ResourceContentBad(f"The input is not a readable video: {_first_error(result.stderr)}.")
    return parse_key_index(result.stdout.decode(errors="replace"), origin_s)


# "[hls @ 0x55d0c5a1] Format not on whitelist '...'": the demuxer's name is a fixed word.
_FORMAT_REFUSED = re.compile(r"\[([A-Za-z0-9_,]+) @ 0x[0-9a-fA-F]+\] Format not on whitelist")
_CODEC_REFUSED = re.compile(r"Codec \(([A-Za-z0-9_]+)\) not on whitelist")
_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*")
# Anything that could be a path or URL: "scheme:...", a run starting with /, ./, ../ or ~/,
# or one with two slashes or more (but not "I/O" or "N/A").
_PATHLIKE = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*:[^\s'\"]+"
    r"|(?<![^\s'\"(\[])(?:\.{1,2}|~)?/[^\s'\"]*"
    r"|[^\s'\"]*/[^\s'\"]*/[^\s'\"]*"
)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _first_error(stderr: str) -> str:
    """Why ffprobe failed, in words safe to show the caller.

    ffprobe's messages name the file by its URL and may quote names from inside the file;
    paths, URLs and quoted strings are cut, so no internal path or presigned URL leaks.
    """
    if m := _FORMAT_REFUSED.search(stderr):
        name = m.group(1).split(",")[0]
        return (
            f"its format ({name}) is not an accepted video container; playlists, concat scripts, "
            "images and raw streams are refused"
        )
    if m := _CODEC_REFUSED.search(stderr):
        return f"it holds a stream in a codec this server does not decode ({m.group(1)})"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.lstrip().startswith("Last message")]
    if not lines:
        return "unknown format"
    # The last line is usually "URL: <error text>"; a demuxer's own line before it says more.
    reason = scrub(lines[-1].rsplit(": ", 1)[-1])
    detail = next((scrub(_CONTEXT.sub("", ln)) for ln in reversed(lines[:-1]) if _CONTEXT.match(ln)), "")
    text = f"{reason} ({detail})" if detail and detail != reason else reason
    return text[:200] or "unknown format"


def scrub(text: str) -> str:
    """ffmpeg log text without paths, URLs or quoted names, fit to show a caller."""
    text = _QUOTED.sub("'…'", text)
    text = _PATHLIKE.sub("…", text)
    return " ".join(text.split()).rstrip(".")
