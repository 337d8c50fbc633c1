"""Which frame a snapshot at time T is: the rules, once, for every capture path.

Times here are seconds from the file's presentation start: the ``start_time`` of the
container (the earliest start of its streams, what a player shows as 0:00). A frame's time
is its presentation timestamp minus that origin, as the decoder reports it.

- **The frame shown at T** (FrameType ``normal``) is the last frame whose time is <= T; for a
  T before the first frame, the first frame. T is past the end when it is at or after the
  display end of the last frame (its time plus its duration).
- **The keyframe nearest T** (FrameType ``intra``) is chosen among the frames the container
  marks as keyframes (the packet index), the earlier one on a tie; past the last keyframe,
  the last keyframe.

The functions below turn what a decode reported into one of these answers, or into what
to try next when the decode could not tell (it started after T, or T fell in a gap of a
variable-frame-rate file).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

#: Half a millisecond: below any real frame interval; the margin of a window's start.
EPS = 0.0005
#: "At or before T" allows for floating-point error only: frame times are exact multiples
#: of the container's time base, T is exact milliseconds, and a frame 0.5 ms after T is not
#: the frame shown at T.
TOL = 1e-6
#: How far before T a re-seek starts when a seek landed after T (containers without an
#: index, or a keyframe whose presentation time follows its decoding time); then the start.
SEEK_BACK_S = (1.0, 5.0, 30.0)


def exact_window(time_s: float, frame_duration_s: float, *, variable_rate: bool) -> tuple[float, float]:
    """The span [start, end] whose last frame is the frame shown at ``time_s`` whenever the
    span holds a frame at all. One nominal frame interval ending at T holds exactly one frame
    of a constant-rate file (plus half a millisecond for containers that round timestamps to
    the millisecond); a variable-rate file gets two and a half (a frame may begin more than
    one nominal interval before T, and two frames may fall within one)."""
    reach = frame_duration_s * (2.5 if variable_rate else 1.0)
    return max(0.0, time_s - reach - EPS), time_s + TOL


def shown(times: Sequence[float], time_s: float) -> float | None:
    """The last of ``times`` (ascending) at or before ``time_s``, or None."""
    i = bisect.bisect_right(times, time_s + TOL)
    return times[i - 1] if i else None


def in_window(times: Sequence[float], window: tuple[float, float]) -> float | None:
    """The last frame inside ``window``: the frame shown at its end, when there is one."""
    inside = [t for t in times if window[0] <= t <= window[1]]
    return inside[-1] if inside else None


@dataclass(frozen=True)
class Shown:
    """The answer: the frame at ``time_s`` is the one to write."""

    time_s: float


@dataclass(frozen=True)
class SeekEarlier:
    """The decode began after T: seek again from ``seek_s``."""

    seek_s: float


@dataclass(frozen=True)
class PastEnd:
    """T is at or after the display end of the last frame."""

    end_s: float


@dataclass(frozen=True)
class Undecodable:
    """The decode from the start of the file gave no frame at all."""


Decision = Shown | SeekEarlier | PastEnd | Undecodable


def earlier_seek(seek_s: float, time_s: float) -> float:
    """The next seek point to try before ``seek_s`` for a point at ``time_s``."""
    for back in SEEK_BACK_S:
        if time_s - back < seek_s:
            return max(0.0, time_s - back)
    return 0.0


def decide_exact(
    decoded: Sequence[float],
    time_s: float,
    *,
    seek_s: float,
    reached_eof: bool,
    frame_duration_s: float,
) -> Decision:
    """The frame shown at ``time_s`` from a decode that began at ``seek_s`` and logged the
    time of every frame it produced (ascending), up to the first frame after T or the end of
    the file (``reached_eof``)."""
    if not decoded:
        return Undecodable() if seek_s <= 0 else SeekEarlier(earlier_seek(seek_s, time_s))
    chosen = shown(decoded, time_s)
    if chosen is None:
        # Every frame decoded lies after T: either T precedes the first frame of the file
        # (then that first frame is what a player shows), or the seek overshot.
        return Shown(decoded[0]) if seek_s <= 0 else SeekEarlier(earlier_seek(seek_s, time_s))
    if reached_eof and chosen == decoded[-1]:
        last_interval = decoded[-1] - decoded[-2] if len(decoded) > 1 else frame_duration_s
        end = chosen + max(frame_duration_s, last_interval) if frame_duration_s > 0 else chosen + last_interval
        if time_s >= end - EPS / 2:
            return PastEnd(end)
    return Shown(chosen)


def nearest_keyframe(keys: Sequence[float], time_s: float) -> float | None:
    """The keyframe nearest ``time_s`` among ``keys`` (ascending); ties go to the earlier."""
    if not keys:
        return None
    i = bisect.bisect_right(keys, time_s + TOL)
    candidates = [k for k in (keys[i - 1] if i else None, keys[i] if i < len(keys) else None) if k is not None]
    return min(candidates, key=lambda k: (abs(k - time_s), k))


def decide_keyframe(keys: Sequence[float], time_s: float, *, seek_s: float, complete: bool) -> Decision | None:
    """The keyframe nearest ``time_s`` from a keyframe decode that began at ``seek_s`` and
    produced ``keys`` (ascending). ``complete``: the decode went past T by one keyframe or
    reached the end of the file. None: the decode stopped before the keyframe after T (ask
    again from the last keyframe seen)."""
    if not keys:
        return Undecodable() if seek_s <= 0 else SeekEarlier(earlier_seek(seek_s, time_s))
    if keys[0] > time_s + TOL and seek_s > 0:
        return SeekEarlier(earlier_seek(seek_s, time_s))
    if not complete and keys[-1] <= time_s + TOL:
        return None
    best = nearest_keyframe(keys, time_s)
    assert best is not None
    return Shown(best)
