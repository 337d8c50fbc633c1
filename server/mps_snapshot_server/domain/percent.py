"""Times in percent of the duration (beyond MPS), resolved once the input is probed, and
the automatic sprite grid ("cover the whole video with N cells")."""

from __future__ import annotations

import dataclasses
import math

from mps_snapshot_server.domain.models import SnapshotConfig


def at(percent: float, duration_ms: float) -> int:
    """A percentage of the duration as whole milliseconds (floor: 100 % would be the end,
    which shows no frame, so every accepted percentage lands on a frame)."""
    return math.floor(percent * duration_ms / 100)


def start_ms(config: SnapshotConfig, duration_ms: float) -> int:
    if config.time_percent is not None:
        return at(config.time_percent, duration_ms)
    return config.time or 0


def resolve(config: SnapshotConfig, duration_ms: float) -> SnapshotConfig:
    """The config with percentages turned into milliseconds (Time, TimeArray) and AutoCells
    into Num with Interval 0 (evenly over the rest of the video). IntervalPercent stays: a
    step can be a fraction of a second, which Interval (whole seconds) cannot hold."""
    changes: dict[str, object] = {}
    if config.time_percent is not None:
        changes["time"] = at(config.time_percent, duration_ms)
    if config.time_percent_points:
        changes["time_points"] = tuple(float(at(p, duration_ms)) for p in config.time_percent_points)
    tile = config.tile_out
    if tile is not None and tile.auto_cells is not None:
        changes.update(num=tile.auto_cells, interval=0)
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[arg-type]


def auto_grid(cells: int) -> tuple[int, int]:
    """Lines and columns for ``cells`` in one sprite: as square as possible, wider than tall."""
    columns = math.ceil(math.sqrt(cells))
    return math.ceil(cells / columns), columns
