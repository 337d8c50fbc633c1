"""Many frames per ffmpeg process: seek batches (one input per point) and decode passes
(one input, a select of the frames shown at the points). argv builders are pure; the
capture functions run them and map frames back to points, or report None for a point
they could not serve exactly (the caller then takes it on its own)."""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from server.media import process
from server.media.hardening import input_options
from server.media.probe import MediaInfo
from server.media.snapshot import (
    _EPS,
    _GLOBAL,
    JPEG_QUALITY,
    SCALE_FLAGS,
    Frame,
    Source,
    _run,
    check_jpeg,
    pixel_format_options,
)

_SHOWINFO = re.compile(r"\[showinfo@(\w+) @ [^\]]*\] (.*)")
_TB = re.compile(r"config in time_base:\s*(\d+)/(\d+)")
_PTS = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)")


def scale_chain(width: int | None, height: int | None, name: str) -> str:
    """The same sizing as snapshot._scaled, as filtergraph text, ending in a showinfo
    instance named ``name`` (its log lines say ``[showinfo@name @ 0x...]``)."""
    if width and height:
        scale = f"scale=w={width}:h={height}:flags={SCALE_FLAGS}"
    elif width:
        scale = f"scale=w={width}:h={width}/dar+0.5:flags={SCALE_FLAGS}"
    elif height:
        scale = f"scale=w={height}*dar+0.5:h={height}:flags={SCALE_FLAGS}"
    else:
        scale = f"scale=w=iw*sar+0.5:h=ih:flags={SCALE_FLAGS}"
    return f"{scale},setsar=1,showinfo@{name}"


def seek_batch_argv(
    ffmpeg_bin: str,
    src: Source,
    starts: Sequence[float],
    *,
    intra: bool,
    width: int | None,
    height: int | None,
    outdir: Path,
    seeks: Sequence[float] | None = None,
    start_offset_s: float = 0.0,
) -> list[str]:
    """One input per start, each seeking to the keyframe at or before its ``seeks`` entry
    (default: the start), each with its own filtergraph: exact ``trim,scale,setsar,showinfo``
    (frames before the start dropped), intra ``scale,setsar,showinfo``; showinfo of output i
    is named ``p<i>``.

    Separate graphs matter: with one -filter_complex for all outputs, ffmpeg keeps feeding
    every input into the shared graph until the last output is done, decoding frames nobody
    wants (a batch of 8 took 6.9 s instead of 1.2 s)."""
    argv = [ffmpeg_bin, *_GLOBAL]
    seeks = starts if seeks is None else seeks
    for seek in seeks:
        if intra:
            argv += ["-skip_frame", "nokey"]
        # One decoding thread per input: a batch already runs several decoders side by side,
        # and a thread pool per input oversubscribes the cores (measured 1.13x faster).
        argv += [
            *input_options(src.protocols),
            "-threads",
            "1",
            "-noaccurate_seek",
            "-ss",
            f"{seek:.6f}",
            "-copyts",
            "-i",
            src.url,
        ]
    for i, start in enumerate(starts):
        trim = "" if intra else f"trim=start={start_offset_s + start:.6f},"
        argv += [
            "-map",
            f"{i}:v:0",
            "-filter:v",
            trim + scale_chain(width, height, f"p{i}"),
            "-an",
            "-sn",
            "-q:v",
            str(JPEG_QUALITY),
            *pixel_format_options(),
            "-f",
            "image2",
        ]
        if intra:
            argv += ["-fps_mode", "passthrough", "-frames:v", "2", str(outdir / f"k{i}_%d.jpg")]
        else:
            argv += ["-frames:v", "1", "-update", "1", str(outdir / f"e{i}.jpg")]
    return argv


def _select(windows: Sequence[tuple[float, float]]) -> str:
    terms = "+".join(f"between(t,{a:.6f},{b:.6f})" for a, b in windows)
    return f"select='{terms}'"


def pass_argv(
    ffmpeg_bin: str,
    src: Source,
    *,
    start_s: float,
    duration_s: float,
    windows: Sequence[tuple[float, float]] | None,
    intra: bool,
    width: int | None,
    height: int | None,
    outdir: Path,
) -> list[str]:
    """One decode from ``start_s`` for ``duration_s``; with ``windows`` (absolute seconds)
    only frames inside them are kept; ``intra`` decodes keyframes only and keeps them all."""
    argv = [ffmpeg_bin, *_GLOBAL]
    if intra:
        argv += ["-skip_frame", "nokey"]
    argv += [
        *input_options(src.protocols),
        "-ss",
        f"{start_s:.6f}",
        "-t",
        f"{duration_s:.6f}",
        "-copyts",
        "-i",
        src.url,
    ]
    chain = scale_chain(width, height, "pass")
    graph = f"{_select(windows)},{chain}" if windows else chain
    argv += [
        "-map",
        "0:v:0",
        "-filter:v",
        graph,
        "-an",
        "-sn",
        "-q:v",
        str(JPEG_QUALITY),
        *pixel_format_options(),
        "-fps_mode",
        "passthrough",
        "-f",
        "image2",
        str(outdir / "p%06d.jpg"),
    ]
    return argv


