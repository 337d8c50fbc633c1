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

import bisect
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
    #: One point on its own: the capture a synchronous snapshot uses (and the first image
    #: after black frames, and a point a batch could not serve exactly).
    SINGLE = "single"
    SEEK = "seek"
    PASS = "pass"
    #: Keyframes only: one keyframe-only decode of a range, keeping the chosen keyframes.
    KEYPASS = "keypass"


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


#: Memory of the ffmpeg processes of one job, summed (``job_memory_mb``): seek batches are
#: sized so that all the job's processes running at once stay within it.
#: Measured peak RSS of seek batches (Debian ffmpeg 5.1, 1080p H.264, ``-threads 1`` per
#: input; 1, 4 and 8 inputs: 72, 180 and 306 MB with 1080p JPEGs out, about 105 MB for 16
#: inputs with 160x90 cells out): a fixed part per process (the binary and its ~215 shared
#: libraries), and per input a small part for the demuxer and decoder plus one that grows
#: with the output picture (the scaled frames and the JPEG encoder's buffers).
PROCESS_BASE_MB = 43.0
INPUT_BASE_MB = 4.0
INPUT_MB_AT_1080P = 25.0
#: Cost model of keyframes-only jobs (ms of CPU at 1080p on a 2-core box): decoding one
#: keyframe in a keyframe-only pass, and reaching one keyframe by a seek of its own (open
#: the input, parse its index, decode the keyframe and the frames its reordering holds back).
KEY_DECODE_MS = 24.0
KEY_SEEK_MS = 50.0
#: Parsing an MP4 index costs about 0.05 s per 10 minutes, on every input of a seek batch.
INDEX_PARSE_MS_PER_S = 0.083


def input_mb(width: int, height: int) -> float:
    """Estimated memory one seek input adds to an ffmpeg process, in MB."""
    return INPUT_BASE_MB + INPUT_MB_AT_1080P * max(1, width * height) / (1920 * 1080)


def batch_size(width: int, height: int, *, processes: int, budget_mb: float) -> int:
    """Points per seek batch: as many as fit the job's memory budget when ``processes``
    batches run at once (never more than MAX_BATCH)."""
    per_process = budget_mb / max(1, processes) - PROCESS_BASE_MB
    return max(1, min(MAX_BATCH, int(per_process // input_mb(width, height))))


def plan_keyframes(
    keys_s: list[float],
    index_s: list[float],
    *,
    frame_size: tuple[int, int],
    processes: int,
    duration_s: float,
    budget_mb: float,
    only_chosen: bool = False,
) -> ExtractionPlan:
    """Group the keyframes an intra job keeps (``keys_s``: distinct, ascending, chosen from
    the index ``index_s``) into ffmpeg runs. Each keyframe is decoded once: a keyframe-only
    pass over a range decodes every keyframe in it, a seek decodes just its own, so a range
    is passed when its keyframes cost less than seeking to the chosen ones. ``only_chosen``:
    the ffmpeg can drop the other keyframes before decoding (argv.keypass_argv), so a pass
    decodes just the chosen ones and always beats seeking."""
    n = len(keys_s)
    if n == 0:
        return ExtractionPlan(Mode.KEYPASS, (), "no keyframes")
    groups = max(1, min(processes, n))
    size = min(-(-n // groups), MAX_PASS_POINTS)
    seek_ms = KEY_SEEK_MS + INDEX_PARSE_MS_PER_S * duration_s
    scale = max(1, frame_size[0] * frame_size[1]) / (1920 * 1080)
    chunks: list[Chunk] = []
    passed = sought = 0
    seek_size = batch_size(*frame_size, processes=processes, budget_mb=budget_mb)
    for start in range(0, n, size):
        idx = tuple(range(start, min(n, start + size)))
        first, last = keys_s[idx[0]], keys_s[idx[-1]]
        in_range = (
            len(idx)
            if only_chosen
            else bisect.bisect_right(index_s, last + 1e-6) - bisect.bisect_left(index_s, first - 1e-6)
        )
        if in_range * KEY_DECODE_MS * scale <= len(idx) * (KEY_DECODE_MS * scale + seek_ms):
            chunks.append(Chunk(Mode.KEYPASS, idx))
            passed += len(idx)
        else:
            chunks += [Chunk(Mode.SEEK, idx[i : i + seek_size]) for i in range(0, len(idx), seek_size)]
            sought += len(idx)
    return ExtractionPlan(
        Mode.KEYPASS if passed >= sought else Mode.SEEK,
        tuple(chunks),
        f"{n} keyframes from the index: {passed} by keyframe-only passes, {sought} by seeks, {len(chunks)} process(es)",
    )


def plan_extraction(
    times_ms: list[float],
    *,
    gop_s: float,
    frame_size: tuple[int, int],
    processes: int,
    dense_allowed: bool = True,
    budget_mb: float,
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
    size = batch_size(*frame_size, processes=processes, budget_mb=budget_mb)
    # Spread the points evenly so every core gets work even for small jobs.
    per_core = -(-n // max(1, processes))
    size = max(1, min(size, per_core))
    chunks = tuple(Chunk(Mode.SEEK, tuple(range(i, min(n, i + size)))) for i in range(0, n, size))
    return ExtractionPlan(
        Mode.SEEK,
        chunks,
        f"{n} points {spacing_s:.2f} s apart, GOP {gop_s:.2f} s: seeks in {len(chunks)} process(es) of up to {size}",
    )
