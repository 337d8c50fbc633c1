"""The Encoding a job's captures use: its image format and quality, its fit geometry and
HDR tone mapping, from the validated request and the probe (beyond MPS; an MPS request
gets Encoding(width, height) as before)."""

from __future__ import annotations

from mps_snapshot_server.domain import fit as fitting
from mps_snapshot_server.domain.formats import ImageFormat
from mps_snapshot_server.domain.validation import ValidRequest
from mps_snapshot_server.media import hdr
from mps_snapshot_server.media.argv import Encoding
from mps_snapshot_server.media.probe import MediaInfo


def geometry(valid: ValidRequest, info: MediaInfo) -> fitting.Geometry | None:
    config = valid.config
    return fitting.geometry(
        info.display_size,
        config.width,
        config.height,
        fit=valid.fit,
        no_upscale=bool(config.no_upscale),
        color=valid.pad_color,
    )


def output_size(valid: ValidRequest, info: MediaInfo) -> tuple[int, int]:
    """The size of the snapshots the request gets."""
    g = geometry(valid, info)
    return g.size if g is not None else info.output_size(valid.config.width, valid.config.height)


def tone_map(valid: ValidRequest, info: MediaInfo) -> str | None:
    return None if valid.config.tone_map is False else hdr.tone_map_chain(info)


def snapshots(valid: ValidRequest, info: MediaInfo) -> Encoding:
    """Published snapshots: the request's format, quality and fit."""
    config = valid.config
    return Encoding(
        config.width,
        config.height,
        image=valid.image_format,
        quality=config.quality,
        lossless=bool(config.lossless) and valid.image_format is ImageFormat.WEBP,
        geometry=geometry(valid, info),
        tone_map=tone_map(valid, info),
    )


def cells(valid: ValidRequest, info: MediaInfo, size: tuple[int | None, int | None]) -> Encoding:
    """Frames that are only sprite cells (never published): JPEG 4:4:4 as before, decoded
    straight to ``size``; a fit geometry, if any, still shapes the frame first."""
    g = geometry(valid, info)
    width, height = (valid.config.width, valid.config.height) if g is not None else size
    return Encoding(width, height, full_chroma=True, geometry=g, tone_map=tone_map(valid, info))
