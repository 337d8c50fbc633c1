"""Which media times an asynchronous job captures: pure functions of the request and
the probed duration, so a re-run after a crash plans exactly the same images."""

from __future__ import annotations

from dataclasses import dataclass

from mps_snapshot_server.domain import percent
from mps_snapshot_server.domain.errors import ErrorCode, InvalidParameter, ResourceContentBad
from mps_snapshot_server.domain.models import SnapshotConfig
from mps_snapshot_server.domain.validation import DEFAULT_INTERVAL_S, MAX_NUM

#: The first image of a sequence starting at 0 skips black frames within this window.
BLACK_WINDOW_S = 5.0
#: Defaults when black filtering is forced (Time 0, Num 1) or BlackLevel comes alone.
DEFAULT_BLACK_LEVEL = 100
DEFAULT_PIXEL_BLACK_THRESHOLD = 70


@dataclass(frozen=True)
class Point:
    """One image to take: the requested time, and the half-width of the window in which
    an intra keyframe may stand in for it (None: any distance)."""

    time_ms: float
    tolerance_ms: float | None


@dataclass(frozen=True)
class BlackFilter:
    level: int
    pixel_threshold: int


@dataclass(frozen=True)
class Plan:
    points: tuple[Point, ...]
    black: BlackFilter | None
    #: Points asked for but past the end of the video (dropped; Count reports the rest).
    dropped: int


def check_async_config(config: SnapshotConfig) -> None:
    """Submit-time rules that only make sense for asynchronous jobs."""
    if not config.time_points and config.interval == 0 and config.num is None:
        raise InvalidParameter.field(
            "snapshot_config.interval",
            "Interval 0 spreads Num snapshots evenly over the video, so it needs Num; set Num, or an Interval above 0.",
        )


def plan_single(config: SnapshotConfig, duration_s: float) -> Plan:
    """A synchronous snapshot: one image at Time (or TimePercent). Past the end is judged by
    the decode (the display end of the last frame), not by the probe's duration, which
    some containers only estimate; black frames are not skipped (MPS skips them only for
    sequences)."""
    return Plan((Point(float(percent.start_ms(config, duration_s * 1000)), None),), None, 0)


def plan(config: SnapshotConfig, duration_s: float, frame_s: float | None = None) -> Plan:
    """``frame_s``: one frame's duration (1 / frame rate) when known; an IntervalPercent
    step shorter than one frame is refused (it would plan more images than distinct frames)."""
    duration_ms = duration_s * 1000
    if config.interval_percent is not None and frame_s and frame_s > 0:
        percent_step_ms = config.interval_percent * duration_ms / 100
        if percent_step_ms < frame_s * 1000:
            raise InvalidParameter.field(
                "snapshot_config.interval_percent",
                f"IntervalPercent {config.interval_percent:g} is a step of {percent_step_ms:.3g} ms on this "
                f"{round(duration_ms)} ms video, shorter than one frame ({frame_s * 1000:.3g} ms), so it would "
                "plan more images than the video has frames; use a larger IntervalPercent.",
                code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE,
            )
    config = percent.resolve(config, duration_ms)
    if config.time_points:
        points = sorted(config.time_points)
        late = [p for p in points if p >= duration_ms]
        if late:
            raise InvalidParameter(
                f"TimeArray greater than video duration: {late[0]:g} ms is at or past the end of the video, "
                f"which is {round(duration_ms)} ms long; remove the points past the end.",
                code=ErrorCode.INVALID_PARAMETER_TIME_ARRAY,
            )
        # Explicit points each get an image: intra takes the nearest keyframe, however far.
        return Plan(tuple(Point(p, None) for p in points), None, 0)

    start = float(config.time or 0)
    if start >= duration_ms:
        raise ResourceContentBad(
            f"Time {config.time} ms is at or past the end of the video, which is {round(duration_ms)} ms long; "
            "start the sequence earlier."
        )
    num = config.num
    poster_only = (
        config.animated_out is not None
        and num is None
        and config.interval is None
        and config.interval_percent is None
        and config.tile_out is None
    )
    if num == 1 or poster_only:
        # Num 1, or a job asynchronous only for its animated preview: one image at Time.
        times = [start]
        step_ms = None
    elif config.interval == 0:
        assert num is not None
        step_ms = (duration_ms - start) / num
        times = [start + i * step_ms for i in range(num)]
    else:
        if config.interval_percent is not None:
            step_ms = config.interval_percent * duration_ms / 100
        else:
            step_ms = float((config.interval if config.interval is not None else DEFAULT_INTERVAL_S) * 1000)
        limit = num if num is not None else MAX_NUM
        count = min(limit, int((duration_ms - start - 1e-6) // step_ms) + 1)
        times = [start + i * step_ms for i in range(count)]
    asked = num if num is not None else len(times)
    kept = [t for t in times if t < duration_ms]
    tolerance = step_ms / 2 if step_ms is not None else None
    return Plan(tuple(Point(t, tolerance) for t in kept), _black_filter(config), max(0, asked - len(kept)))


def _black_filter(config: SnapshotConfig) -> BlackFilter | None:
    """MPS: only the first image, only when the sequence starts at 0; forced for Num 1."""
    if (config.time or 0) != 0:
        return None
    if config.num == 1:
        return BlackFilter(DEFAULT_BLACK_LEVEL, config.pixel_black_threshold or DEFAULT_PIXEL_BLACK_THRESHOLD)
    if config.black_level is None:
        return None
    threshold = config.pixel_black_threshold
    return BlackFilter(config.black_level, DEFAULT_PIXEL_BLACK_THRESHOLD if threshold is None else threshold)
