"""Sprite sheets and storyboards: pure geometry and text, no images.

Layout: ``width = 2*margin + columns*cell_width + (columns-1)*padding`` (same for height).
Cells fill row by row in time order; when there are more cells than ``lines*columns``
further sprites follow, the last one keeping the full grid size.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass

from mps_snapshot_server.domain.errors import ErrorCode, InvalidParameter
from mps_snapshot_server.domain.models import TileOut
from mps_snapshot_server.domain.percent import auto_grid
from mps_snapshot_server.domain.validation import DEFAULT_GRID

#: JPEG cannot be larger than this on a side.
JPEG_MAX_SIDE = 65_500


@dataclass(frozen=True)
class Layout:
    lines: int
    columns: int
    cell_width: int
    cell_height: int
    margin: int
    padding: int
    background: tuple[int, int, int]
    step: int

    @property
    def cells_per_sprite(self) -> int:
        return self.lines * self.columns

    @property
    def width(self) -> int:
        return 2 * self.margin + self.columns * self.cell_width + (self.columns - 1) * self.padding

    @property
    def height(self) -> int:
        return 2 * self.margin + self.lines * self.cell_height + (self.lines - 1) * self.padding

    def cell_box(self, index_in_sprite: int) -> tuple[int, int, int, int]:
        """x, y, width, height of a cell, by its index within its sprite."""
        row, col = divmod(index_in_sprite, self.columns)
        x = self.margin + col * (self.cell_width + self.padding)
        y = self.margin + row * (self.cell_height + self.padding)
        return x, y, self.cell_width, self.cell_height

    def sprites_for(self, cells: int) -> int:
        return math.ceil(cells / self.cells_per_sprite) if cells else 0

    def cells_for(self, snapshots: int) -> int:
        """How many of ``snapshots`` become cells with CellSelStep."""
        return math.ceil(snapshots / self.step) if snapshots else 0


def layout(tile: TileOut, snapshot_size: tuple[int, int], background: tuple[int, int, int]) -> Layout:
    lines, columns = DEFAULT_GRID, DEFAULT_GRID
    if tile.auto_cells is not None:
        # AutoCells: every cell in one sprite unless the caller fixed a side.
        lines, columns = auto_grid(tile.auto_cells)
        if tile.columns and not tile.lines:
            lines = math.ceil(tile.auto_cells / tile.columns)
        if tile.lines and not tile.columns:
            columns = math.ceil(tile.auto_cells / tile.lines)
    return Layout(
        lines=tile.lines or lines,
        columns=tile.columns or columns,
        cell_width=tile.cell_width or snapshot_size[0],
        cell_height=tile.cell_height or snapshot_size[1],
        margin=tile.margin,
        padding=tile.padding,
        background=background,
        step=tile.cell_sel_step or 1,
    )


def check_size(lay: Layout, max_pixels: int) -> None:
    if lay.width > JPEG_MAX_SIDE or lay.height > JPEG_MAX_SIDE:
        raise InvalidParameter.field(
            "snapshot_config.tile_out",
            f"The sprite would be {lay.width}x{lay.height} px; JPEG allows at most {JPEG_MAX_SIDE} px a side. "
            "Use fewer Lines/Columns or a smaller CellWidth/CellHeight.",
            code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE,
        )
    if lay.width * lay.height > max_pixels:
        raise InvalidParameter.field(
            "snapshot_config.tile_out",
            f"The sprite would be {lay.width}x{lay.height} px ({lay.width * lay.height / 1e6:.0f} MP), over this "
            f"server's limit of {max_pixels / 1e6:.0f} MP. Set a smaller CellWidth/CellHeight (cells default to "
            "the snapshot size) or fewer Lines/Columns.",
            code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE,
        )


def fit(frame: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a frame goes in its cell: scaled to fit, aspect kept, centred (letter-boxed).

    Returns x offset, y offset, width, height within the cell.
    """
    fw, fh = frame
    cw, ch = cell
    scale = min(cw / fw, ch / fh)
    w = max(1, min(cw, round(fw * scale)))
    h = max(1, min(ch, round(fh * scale)))
    return (cw - w) // 2, (ch - h) // 2, w, h


@dataclass(frozen=True)
class Tile:
    """One cell of a written sprite, for storyboards."""

    sprite: str
    x: int
    y: int
    width: int
    height: int
    time_ms: float
    requested_ms: float


@dataclass(frozen=True)
class Cue:
    start_ms: float
    end_ms: float
    target: str


def cues(times_ms: list[float], targets: list[str], duration_ms: float) -> list[Cue]:
    """One cue per thumbnail, back to back from 0 to the end: no gaps, no overlaps.

    Cue i runs from thumbnail i's requested time (0 for the first) to the next one's;
    thumbnails at the same time as the next one get no cue (they would be empty).
    """
    out: list[Cue] = []
    for i, target in enumerate(targets):
        start = 0.0 if i == 0 else times_ms[i]
        end = times_ms[i + 1] if i + 1 < len(targets) else duration_ms
        if end > start:
            out.append(Cue(start, end, target))
    return out


def _vtt_time(ms: float) -> str:
    total = round(ms)
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def webvtt(cue_list: list[Cue]) -> str:
    lines = ["WEBVTT", ""]
    for cue in cue_list:
        lines += [f"{_vtt_time(cue.start_ms)} --> {_vtt_time(cue.end_ms)}", cue.target, ""]
    return "\n".join(lines)


def relative(from_key: str, to_key: str) -> str:
    """``to_key`` as a URL relative to the object ``from_key`` (how players resolve VTT targets)."""
    return posixpath.relpath(to_key, posixpath.dirname(from_key) or ".")


def storyboard_json(tiles: list[Tile], lay: Layout, duration_ms: float, sprites: list[str], own_key: str) -> str:
    spans = cues([t.requested_ms for t in tiles], [""] * len(tiles), duration_ms)
    by_start = {c.start_ms: c for c in spans}
    doc = {
        "version": 1,
        "duration_ms": round(duration_ms, 3),
        "tile_width": lay.cell_width,
        "tile_height": lay.cell_height,
        "columns": lay.columns,
        "lines": lay.lines,
        "sprites": [{"object": s, "url": relative(own_key, s)} for s in sprites],
        "tiles": [
            {
                "sprite": t.sprite,
                "x": t.x,
                "y": t.y,
                "width": t.width,
                "height": t.height,
                "time_ms": t.time_ms,
                "requested_time_ms": t.requested_ms,
                **_span(by_start, 0.0 if i == 0 else t.requested_ms),
            }
            for i, t in enumerate(tiles)
        ],
    }
    return json.dumps(doc, indent=1)


def _span(by_start: dict[float, Cue], start: float) -> dict[str, float]:
    cue = by_start.get(start)
    if cue is None:
        return {"start_ms": start, "end_ms": start}
    return {"start_ms": round(cue.start_ms, 3), "end_ms": round(cue.end_ms, 3)}
