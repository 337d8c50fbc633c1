"""HDR to SDR: PQ (HDR10) and HLG videos are tone-mapped to SDR BT.709, so their
thumbnails do not come out grey and washed out.

Detected from the stream's transfer tag (ffprobe's color_transfer). The chain uses zimg
(ffmpeg's zscale, in Debian's ffmpeg) for the exact transfer and primaries conversions and
ffmpeg's tonemap with the Mobius curve in linear light (tones up to near white stay linear,
only highlights are compressed: on PQ test media made from an SDR master it came 29 grey
levels from the master where Hable came 54); it runs after scaling, on thumbnail-sized frames.
The input's tags are stated explicitly (tin/pin/min) rather than read from each frame, so a
stream whose frames lack the side data is converted as its header says.
"""

from __future__ import annotations

from mps_snapshot_server.media.probe import MediaInfo

#: ffprobe's transfer names for the HDR transfers, and zimg's names for them.
HDR_TRANSFERS = {"smpte2084": "smpte2084", "arib-std-b67": "arib-std-b67"}
#: Nominal peak luminance (cd/m²) mapped to SDR white.
NOMINAL_PEAK = 100


def is_hdr(info: MediaInfo) -> bool:
    return info.color_transfer in HDR_TRANSFERS


def tone_map_chain(info: MediaInfo) -> str | None:
    """The filters that turn this stream into SDR BT.709, or None for an SDR stream."""
    if not is_hdr(info):
        return None
    tin = HDR_TRANSFERS[info.color_transfer]
    matrix = "bt2020c" if info.color_space == "bt2020c" else "bt2020nc"
    return (
        f"zscale=tin={tin}:pin=bt2020:min={matrix}:t=linear:npl={NOMINAL_PEAK},"
        "format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=mobius:desat=0,"
        "zscale=t=bt709:m=bt709:r=tv,format=yuv420p"
    )
