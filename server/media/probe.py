"""Probing an input with ffprobe: duration, display size, frame rate, rotation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from server.domain.errors import ResourceContentBad
from server.media import process
from server.media.hardening import input_options


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
    start_time_s: float = 0.0
    sample_aspect: Fraction = Fraction(1)

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
        expressions in snapshot._scaled (which truncate after adding 0.5)."""
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


def probe_argv(ffprobe: str, url: str, protocols: tuple[str, ...]) -> list[str]:
    return [
        ffprobe,
        "-hide_banner",
        "-v",
        "error",
        *input_options(protocols),
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        "-i",
        url,
    ]


def _fraction(text: Any) -> Fraction:
    try:
        value = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return Fraction(0)
    return value if value > 0 else Fraction(0)


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


def parse_probe(output: bytes) -> MediaInfo:
    """Turn ffprobe's JSON into MediaInfo, or say exactly why the file is unusable."""
    try:
        doc = json.loads(output or b"{}")
    except ValueError:
        raise ResourceContentBad("The input could not be probed: ffprobe gave no readable result.") from None
    streams = doc.get("streams") or []
    fmt = doc.get("format") or {}
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        raise ResourceContentBad("The input has no video stream; submit a video file.")
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise ResourceContentBad("The input's video stream has no picture size; the file may be damaged.")
    duration = _float(video.get("duration"))
    if not math.isfinite(duration) or duration <= 0:
        duration = _float(fmt.get("duration"))
    if not math.isfinite(duration) or duration <= 0:
        raise ResourceContentBad("The input has no known duration; the file may be truncated or damaged.")
    rate = _fraction(video.get("avg_frame_rate")) or _fraction(video.get("r_frame_rate"))
    if rate > 1000:
        rate = Fraction(0)
    return MediaInfo(
        duration_s=duration,
        width=width,
        height=height,
        rotation=_rotation(video),
        frame_rate=rate,
        stream_count=len(streams),
        format_name=str(fmt.get("format_name", "")),
        video_codec=str(video.get("codec_name", "")),
        start_time_s=start if math.isfinite(start := _float(fmt.get("start_time"))) else 0.0,
        sample_aspect=_fraction(str(video.get("sample_aspect_ratio", "1:1")).replace(":", "/")) or Fraction(1),
    )


async def probe(ffprobe: str, url: str, protocols: tuple[str, ...], limits: process.Limits) -> MediaInfo:
    try:
        result = await process.run(probe_argv(ffprobe, url, protocols), limits=limits)
    except process.ProcessTimeout:
        raise ResourceContentBad(
            f"Probing the input took longer than {limits.wall_seconds:g} s; the file may be damaged or unreadable."
        ) from None
    if result.returncode != 0:
        reason = _first_error(result.stderr)
        raise ResourceContentBad(f"The input is not a readable video ({reason}).")
    return parse_probe(result.stdout)


def _first_error(stderr: str) -> str:
    # ffprobe's messages name the file by its URL; keep only the part after the last
    # ": " so no internal path or presigned URL reaches the caller.
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "unknown format"
    text = lines[-1].rsplit(": ", 1)[-1]
    return text[:200]
