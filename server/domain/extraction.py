"""The extraction planner: the cheapest way to get exactly the frames a job asks for.

Pure functions of the probe (duration, frame interval, keyframe interval) and the
settings, so decisions are unit-tested and logged per job:

- **seek**: points far apart (more than about one GOP): each point is reached by a
  keyframe seek and a short decode. Several points share one ffmpeg process (one input
  per point, so process start-up is paid once per batch) and batches run in parallel on
  the cores. Batches are bounded because each open input costs 30-45 MB at 1080p.
- **pass**: points closer than about one GOP: one decode of just the needed range,
  keeping the frames shown at the points; the range is split into one chunk per core.
- intra uses the same two shapes with keyframe-only decoding.
"""

from __future__ import annotations

import enum
import itertools
import statistics
from dataclasses import dataclass

#: Seek batches hold at most this many points at 1080p (more for smaller frames).
BATCH_AT_1080P = 8
MAX_BATCH = 16
#: A pass keeps its frames with one select term per point, and ffmpeg 5.1's expression
#: parser refuses a sum of more than 100 terms ("Cannot allocate memory").
MAX_PASS_POINTS = 90
#: A pass is chosen when points are closer than this many GOPs.
DENSE_GOPS = 1.0


class Mode(enum.StrEnum):
    SEEK = "seek"
    PASS = "pass"


@dataclass(frozen=True)
class Chunk:
    """Points (indexes into the job's point list) handled by one ffmpeg process."""

    mode: Mode
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class ExtractionPlan:
    mode: Mode
    chunks: tuple[Chunk, ...]
    reason: str


def batch_size(width: int, height: int) -> int:
    pixels = max(1, width * height)
    return max(1, min(MAX_BATCH, round(BATCH_AT_1080P * 1920 * 1080 / pixels)))


def plan_extraction(
    times_ms: list[float], *, gop_s: float, frame_size: tuple[int, int], processes: int, dense_allowed: bool = True
) -> ExtractionPlan:
    """Group a job's points (in time order) into ffmpeg runs."""
    n = len(times_ms)
    if n == 0:
        return ExtractionPlan(Mode.SEEK, (), "no points")
    distinct = sorted(set(times_ms))
    spacing_s = (
        statistics.median(b - a for a, b in itertools.pairwise(distinct)) / 1000 if len(distinct) > 1 else float("inf")
    )
    if dense_allowed and len(distinct) > 2 and spacing_s < gop_s * DENSE_GOPS:
        parts = max(1, min(processes, len(distinct) // 4 or 1))
        size = min(-(-n // parts), MAX_PASS_POINTS)
        chunks = tuple(Chunk(Mode.PASS, tuple(range(i, min(n, i + size)))) for i in range(0, n, size))
        return ExtractionPlan(
            Mode.PASS,
            chunks,
            f"{n} points {spacing_s:.2f} s apart, closer than the {gop_s:.2f} s GOP: {len(chunks)} decode pass(es)",
        )
    size = batch_size(*frame_size)
    # Spread the points evenly so every core gets work even for small jobs.
    per_core = -(-n // max(1, processes))
    size = max(1, min(size, per_core))
    chunks = tuple(Chunk(Mode.SEEK, tuple(range(i, min(n, i + size)))) for i in range(0, n, size))
    return ExtractionPlan(
        Mode.SEEK,
        chunks,
        f"{n} points {spacing_s:.2f} s apart, GOP {gop_s:.2f} s: seeks in {len(chunks)} process(es) of up to {size}",
    )