def showinfo_times(stderr: str) -> dict[str, list[float]]:
    """Frame timestamps (s) seen by each named showinfo instance, by name."""
    bases: dict[str, tuple[int, int]] = {}
    times: dict[str, list[float]] = defaultdict(list)
    for match in _SHOWINFO.finditer(stderr):
        index, text = match.group(1), match.group(2)
        if (tb := _TB.search(text)) is not None:
            bases[index] = (int(tb.group(1)), int(tb.group(2)))
        elif (pts := _PTS.search(text)) is not None and index in bases and bases[index][1]:
            num, den = bases[index]
            times[index].append(int(pts.group(2)) * num / den)
    return times


def _claim(path: Path, used: set[Path], dest: Path) -> Path:
    """A file of the caller's own for each point (two points may show the same frame)."""
    if path in used:
        shutil.copyfile(path, dest)
        return dest
    used.add(path)
    return path


async def seek_batch(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    times_s: Sequence[float],
    *,
    intra: bool,
    width: int | None,
    height: int | None,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> list[Frame | None]:
    fd = info.frame_duration_s
    base = info.start_time_s
    starts = list(times_s) if intra else [max(0.0, t - fd + min(_EPS, fd / 4)) for t in times_s]
    result = await _run(
        seek_batch_argv(
            ffmpeg_bin,
            src,
            starts,
            intra=intra,
            width=width,
            height=height,
            outdir=workdir,
            seeks=list(times_s),
            start_offset_s=base,
        ),
        limits,
        workdir,
    )
    seen = showinfo_times(result.stderr)
    frames: list[Frame | None] = []
    for i, target in enumerate(times_s):
        got = [t - base for t in seen.get(f"p{i}", [])]
        if intra:
            files = [workdir / f"k{i}_{n + 1}.jpg" for n in range(min(2, len(got)))]
            options = [(abs(t - target), n) for n, t in enumerate(got[:2]) if files[n].exists()]
            if not options:
                frames.append(None)
                continue
            _, best = min(options)
            w, h = check_jpeg(files[best], max_bytes)
            frames.append(Frame(files[best], got[best], w, h))
            continue
        path = workdir / f"e{i}.jpg"
        if not got or not path.exists() or got[0] > target + _EPS:
            frames.append(None)  # variable frame rate: the caller widens the window
            continue
        w, h = check_jpeg(path, max_bytes)
        frames.append(Frame(path, got[0], w, h))
    return frames


async def decode_pass(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    times_s: Sequence[float],
    *,
    intra: bool,
    tolerances_s: Sequence[float | None],
    width: int | None,
    height: int | None,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> list[Frame | None]:
    """Frames for points close together, from one decode of their range."""
    fd = info.frame_duration_s
    base = info.start_time_s
    if intra:
        reach = max((t for t in tolerances_s if t is not None), default=fd)
        start = max(0.0, min(times_s) - reach - fd)
        windows = None
        duration = max(times_s) + reach + fd - start
    else:
        start = max(0.0, min(times_s) - fd)
        windows = sorted({(base + t - fd + min(_EPS, fd / 4), base + t + _EPS / 2) for t in times_s})
        duration = max(times_s) + fd - start
    result = await _run(
        pass_argv(
            ffmpeg_bin,
            src,
            start_s=start,
            duration_s=duration,
            windows=windows,
            intra=intra,
            width=width,
            height=height,
            outdir=workdir,
        ),
        limits,
        workdir,
    )
    decoded = [t - base for t in showinfo_times(result.stderr).get("pass", [])]
    paths = [workdir / f"p{n + 1:06d}.jpg" for n in range(len(decoded))]
    available = [(t, p) for t, p in zip(decoded, paths, strict=True) if p.exists()]
    frames: list[Frame | None] = []
    used: set[Path] = set()
    for i, target in enumerate(times_s):
        if intra:
            # The nearest keyframe decoded; the range reaches past every point by its
            # tolerance, so a keyframe close enough to count is always among them. The
            # caller applies the tolerance.
            candidates = [(abs(t - target), t, p) for t, p in available]
            if not candidates:
                frames.append(None)
                continue
            _, t, p = min(candidates)
            p = _claim(p, used, workdir / f"dup{i}.jpg")
            w, h = check_jpeg(p, max_bytes)
            frames.append(Frame(p, t, w, h))
            continue
        shown = [(t, p) for t, p in available if target - fd + min(_EPS, fd / 4) <= t <= target + _EPS]
        if not shown:
            frames.append(None)
            continue
        t, p = shown[-1]
        p = _claim(p, used, workdir / f"dup{i}.jpg")
        w, h = check_jpeg(p, max_bytes)
        frames.append(Frame(p, t, w, h))
    return frames
