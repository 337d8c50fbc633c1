"""Image formats beyond MPS's JPEG: the ``Format`` vocabulary, the default taken from an
output object's extension, and quality settings (pure rules, no ffmpeg or Pillow).

``Format`` holds an image format, ``vtt``, or both joined by a comma ("webp,vtt"): the WebVTT
track is an addition to the images, which keep a format of their own. With no image format
named, each output (snapshots, sprites) takes the format its object's extension names, so an
MPS request (no format, ``.jpg`` names) gets JPEG exactly as before.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass


class ImageFormat(enum.StrEnum):
    JPEG = "jpg"
    PNG = "png"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]

    @property
    def pillow(self) -> str:
        """Pillow's name of the format (also what ``Image.format`` says on reading)."""
        return _PILLOW[self]


_CONTENT_TYPES = {ImageFormat.JPEG: "image/jpeg", ImageFormat.PNG: "image/png", ImageFormat.WEBP: "image/webp"}
_PILLOW = {ImageFormat.JPEG: "JPEG", ImageFormat.PNG: "PNG", ImageFormat.WEBP: "WEBP"}
_NAMES = {"jpg": ImageFormat.JPEG, "jpeg": ImageFormat.JPEG, "png": ImageFormat.PNG, "webp": ImageFormat.WEBP}
#: WebP quality when none is given (libwebp's own default is 75; thumbnails are small and
#: viewed up close, so a little more).
DEFAULT_WEBP_QUALITY = 90
#: JPEG as MPS writes it when no Quality is given: mjpeg's q 2, visually lossless.
DEFAULT_JPEG_QSCALE = 2


@dataclass(frozen=True)
class FormatChoice:
    """What ``Format`` asked for: an image format (None: from each object's extension) and
    whether a WebVTT track is written."""

    image: ImageFormat | None
    vtt: bool


def parse_format(text: str) -> FormatChoice:
    """Raise ValueError (with what to use instead) for anything outside the vocabulary."""
    parts = [p.strip().lower() for p in text.split(",")] if text.strip() else []
    image: ImageFormat | None = None
    vtt = False
    for part in parts:
        if part == "vtt" and not vtt:
            vtt = True
        elif part in _NAMES and image is None:
            image = _NAMES[part]
        else:
            raise ValueError(
                f"Format {text!r} is not understood; use jpg (default), png, webp, vtt, "
                "or an image format and vtt joined by a comma (webp,vtt)"
            )
    return FormatChoice(image, vtt)


def from_extension(key: str) -> ImageFormat:
    """The format an object name asks for: its extension when it names one (.jpg, .jpeg,
    .png, .webp, any case), else JPEG (as MPS, which writes JPEG whatever the name)."""
    _, dot, ext = posixpath.basename(key).rpartition(".")
    return _NAMES.get(ext.lower(), ImageFormat.JPEG) if dot else ImageFormat.JPEG


def named_by_extension(key: str) -> ImageFormat | None:
    """The format an object name's extension names (.jpg, .jpeg, .png, .webp), else None."""
    _, dot, ext = posixpath.basename(key).rpartition(".")
    return _NAMES.get(ext.lower()) if dot else None


def resolve(choice: FormatChoice, key: str) -> ImageFormat:
    return choice.image if choice.image is not None else from_extension(key)


def jpeg_qscale(quality: int | None) -> int:
    """mjpeg's qscale (2 best .. 31 worst) for a Quality of 1-100: linear, 100 -> 2, 1 -> 31."""
    if quality is None:
        return DEFAULT_JPEG_QSCALE
    return max(2, min(31, round(31 - (quality - 1) * 29 / 99)))


def pillow_jpeg_quality(quality: int | None) -> int:
    """Pillow's JPEG quality for sprites (MPS-compatible default 95)."""
    return 95 if quality is None else quality
