"""Reading ffmpeg's logs: the frames each named ``showinfo`` instance saw, and blackframe.

Every capture names its showinfo instances (``showinfo@NAME``); each logs its time base
once, then one line per frame with the integer pts. Times are computed from the integer
pts and the time base: showinfo's own ``pts_time`` has only six significant digits, which
is 10 ms at 1000 s.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

_LINE = re.compile(r"\[showinfo@(\w+) @ [^\]]*\] (.*)")
_TIME_BASE = re.compile(r"config in time_base:\s*(\d+)/(\d+)")
_FRAME = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+).*?\biskey:(\d)")
_BLACK = re.compile(r"Parsed_blackframe.*?\bpblack:(\d+)\s+pts:(-?\d+)\s+t:(-?[0-9.]+)")


@dataclass(frozen=True)
class LoggedFrame:
    """One frame as a showinfo instance saw it: its time (seconds, the file's own clock)
    and whether the decoder marked it a keyframe."""

    time_s: float
    key: bool


def frames_by_name(stderr: str) -> dict[str, list[LoggedFrame]]:
    """The frames each named showinfo instance saw, in the order it saw them."""
    bases: dict[str, tuple[int, int]] = {}
    frames: dict[str, list[LoggedFrame]] = defaultdict(list)
    for match in _LINE.finditer(stderr):
        name, text = match.group(1), match.group(2)
        if (tb := _TIME_BASE.search(text)) is not None:
            bases.setdefault(name, (int(tb.group(1)), int(tb.group(2))))
        elif (frame := _FRAME.search(text)) is not None and name in bases and bases[name][1]:
            num, den = bases[name]
            frames[name].append(LoggedFrame(int(frame.group(2)) * num / den, frame.group(3) == "1"))
    return dict(frames)


def times(stderr: str, name: str, origin_s: float = 0.0) -> list[float]:
    """Frame times (seconds from ``origin_s``) the showinfo instance ``name`` saw."""
    return [f.time_s - origin_s for f in frames_by_name(stderr).get(name, [])]


def black_shares(stderr: str) -> list[tuple[float, int]]:
    """(time s, percent of black pixels) of every frame blackframe reported."""
    return [(float(m.group(3)), int(m.group(1))) for m in _BLACK.finditer(stderr)]
