"""Fit modes and no-upscale limits: where a frame of the video's display size goes in the
requested Width x Height (pure geometry; argv turns it into scale/crop/pad filters).

A request without ``Fit`` and ``NoUpscale`` has no geometry (None) and keeps MPS's sizing
(``probe.MediaInfo.output_size``): both sides given means exactly that size.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Fit(enum.StrEnum):
    STRETCH = "stretch"
    PRESERVE = "preserve"
    PAD = "pad"
    CROP = "crop"


def parse_fit(text: str) -> Fit:
    try:
        return Fit(text.strip().lower())
    except ValueError:
        raise ValueError(f"Fit {text!r} is unknown; use stretch, preserve, pad or crop") from None


@dataclass(frozen=True)
class Geometry:
    """Scale the display-size frame to ``scale``, then cut ``crop`` (w, h, x, y) out of it
    or place it at (x, y) on a ``pad`` canvas (w, h, x, y) of ``color``."""

    scale: tuple[int, int]
    crop: tuple[int, int, int, int] | None = None
    pad: tuple[int, int, int, int] | None = None
    color: tuple[int, int, int] = (0, 0, 0)

    @property
    def size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop[0], self.crop[1]
        if self.pad is not None:
            return self.pad[0], self.pad[1]
        return self.scale


def _side(x: float) -> int:
    return max(1, round(x))


def geometry(
    display: tuple[int, int],
    width: int | None,
    height: int | None,
    *,
    fit: Fit | None,
    no_upscale: bool,
    color: tuple[int, int, int] = (0, 0, 0),
) -> Geometry | None:
    """The geometry for a request, or None when MPS's sizing applies unchanged."""
    if fit is None and not no_upscale:
        return None
    dw, dh = display
    cap = 1.0 if no_upscale else float("inf")
    if not (width and height):
        if not (width or height):
            return Geometry((dw, dh)) if no_upscale else None
        # One side given: the other follows the aspect ratio; Fit has nothing to decide.
        s = min(width / dw if width else height / dh, cap)  # type: ignore[operator]
        return Geometry((_side(dw * s), _side(dh * s)))
    mode = fit or Fit.STRETCH
    if mode is Fit.STRETCH:
        return Geometry((min(width, dw) if no_upscale else width, min(height, dh) if no_upscale else height))
    if mode is Fit.CROP:
        s = min(max(width / dw, height / dh), cap)
        sw, sh = max(_side(dw * s), min(width, dw)), max(_side(dh * s), min(height, dh))
        cw, ch = min(width, sw), min(height, sh)
        return Geometry((sw, sh), crop=(cw, ch, (sw - cw) // 2, (sh - ch) // 2))
    s = min(width / dw, height / dh, cap)
    sw, sh = min(width, _side(dw * s)), min(height, _side(dh * s))
    if mode is Fit.PRESERVE:
        return Geometry((sw, sh))
    return Geometry((sw, sh), pad=(width, height, (width - sw) // 2, (height - sh) // 2), color=color)
