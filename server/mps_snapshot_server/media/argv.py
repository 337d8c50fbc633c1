"""Every ffmpeg and ffprobe command line the server runs, built from explicit parameters.

Pure functions (unit-tested without ffmpeg). ffmpeg-python builds the inputs and outputs;
filtergraphs are text from ``scale_chain`` and the window/keyframe helpers below, given to
each output as its own ``-filter:v``: with one ``-filter_complex`` shared by several outputs,
ffmpeg keeps feeding every input into the shared graph until the last output is done,
decoding frames nobody wants (a batch of 8 took 6.9 s instead of 1.2 s).

Each capture names its showinfo instances so ``showinfo.frames_by_name`` can tell whose
frames it reads: ``a<i>`` sees every frame decoded for point i (before the window), ``p<i>``
the frames written for it, ``k<i>`` the keyframes kept for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg

from mps_snapshot_server.domain.fit import Geometry
from mps_snapshot_server.domain.formats import DEFAULT_WEBP_QUALITY, ImageFormat, jpeg_qscale
from mps_snapshot_server.media.hardening import input_options

#: mjpeg -q:v 2: visually lossless stills.
JPEG_QUALITY = 2
#: Lanczos: thumbnails and sprite cells are often a tenth of the source's size, where
#: swscale's default bicubic aliases visibly.
SCALE_FLAGS = "lanczos"
GLOBAL = ("-hide_banner", "-nostdin", "-nostats", "-y", "-loglevel", "info")


@dataclass(frozen=True)
class Source:
    """Where ffmpeg reads the input (a file: URL or a presigned URL) and the protocols
    that reading may use."""

    url: str
    protocols: tuple[str, ...]


@dataclass(frozen=True)
class Encoding:
    """How captured frames are written: the requested Width/Height (None: from the display
    aspect ratio), and full chroma for frames that are only intermediate sprite cells
    (decoded straight to cell size, where 4:2:0 chroma at a few dozen pixels would visibly
    smear colours; published snapshots stay 4:2:0)."""

    width: int | None = None
    height: int | None = None
    full_chroma: bool = False
    # Beyond MPS (the defaults write exactly what MPS requests always got). Files keep
    # their .jpg names whatever the codec: image2 writes what -c:v encodes, and capture
    # checks the written image by its content.
    image: ImageFormat = ImageFormat.JPEG
    #: Quality 1-100 for JPEG and lossy WebP (None: the format's default).
    quality: int | None = None
    lossless: bool = False
    #: Fit modes and no-upscale limits (domain.fit); None: sized from width/height as MPS.
    geometry: Geometry | None = None
    #: Tone-map HDR to SDR BT.709 (media.hdr.tone_map_chain), applied after scaling.
    tone_map: str | None = None


def scale_chain(enc: Encoding, name: str) -> str:
    """Scaling to the output size, then a showinfo named ``name``.

    Sizes follow the display aspect ratio (dar = iw/ih*sar), after ffmpeg's auto-rotation;
    "+0.5" because scale truncates its expressions (probe.MediaInfo.output_size mirrors it)."""
    w, h = enc.width, enc.height
    if enc.geometry is not None or enc.tone_map is not None:
        return _extended_chain(enc, name)
    if w and h:
        scale = f"scale=w={w}:h={h}:flags={SCALE_FLAGS}"
    elif w:
        scale = f"scale=w={w}:h={w}/dar+0.5:flags={SCALE_FLAGS}"
    elif h:
        scale = f"scale=w={h}*dar+0.5:h={h}:flags={SCALE_FLAGS}"
    else:
        scale = f"scale=w=iw*sar+0.5:h=ih:flags={SCALE_FLAGS}"
    return f"{scale},setsar=1,{log(name)}"


def _extended_chain(enc: Encoding, name: str) -> str:
    """Scaling with a fit geometry and/or tone mapping. Tone mapping runs after scaling:
    on thumbnail-sized frames it costs a fraction of a full-size pass."""
    g = enc.geometry
    if g is not None:
        steps = [f"scale=w={g.scale[0]}:h={g.scale[1]}:flags={SCALE_FLAGS}", "setsar=1"]
        if g.crop is not None:
            steps.append("crop=w={}:h={}:x={}:y={}".format(*g.crop))
        # The pad colour is an SDR colour: the bars are added after the tone map, so they
        # are not tone-mapped themselves.
        if enc.tone_map is not None:
            steps.append(enc.tone_map)
        if g.pad is not None:
            r, gr, b = g.color
            steps.append("pad=w={}:h={}:x={}:y={}".format(*g.pad) + f":color=0x{r:02x}{gr:02x}{b:02x}")
    else:
        plain = scale_chain(Encoding(enc.width, enc.height, enc.full_chroma), name)
        steps = [plain.rsplit(",", 1)[0]]  # the MPS sizing without its showinfo
        if enc.tone_map is not None:
            steps.append(enc.tone_map)
    return ",".join([*steps, log(name)])


def log(name: str) -> str:
    # checksum=0: the frame's time is all we read, and the checksums cost a pass over
    # every pixel of every logged frame.
    return f"showinfo@{name}=checksum=0"


def _jpeg(enc: Encoding, **extra: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "an": None,
        "sn": None,
        "dn": None,
        "q:v": JPEG_QUALITY,
        # Every frame through the graph is written as it is: no duplicate or dropped frame
        # to fit an output rate, so the last frame logged is the frame in the file.
        "fps_mode": "passthrough",
        "f": "image2",
        **extra,
    }
    if enc.image is ImageFormat.PNG:
        del opts["q:v"]
        opts.update({"c:v": "png", "pix_fmt": "rgb24"})
    elif enc.image is ImageFormat.WEBP:
        del opts["q:v"]
        quality = DEFAULT_WEBP_QUALITY if enc.quality is None else enc.quality
        # Lossless WebP is RGB inside (and libwebp has no 4:4:4): hand it RGB in those cases.
        pix = "bgra" if enc.lossless or enc.full_chroma else "yuv420p"
        opts.update({"c:v": "libwebp", "lossless": int(enc.lossless), "quality": quality, "pix_fmt": pix})
    else:
        if enc.quality is not None:
            opts["q:v"] = jpeg_qscale(enc.quality)
        if enc.full_chroma:
            opts["pix_fmt"] = "yuvj444p"
    return opts


def _input(src: Source, *, seek_s: float | None = None, duration_s: float | None = None, **extra: Any) -> Any:
    opts = input_options(src.protocols)
    kwargs: dict[str, Any] = {opts[i].lstrip("-"): opts[i + 1] for i in range(0, len(opts), 2)}
    if seek_s is not None:
        # Seek to the keyframe at or before the point, keep the file's own timestamps
        # (-copyts), and let the window filters pick the frames.
        kwargs.update({"noaccurate_seek": None, "ss": f"{seek_s:.6f}", "copyts": None})
    if duration_s is not None:
        kwargs["t"] = f"{duration_s:.6f}"
    kwargs.update(extra)
    return ffmpeg.input(src.url, **kwargs)


def _compile(node: Any, ffmpeg_bin: str) -> list[str]:
    # ffmpeg-python appends global options at the end; ffmpeg wants them first.
    args = [str(a) for a in node.compile(cmd=ffmpeg_bin)]
    return [args[0], *GLOBAL, *args[1:]]


@dataclass(frozen=True)
class ExactPoint:
    """One exact frame: seek to ``seek_s`` (seconds from the presentation start), keep the
    frames whose file time lies in ``window`` (absolute, the file's clock), write the last.
    ``tick_s``: one tick of the stream's clock."""

    seek_s: float
    window: tuple[float, float]
    tick_s: float = 1e-6


@dataclass(frozen=True)
class KeyPoint:
    """Keyframes from the keyframe at or before ``seek_s``: the first ``count`` of them."""

    seek_s: float
    count: int = 2


def exact_filter(point: ExactPoint, enc: Encoding, i: int) -> str:
    """Log every decoded frame, stop the decode after the window, keep the window.

    ``trim`` ends the decode (its end is rounded to the stream's clock, so it is set one
    and a half ticks past the window: a frame at the window's end must not be cut); the
    window itself is a ``select`` on exact times."""
    start, end = point.window
    stop = end + max(1.5 * point.tick_s, 1e-5)
    keep = f"select='between(t,{start:.6f},{end:.6f})'"
    return f"{log(f'a{i}')},trim=end={stop:.6f},{keep},{scale_chain(enc, f'p{i}')}"


def key_filter(enc: Encoding, i: int) -> str:
    # The decoder's keyframe flag, checked after decoding: some decoders (VP9, AV1) ignore
    # -skip_frame and hand out every frame.
    return f"select='eq(key,1)',{scale_chain(enc, f'k{i}')}"


def exact_file(outdir: Path, i: int) -> Path:
    return outdir / f"e{i}.jpg"


def key_file(outdir: Path, i: int, n: int) -> Path:
    """The n-th (1-based) keyframe written for point i."""
    return outdir / f"k{i}_{n}.jpg"


def capture_argv(
    ffmpeg_bin: str,
    src: Source,
    points: Sequence[ExactPoint | KeyPoint],
    enc: Encoding,
    outdir: Path,
    *,
    threads: int | None = None,
) -> list[str]:
    """One input per point, each with its own filtergraph and output. ``threads``: decoder
    threads per input (a batch already runs several decoders side by side, and a thread
    pool per input oversubscribes the cores: measured 1.13x faster with one)."""
    outputs = []
    for i, point in enumerate(points):
        extra: dict[str, Any] = {} if threads is None else {"threads": threads}
        if isinstance(point, KeyPoint):
            extra["skip_frame"] = "nokey"
            stream = _input(src, seek_s=point.seek_s, **extra)["v:0"]
            pattern = str(outdir / f"k{i}_%d.jpg")
            outputs.append(
                stream.output(pattern, **_jpeg(enc, **{"filter:v": key_filter(enc, i)}, **{"frames:v": point.count}))
            )
        else:
            stream = _input(src, seek_s=point.seek_s, **extra)["v:0"]
            opts = _jpeg(enc, **{"filter:v": exact_filter(point, enc, i), "update": 1})
            outputs.append(stream.output(str(exact_file(outdir, i)), **opts))
    return _compile(ffmpeg.merge_outputs(*outputs), ffmpeg_bin)


def _terms(windows: Sequence[tuple[float, float]]) -> str:
    return "+".join(f"between(t,{a:.6f},{b:.6f})" for a, b in windows)


def _select(windows: Sequence[tuple[float, float]]) -> str:
    return f"select='{_terms(windows)}'"


def pass_argv(
    ffmpeg_bin: str,
    src: Source,
    *,
    start_s: float,
    duration_s: float,
    windows: Sequence[tuple[float, float]] | None,
    intra: bool,
    enc: Encoding,
    outdir: Path,
) -> list[str]:
    """One decode from ``start_s`` for ``duration_s``; with ``windows`` (absolute seconds)
    only frames inside them are kept; ``intra`` decodes keyframes only and keeps them all."""
    extra: dict[str, Any] = {"skip_frame": "nokey"} if intra else {}
    stream = _input(src, duration_s=duration_s, ss=f"{start_s:.6f}", copyts=None, **extra)["v:0"]
    chain = scale_chain(enc, "pass")
    if intra:
        graph = f"select='eq(key,1)',{chain}"
    else:
        graph = f"{_select(windows)},{chain}" if windows else chain
    return _compile(stream.output(str(outdir / "p%06d.jpg"), **_jpeg(enc, **{"filter:v": graph})), ffmpeg_bin)


def keypass_argv(
    ffmpeg_bin: str,
    src: Source,
    *,
    seek_s: float,
    picks: Sequence[int],
    enc: Encoding,
    outdir: Path,
    keep_dts: Sequence[int] | None = None,
) -> list[str]:
    """A keyframe-only decode from the keyframe at ``seek_s`` that writes the keyframes at
    positions ``picks`` (0 = the keyframe at ``seek_s``, in decoding order, ascending).

    The demuxer drops every packet but keyframes (``-discard nokey``), so the decoder sees
    keyframes only and can use frame threads: twice as fast as ``-skip_frame nokey`` alone.
    But the decoder then cannot order frames by presentation, and ffmpeg guesses their
    timestamps (up to a few frames off), so keyframes are picked by position, not by time:
    ``showinfo@a0`` logs every keyframe decoded, for the capture to check the positions
    against the index, and ``showinfo@pass`` the ones written.

    ``keep_dts``: with an ffmpeg that filters input packets (``-bsf`` on an input: FFmpeg 7 and
    later), every keyframe packet but these (decoding timestamps, the stream's time base; exact
    where the demuxer's presentation times are not) is dropped before the decoder, so only the
    chosen keyframes are decoded; ``picks`` then counts among them."""
    extra: dict[str, Any] = {}
    if keep_dts:
        # The terms are integers from the index; commas are escaped for the option parser.
        kept = "+".join(f"eq(dts\\,{d})" for d in keep_dts)
        extra["bsf:v"] = f"noise=drop='not({kept})'"
    stream = _input(src, seek_s=seek_s, skip_frame="nokey", discard="nokey", **extra)["v:0"]
    # At most MAX_PASS_POINTS terms: ffmpeg 5.1's expression parser refuses more than 100.
    chosen = "+".join(f"eq(n,{p})" for p in picks)
    graph = f"select='eq(key,1)',{log('a0')},select='{chosen}',{scale_chain(enc, 'pass')}"
    opts = _jpeg(enc, **{"filter:v": graph, "frames:v": len(picks)})
    return _compile(stream.output(str(outdir / "p%06d.jpg"), **opts), ffmpeg_bin)


def pass_file(outdir: Path, n: int) -> Path:
    """The n-th (0-based) frame a decode pass wrote."""
    return outdir / f"p{n + 1:06d}.jpg"


def black_scan_argv(ffmpeg_bin: str, src: Source, *, window_s: float, pixel_threshold: int) -> list[str]:
    """Decode the first ``window_s`` seconds small and report every frame's share of black pixels."""
    stream = _input(src, duration_s=window_s)["v:0"]
    # amount=0 makes blackframe report every frame, black or not, with its pblack.
    graph = f"scale=w=160:h=-2,blackframe=amount=0:threshold={pixel_threshold}"
    return _compile(stream.output("-", f="null", **{"filter:v": graph}), ffmpeg_bin)


def probe_argv(ffprobe: str, url: str, protocols: tuple[str, ...]) -> list[str]:
    return [
        ffprobe,
        "-hide_banner",
        "-v",
        "error",
        *input_options(protocols),
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        "-i",
        url,
    ]


def key_index_argv(ffprobe: str, url: str, protocols: tuple[str, ...]) -> list[str]:
    """Every video packet's pts, dts and flags, and the stream's time base: the keyframe index.

    Demuxing reads every packet (about 0.35 s for 461 MB in the page cache), so the index is
    only built for local inputs and cached per object version."""
    return [
        ffprobe,
        "-hide_banner",
        "-v",
        "error",
        *input_options(protocols),
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts,dts,flags:stream=time_base",
        "-of",
        "csv=p=0",
        "-i",
        url,
    ]


#: Video packets read to estimate the keyframe interval (about 6-7 s at 30 fps); only the
#: planner of multi-image jobs needs it, so single snapshots never pay for it.
KEYFRAME_PACKETS = 200


def keyframes_argv(ffprobe: str, url: str, protocols: tuple[str, ...]) -> list[str]:
    """The first KEYFRAME_PACKETS video packets' times and flags."""
    return _packets(ffprobe, url, protocols, "pts_time,flags", f"%+#{KEYFRAME_PACKETS}")


def _packets(ffprobe: str, url: str, protocols: tuple[str, ...], entries: str, intervals: str | None) -> list[str]:
    """ffprobe listing video packets (read, not decoded) as CSV."""
    return [
        ffprobe,
        "-hide_banner",
        "-v",
        "error",
        *input_options(protocols),
        "-select_streams",
        "v:0",
        *(("-read_intervals", intervals) if intervals else ()),
        "-show_entries",
        f"packet={entries}",
        "-of",
        "csv=p=0",
        "-i",
        url,
    ]


def packets_argv(ffprobe: str, url: str, protocols: tuple[str, ...]) -> list[str]:
    """Every video packet's time and duration (no decoding): the end of a file without a duration."""
    return _packets(ffprobe, url, protocols, "pts_time,duration_time", None)


@dataclass(frozen=True)
class Animation:
    """An animated preview (beyond MPS): ``start_s``/``duration_s`` from the presentation
    start, ``fps`` frames a second, scaled to ``size``, at most ``frames`` frames."""

    start_s: float
    duration_s: float
    fps: float
    size: tuple[int, int]
    frames: int
    gif: bool = False
    quality: int = 75
    loop: int = 0
    tone_map: str | None = None


def animated_argv(ffmpeg_bin: str, src: Source, anim: Animation, out: Path) -> list[str]:
    """One decode of the range (an accurate input seek), resampled to ``fps``, scaled, and
    encoded by libwebp_anim or as a GIF with a palette made for these frames; showinfo
    ``anim`` logs each frame written."""
    # The input seek starts a second early: an accurate seek drops the frame still shown at
    # the start when it began before it. fps then starts its first slot at the start itself.
    seek = max(0.0, anim.start_s - 1.0)
    lead = anim.start_s - seek
    stream = _input(src, ss=f"{seek:.6f}", t=f"{lead + anim.duration_s:.6f}")["v:0"]
    w, h = anim.size
    # round=up: output frame k is the last frame whose time is at or before start + k/fps
    # (the frame shown then), as for snapshots; the default rounding takes one up to half a
    # slot later.
    steps = [f"fps={anim.fps:g}:round=up:start_time={lead:.6f}", f"scale=w={w}:h={h}:flags={SCALE_FLAGS}", "setsar=1"]
    if anim.tone_map is not None:
        steps.append(anim.tone_map)
    steps.append(log("anim"))
    graph = ",".join(steps)
    opts: dict[str, Any] = {"an": None, "sn": None, "dn": None, "frames:v": anim.frames, "loop": anim.loop}
    if anim.gif:
        # One palette for the whole preview from these very frames (diff: weighted to what
        # moves), ordered dithering so frames compress and do not shimmer.
        graph += ",split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=bayer:bayer_scale=3"
        opts.update({"f": "gif", "filter:v": graph})
    else:
        opts.update({"f": "webp", "c:v": "libwebp_anim", "quality": anim.quality, "lossless": 0, "pix_fmt": "yuv420p"})
        opts["filter:v"] = graph
    return _compile(stream.output(str(out), **opts), ffmpeg_bin)


#: Width frames are measured at for smart picks: the measures are about the picture as a
#: whole, and a small frame makes signalstats/blurdetect/entropy cheap.
MEASURE_WIDTH = 160


def measure_argv(
    ffmpeg_bin: str,
    src: Source,
    *,
    seek_s: float,
    window: tuple[float, float],
    measures_file: str,
    progress_file: str,
) -> list[str]:
    """Decode the frames of ``window`` (absolute, the file's clock, as ExactPoint) and write
    each one's luma statistics (signalstats), blur (blurdetect) and entropy to
    ``measures_file``, and ffmpeg's progress (its count of frames out of the graph) to
    ``progress_file``; nothing else is written. Both are plain names in the run's work
    folder (its cwd): the log on stderr is cut to its head and tail, these files are not."""
    start, end = window
    graph = (
        f"trim=end={end + 1e-3:.6f},select='between(t,{start:.6f},{end:.6f})',"
        f"scale=w={MEASURE_WIDTH}:h=-2,signalstats,blurdetect,entropy,"
        f"metadata=mode=print:file={measures_file}"
    )
    stream = _input(src, seek_s=seek_s)["v:0"]
    args = _compile(stream.output("-", f="null", **{"filter:v": graph}), ffmpeg_bin)
    return [args[0], *GLOBAL, "-progress", progress_file, *args[1 + len(GLOBAL) :]]
