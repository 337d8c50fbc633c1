"""Smart picks (beyond MPS): a snapshot whose frame is black, nearly uniform or blurred is
replaced by the best frame within a window around its time.

The measures come from the decode itself (ffmpeg's signalstats, blurdetect and entropy on
frames scaled to 160 px wide), never from Python over full frames. They are read from the
metadata filter's file (never from the log, whose middle is cut on long windows), and a
count that differs from ffmpeg's count of frames out of the graph fails the request. Per frame:

- black: mean luma (YAVG, on the 16-235 video scale) below 32;
- uniform: the spread between the 10th and 90th luma percentiles (YHIGH - YLOW) below 10;
- blurred: blurdetect's value above ``max_blur`` (or none: a flat frame has no edges).

The best frame is the least blurred one that is neither black nor uniform (the nearest to
the requested time on a tie); it is then captured exactly as any snapshot. When no frame
in the window is better, the original stays.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from mps_snapshot_server.domain import frames
from mps_snapshot_server.domain.errors import ServiceFault
from mps_snapshot_server.media import argv, process
from mps_snapshot_server.media.argv import Source
from mps_snapshot_server.media.capture import run_ffmpeg
from mps_snapshot_server.media.probe import MediaInfo

DEFAULT_WINDOW_MS = 2000
DEFAULT_MAX_BLUR = 8.0
BLACK_YAVG = 32.0
UNIFORM_SPREAD = 10.0

# The metadata filter's lines, in its file (bare) or in the log (after "[Parsed_... @ 0x..] ").
_FRAME = re.compile(r"(?:^|\] )frame:\d+\s+pts:\S+\s+pts_time:(\S+)")
_VALUE = re.compile(r"(?:^|\] )(lavfi\.[\w.]+)=(\S+)")
_PROGRESS_FRAME = re.compile(r"^frame=(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Measure:
    time_s: float  # from the presentation start
    yavg: float
    spread: float
    blur: float  # nan: no edges at all
    entropy: float

    def flaw(self, max_blur: float) -> str:
        """Why this frame is a poor thumbnail ("" if it is not)."""
        if self.yavg < BLACK_YAVG:
            return "black"
        if self.spread < UNIFORM_SPREAD:
            return "uniform"
        if math.isnan(self.blur) or self.blur > max_blur:
            return "blurred"
        return ""


def parse_measures(text: str, origin_s: float) -> list[Measure]:
    out: list[Measure] = []
    time: float | None = None
    values: dict[str, float] = {}

    def flush() -> None:
        if time is not None:
            out.append(
                Measure(
                    time_s=time - origin_s,
                    yavg=values.get("lavfi.signalstats.YAVG", math.nan),
                    spread=values.get("lavfi.signalstats.YHIGH", math.nan)
                    - values.get("lavfi.signalstats.YLOW", math.nan),
                    blur=values.get("lavfi.blur", math.nan),
                    entropy=values.get("lavfi.entropy.normalized_entropy.normal.Y", math.nan),
                )
            )

    for line in text.splitlines():
        if m := _FRAME.search(line):
            flush()
            time, values = float(m.group(1)), {}
        elif (m := _VALUE.search(line)) and time is not None:
            try:
                values[m.group(1)] = float(m.group(2))
            except ValueError:
                values[m.group(1)] = math.nan
    flush()
    return out


@dataclass(frozen=True)
class Pick:
    """The frame to use instead of the one shown at the time (None: keep it) and why."""

    time_s: float | None
    reason: str


def choose(measures: list[Measure], time_s: float, max_blur: float) -> Pick:
    """Pure: is the frame shown at ``time_s`` flawed, and which measured frame is best."""
    if not measures:
        return Pick(None, "")
    ordered = sorted(measures, key=lambda m: m.time_s)
    shown = [m for m in ordered if m.time_s <= time_s + frames.TOL]
    current = shown[-1] if shown else ordered[0]
    reason = current.flaw(max_blur)
    if not reason:
        return Pick(None, "")
    good = [m for m in ordered if not m.flaw(max_blur)]
    if not good:
        return Pick(None, "")
    best = min(good, key=lambda m: (m.blur, abs(m.time_s - time_s)))
    return Pick(best.time_s, reason)


async def measure(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    *,
    time_s: float,
    window_s: float,
    workdir: Path,
    limits: process.Limits,
) -> list[Measure]:
    origin = info.start_time_s
    start = max(0.0, time_s - window_s / 2)
    end = min(info.duration_s, time_s + window_s / 2)
    seek = max(0.0, start - info.seek_lead_s)
    # One pair of files per measured time (a job may measure several in one work folder).
    stem = f"measure-{round(time_s * 1e6)}"
    measures_file, progress_file = workdir / f"{stem}.txt", workdir / f"{stem}.progress"
    for stale in (measures_file, progress_file):
        stale.unlink(missing_ok=True)
    command = argv.measure_argv(
        ffmpeg_bin,
        src,
        seek_s=seek,
        window=(origin + start, origin + end),
        measures_file=measures_file.name,
        progress_file=progress_file.name,
    )
    await run_ffmpeg(command, limits, workdir)
    try:
        text = measures_file.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    measures = parse_measures(text, origin)
    try:
        counts = _PROGRESS_FRAME.findall(progress_file.read_text(errors="replace"))
    except FileNotFoundError:
        counts = []
    decoded = int(counts[-1]) if counts else 0
    if len(measures) != decoded:
        # Never judge on part of the window: a lost measure would make choose() judge
        # another frame than the one shown at the time.
        raise ServiceFault(
            f"Smart pick measured {len(measures)} of the {decoded} frames decoded in its window; "
            "the measures are incomplete."
        )
    return measures
