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
    "pcm_u8",
    "pcm_s32le",
    "pcm_alaw",
    "pcm_mulaw",
    "wmav1",
    "wmav2",
    "amrnb",
    "amrwb",
    "dca",
    "truehd",
    "adpcm_ima_wav",
    "adpcm_ms",
)
# Likewise for subtitle streams, common in MKV and MP4 files: ffprobe fails on a stream
# whose decoder it may not open. They are never decoded for output.
SUBTITLE_DECODERS = (
    "subrip",
    "srt",
    "ass",
    "ssa",
    "mov_text",
    "webvtt",
    "text",
    "dvdsub",
    "dvbsub",
    "pgssub",
    "eia_608",
)
# Cover art (an attached picture stream in MP4, Matroska, MP3) is opened by ffprobe like
# any stream; only the video stream is ever decoded for output. Image demuxers stay refused.
PICTURE_DECODERS = ("png", "bmp", "gif")
MAX_PIXELS = 8192 * 8192


#: Reading over HTTP(S) (presigned object-storage URLs): a read that gets nothing for this
#: long fails (µs), after which ffmpeg reconnects, as it does on a reset connection or a 5xx
#: answer, waiting 0, 1, then 3 s (at most 3 attempts more); it never follows a redirect
#: (the URL is the service's own). Every option exists in Debian's ffmpeg/ffprobe 5.1 and in
#: later builds, and none is given to local files.
HTTP_RW_TIMEOUT_US = 10_000_000
HTTP_RECONNECT_DELAY_MAX_S = 4


def http_options() -> list[str]:
    return [
        "-rw_timeout",
        str(HTTP_RW_TIMEOUT_US),
        "-reconnect",
        "1",
        "-reconnect_on_network_error",
        "1",
        "-reconnect_on_http_error",
        "5xx",
        "-reconnect_delay_max",
        str(HTTP_RECONNECT_DELAY_MAX_S),
        "-seekable",
        "1",
        "-multiple_requests",
        "1",
        "-max_redirects",
        "0",
    ]


def input_options(protocols: tuple[str, ...]) -> list[str]:
    """Options placed before ``-i``: they bind the demuxer and decoders of that input."""
    remote = http_options() if "http" in protocols or "https" in protocols else []
    return [
        *remote,
        "-protocol_whitelist",
        ",".join(protocols),
        "-format_whitelist",
        ",".join(FORMAT_WHITELIST),
        "-codec_whitelist",
        ",".join(VIDEO_DECODERS + AUDIO_DECODERS + SUBTITLE_DECODERS + PICTURE_DECODERS),
        "-max_pixels",
        str(MAX_PIXELS),
        "-probesize",
        str(20 * 1024 * 1024),
        "-analyzeduration",
        str(20_000_000),
    ]
