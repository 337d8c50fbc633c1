"""The whitelists every ffmpeg and ffprobe run gets, so a hostile file cannot make the
decoder open other files or URLs (playlists, concat scripts, image sequences) or run
codecs nobody needs."""

from __future__ import annotations

# Demuxers of real video containers only: no hls, concat, image2, bin, tty, rawvideo.
FORMAT_WHITELIST = ("mov", "matroska", "webm", "flv", "mpegts", "avi", "mpeg", "asf", "ogg")
VIDEO_DECODERS = (
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "av1",
    "libdav1d",
    "libaom-av1",
    "mpeg4",
    "mpeg2video",
    "mpeg1video",
    "mjpeg",
    "flv",
    "h263",
    "theora",
    "prores",
    "vc1",
    "wmv3",
    "msmpeg4v3",
)
# ffprobe opens every stream's decoder while probing, so audio decoders must be allowed
# for files with sound to probe at all; only the video stream is ever decoded for output.
AUDIO_DECODERS = (
    "aac",
    "aac_fixed",
    "mp3",
    "mp3float",
    "mp2",
    "mp2float",
    "opus",
    "libopus",
    "vorbis",
    "ac3",
    "eac3",
    "flac",
    "alac",
    "pcm_s16le",
    "pcm_s16be",
    "pcm_s24le",
    "pcm_f32le",
    "wmav2",
)
MAX_PIXELS = 8192 * 8192


def input_options(protocols: tuple[str, ...]) -> list[str]:
    """Options placed before ``-i``: they bind the demuxer and decoders of that input."""
    return [
        "-protocol_whitelist",
        ",".join(protocols),
        "-format_whitelist",
        ",".join(FORMAT_WHITELIST),
        "-codec_whitelist",
        ",".join(VIDEO_DECODERS + AUDIO_DECODERS),
        "-max_pixels",
        str(MAX_PIXELS),
        "-probesize",
        str(20 * 1024 * 1024),
        "-analyzeduration",
        str(20_000_000),
    ]
