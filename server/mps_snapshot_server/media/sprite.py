"""Composing sprite sheets with Pillow, one sprite in memory at a time."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mps_snapshot_server.domain.formats import DEFAULT_WEBP_QUALITY, ImageFormat, pillow_jpeg_quality
from mps_snapshot_server.domain.sprites import Layout, fit

RESAMPLE = Image.Resampling.LANCZOS


class SpriteCanvas:
    """One sprite being filled. Methods block (image work): call them in a thread."""

    def __init__(self, lay: Layout) -> None:
        self.layout = lay
        self.image = Image.new("RGB", (lay.width, lay.height), lay.background)
        self.cells = 0

    @property
    def full(self) -> bool:
        return self.cells >= self.layout.cells_per_sprite

    def add(self, frame_path: Path) -> tuple[int, int, int, int]:
        """Paste a snapshot into the next cell, scaled to fit and centred on the background.

        Returns the cell's box (x, y, width, height) in the sprite.
        """
        x, y, cw, ch = self.layout.cell_box(self.cells)
        with Image.open(frame_path) as source:
            frame = source.convert("RGB")
        ox, oy, w, h = fit(frame.size, (cw, ch))
        if (w, h) != frame.size:
            frame = frame.resize((w, h), RESAMPLE)
        self.image.paste(frame, (x + ox, y + oy))
        self.cells += 1
        return x, y, cw, ch

    def save(
        self, path: Path, fmt: ImageFormat = ImageFormat.JPEG, quality: int | None = None, lossless: bool = False
    ) -> None:
        if fmt is ImageFormat.PNG:
            self.image.save(path, "PNG", compress_level=6)
        elif fmt is ImageFormat.WEBP:
            q = DEFAULT_WEBP_QUALITY if quality is None else quality
            # method 4: libwebp's default speed/size trade-off (6 is ~3x slower for ~3 % less).
            self.image.save(path, "WEBP", quality=q, lossless=lossless, method=4)
        else:
            # 4:4:4 keeps the background colour exact up to the cell edges.
            self.image.save(path, "JPEG", quality=pillow_jpeg_quality(quality), subsampling=0)
        self.image.close()
