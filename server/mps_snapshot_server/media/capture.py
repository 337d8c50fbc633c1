"""Running captures: one snapshot, seek batches, decode passes, the black-frame scan.

Commands come from ``argv``, frame times from ``showinfo``, and which frame is the right
one from ``domain.frames`` (the same rules for every path). A batch or pass reports None for
a point it could not serve with certainty; ``capture_exact``/``capture_keyframe`` then take
that point on its own, re-seeking or re-windowing until the decode proves its answer.
"""

from __future__ import annotations

import bisect
import itertools
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mps_snapshot_server.domain import frames
from mps_snapshot_server.domain.errors import ResourceContentBad
from mps_snapshot_server.media import argv, process, showinfo
from mps_snapshot_server.media.argv import Encoding, ExactPoint, KeyPoint, Source
from mps_snapshot_server.media.probe import KeyIndex, MediaInfo, scrub

# The mov/mp4 demuxer's complaint when a sample's data lies past the end of the file.
_PARTIAL = ": partial file"
#: Runs one point may take on its own: re-seeks (1, 5, 30 s back, then the start) and one
#: re-window; each run is bounded by the wall-clock limit as well.
_MAX_RUNS = 6


@dataclass(frozen=True)
class Frame:
    """A JPEG written by ffmpeg and the media time (seconds from the presentation start)
    of the frame in it."""

    path: Path
    time_s: float
    width: int
    height: int


class PastTheEnd(ResourceContentBad):
    """The time is at or after the display end of the last frame."""

    def __init__(self, time_s: float, end_s: float) -> None:
        super().__init__(
            f"Time {round(time_s * 1000)} ms is past the end of the video, which is {round(end_s * 1000)} ms "
            "long; use a Time below the duration, or FrameType intra to get the last keyframe."
        )
        self.end_s = end_s


_TRUNCATED = "The input is truncated: the data of the frame at the requested time is missing from the file."


def check_jpeg(path: Path, max_bytes: int, expected: str = "JPEG") -> tuple[int, int]:
    """Refuse to publish anything that is not a whole, decodable image of sane size in the
    ``expected`` format (Pillow's name: JPEG, or PNG/WEBP beyond MPS)."""
    if not path.exists() or path.stat().st_size == 0:
        raise ResourceContentBad("No frame could be decoded at the requested time; the file may be damaged.")
    if path.stat().st_size > max_bytes:
        raise ResourceContentBad(f"The snapshot is larger than {max_bytes} bytes; request a smaller Width/Height.")
    try:
        with Image.open(path) as img:
            if img.format != expected:
                raise ResourceContentBad(f"The snapshot is not a {expected} image.")
            size = img.size
            # Decoding at 1/8 scale still reads every entropy-coded block (so a cut or
            # corrupt file fails) for a fraction of a full decode: ~0.7 ms instead of ~6 ms
            # at 1080p. (draft is a no-op for PNG and WebP, which are decoded whole.)
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            return size
    except ResourceContentBad:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        # Pillow's "cannot identify", "image file is truncated", broken markers...
        raise ResourceContentBad(
            f"The snapshot ffmpeg wrote is not a whole {expected} image; the input may be damaged."
        ) from None


#: FFmpeg 7+'s words when a run ended before any frame reached the encoder.
_NO_FRAME = "Could not open encoder before EOF"
#: What it logs first on the way there.
_ENCODER_CHAIN = ("No filtered frames for output stream", "Non full-range YUV")
#: A keyframe pass logs one line per keyframe in its range (up to a few hundred).
_LONG_LOG = 1024 * 1024


def _ended_without_frames(stderr: str) -> bool:
    """The run failed only because no frame reached the encoder, with no error before that."""
    if _NO_FRAME not in stderr:
        return False
    cut = min(i for m in (*_ENCODER_CHAIN, _NO_FRAME) if (i := stderr.find(m)) >= 0)
    before = [ln for ln in stderr[:cut].splitlines() if "showinfo@" not in ln]
    # A file cut short ("partial file") is judged from the log as well: it is reported as truncated.
    return _PARTIAL in stderr[:cut] or not any(
        word in ln for ln in before for word in ("rror", "nvalid", "exceeds", "not on whitelist")
    )


async def run_ffmpeg(
    command: list[str], limits: process.Limits, cwd: Path, *, stderr_keep: int | None = None
) -> process.Result:
    try:
        result = await process.run(command, limits=limits, cwd=str(cwd), stderr_keep=stderr_keep)
    except process.ProcessTimeout:
        # A source that stalls or a file that decodes forever: the group is already killed.
        raise ResourceContentBad(
            f"Decoding the input took longer than {limits.wall_seconds:g} s and was stopped; "
            "the file may be damaged or unreadable."
        ) from None
    if result.returncode != 0 and _ended_without_frames(result.stderr):
        # No frame reached the encoder (the decode ended first): FFmpeg 7 and later then fail
        # the run where 5.1 ends it quietly. Its log says what was decoded, as for any run.
        return result
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "showinfo@" not in ln]
        detail = scrub(lines[-1].rsplit(": ", 1)[-1])[:200] if lines else ""
        detail = detail or f"exit code {result.returncode}"
        raise ResourceContentBad(f"The input could not be decoded ({detail}).")
    return result


@dataclass(frozen=True)
class _Run:
    """What one capture run said about one of its points."""

    decision: frames.Decision | None
    written: float | None  # time of the frame in the output file, if any


def _exact_outcome(
    logged: dict[str, list[showinfo.LoggedFrame]], i: int, time_s: float, seek_s: float, info: MediaInfo
) -> _Run:
    origin = info.start_time_s
    decoded = sorted(f.time_s - origin for f in logged.get(f"a{i}", []))
    written = [f.time_s - origin for f in logged.get(f"p{i}", [])]
    eof = not any(t > time_s + frames.TOL for t in decoded)
    decision = frames.decide_exact(
        decoded, time_s, seek_s=seek_s, reached_eof=eof, frame_duration_s=info.frame_duration_s
    )
    return _Run(decision, written[-1] if written else None)


def _key_outcome(
    logged: dict[str, list[showinfo.LoggedFrame]], i: int, time_s: float, point: KeyPoint, info: MediaInfo
) -> tuple[frames.Decision | None, list[float]]:
    # ffmpeg may log one frame more than the output takes; only the first ``count`` were written.
    keys = [f.time_s - info.start_time_s for f in logged.get(f"k{i}", [])][: point.count]
    complete = len(keys) < point.count or keys[-1] > time_s + frames.TOL
    return frames.decide_keyframe(sorted(keys), time_s, seek_s=point.seek_s, complete=complete), keys


def _exact_point(time_s: float, info: MediaInfo) -> ExactPoint:
    """The first run for the frame shown at ``time_s``: seek (early for index-less MPEG
    streams) and the window ending at T, on the file's own clock."""
    origin = info.start_time_s
    start, end = frames.exact_window(time_s, info.frame_duration_s, variable_rate=info.variable_rate)
    seek = max(0.0, time_s - info.seek_lead_s)
    return ExactPoint(seek_s=seek, window=(origin + start, origin + end), tick_s=info.tick_s)


def _same(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) < frames.TOL


async def capture_exact(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    *,
    time_s: float,
    enc: Encoding,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> Frame:
    """The frame shown at ``time_s`` (domain.frames), proven by the decode's own log."""
    origin = info.start_time_s
    point = _exact_point(time_s, info)
    out = argv.exact_file(workdir, 0)
    for _ in range(_MAX_RUNS):
        out.unlink(missing_ok=True)
        result = await run_ffmpeg(argv.capture_argv(ffmpeg_bin, src, [point], enc, workdir), limits, workdir)
        run = _exact_outcome(showinfo.frames_by_name(result.stderr), 0, time_s, point.seek_s, info)
        match run.decision:
            case frames.Shown(time_s=chosen):
                if _same(run.written, chosen) and out.exists():
                    w, h = check_jpeg(out, max_bytes, enc.image.pillow)
                    return Frame(out, chosen, w, h)
                # The frame shown at T began before the window (a variable-frame-rate gap, or
                # T before the first frame): its time is known now, so take exactly it.
                window = (origin + chosen - frames.TOL, origin + chosen + frames.TOL)
                point = ExactPoint(point.seek_s, window, info.tick_s)
            case frames.SeekEarlier(seek_s=seek):
                point = ExactPoint(seek, point.window, info.tick_s)
            case frames.PastEnd(end_s=end_s):
                if _PARTIAL in result.stderr:
                    raise ResourceContentBad(_TRUNCATED)
                raise PastTheEnd(time_s, end_s)
            case _:
                if _PARTIAL in result.stderr:
                    raise ResourceContentBad(_TRUNCATED)
                raise ResourceContentBad(
                    "No frame could be decoded at the requested time: the file may be truncated (its index lists "
                    "frames it has no data for) or damaged."
                )
    raise ResourceContentBad(
        "The frame at the requested time could not be located; the file's timestamps may be damaged."
    )


async def capture_keyframe(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    *,
    time_s: float,
    enc: Encoding,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
    keys: Sequence[float] | None = None,
) -> Frame:
    """The keyframe nearest ``time_s`` (ties go to the earlier one); past the end, the last.

    With the input's keyframe index (``keys``) the keyframe is chosen from it and only that
    keyframe is decoded: an exact capture at its time, which seeks straight to it. Without,
    the decode finds it: the keyframe at or before T and the next one, the nearer kept."""
    if keys:
        chosen = frames.nearest_keyframe(keys, time_s)
        assert chosen is not None
        frame = await capture_exact(
            ffmpeg_bin, src, info, time_s=chosen, enc=enc, workdir=workdir, limits=limits, max_bytes=max_bytes
        )
        if _same(frame.time_s, chosen):
            return frame
        # The decode disagrees with the index (a damaged or odd file): find it by decoding.
    seek = max(0.0, time_s - info.seek_lead_s)
    # Two keyframes (the one at or before T and the next) after an exact seek; more after a
    # seek that starts early on purpose.
    point = KeyPoint(seek_s=seek, count=2 if seek == time_s else 4)
    for attempt in range(_MAX_RUNS):
        folder = workdir / f"key{attempt}"
        folder.mkdir()
        result = await run_ffmpeg(argv.capture_argv(ffmpeg_bin, src, [point], enc, folder), limits, folder)
        decision, keys = _key_outcome(showinfo.frames_by_name(result.stderr), 0, time_s, point, info)
        match decision:
            case frames.Shown(time_s=chosen):
                n = keys.index(chosen) + 1
                path = argv.key_file(folder, 0, n)
                w, h = check_jpeg(path, max_bytes, enc.image.pillow)
                return Frame(path, chosen, w, h)
            case frames.SeekEarlier(seek_s=seek):
                point = KeyPoint(seek)
            case None:
                # The seek landed more than one keyframe before T (containers without an index
                # land where they can): take more keyframes from the same place.
                point = KeyPoint(point.seek_s, point.count * 4)
            case _:
                raise ResourceContentBad("No keyframe could be decoded from the input; the file may be damaged.")
    raise ResourceContentBad("The keyframe nearest the requested time could not be located.")


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
    enc: Encoding,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> list[Frame | None]:
    """Several points in one process, one input each; None for a point the batch could not
    prove (the caller takes it on its own)."""
    points: list[ExactPoint | KeyPoint] = []
    for t in times_s:
        if intra:
            seek = max(0.0, t - info.seek_lead_s)
            points.append(KeyPoint(seek_s=seek, count=2 if seek == t else 4))
        else:
            points.append(_exact_point(t, info))
    result = await run_ffmpeg(argv.capture_argv(ffmpeg_bin, src, points, enc, workdir, threads=1), limits, workdir)
    logged = showinfo.frames_by_name(result.stderr)
    out: list[Frame | None] = []
    for i, (t, point) in enumerate(zip(times_s, points, strict=True)):
        if isinstance(point, KeyPoint):
            decision, keys = _key_outcome(logged, i, t, point, info)
            if isinstance(decision, frames.Shown):
                path = argv.key_file(workdir, i, keys.index(decision.time_s) + 1)
                if path.exists():
                    w, h = check_jpeg(path, max_bytes, enc.image.pillow)
                    out.append(Frame(path, decision.time_s, w, h))
                    continue
            out.append(None)
            continue
        run = _exact_outcome(logged, i, t, point.seek_s, info)
        path = argv.exact_file(workdir, i)
        if isinstance(run.decision, frames.Shown) and _same(run.written, run.decision.time_s) and path.exists():
            w, h = check_jpeg(path, max_bytes, enc.image.pillow)
            out.append(Frame(path, run.decision.time_s, w, h))
        else:
            out.append(None)
    return out


def major_version(version_text: str) -> int:
    """FFmpeg's major version from ``ffmpeg -version`` ("ffmpeg version 5.1.9-0+deb12u1",
    "ffmpeg version n9.0.2-17-g2a571b6068"); 0 when it cannot tell (a git build)."""
    match = re.search(r"ffmpeg version n?(\d+)\.", version_text)
    return int(match.group(1)) if match else 0


async def keyframe_pass(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    keys_s: Sequence[float],
    index: KeyIndex,
    *,
    drop_others: bool,
    enc: Encoding,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> list[Frame | None]:
    """The keyframes at ``keys_s`` (ascending, each one of the index) from one keyframe-only
    decode starting at the first of them; None for any keyframe the decode did not prove.

    ``drop_others``: the other keyframe packets are dropped before the decoder (by their
    decoding timestamps), so only these keyframes are decoded; otherwise every keyframe of the
    range is decoded and the chosen ones kept. The decode's keyframes are matched to the index
    by position (argv.keypass_argv says why); the match is proven when every keyframe decoded
    lies within half the smallest keyframe interval of the index entry at its position, so
    none was skipped or added."""
    origin = info.start_time_s
    first = bisect.bisect_left(index.times, keys_s[0] - frames.TOL)
    keep_dts: list[int] | None = None
    if drop_others and all(k in index.dts for k in keys_s):
        ahead = list(keys_s)
        keep_dts = [index.dts[k] for k in keys_s]
    else:
        ahead = list(index.times[first:])
    position = {round(k * 1e6): n for n, k in enumerate(ahead)}
    picks = [position.get(round(k * 1e6)) for k in keys_s]
    wanted = [p for p in picks if p is not None]
    if len(wanted) != len(keys_s) or not ahead:
        return [None] * len(keys_s)
    span = index.times[first : bisect.bisect_right(index.times, keys_s[-1] + frames.TOL)]
    gaps = [b - a for a, b in itertools.pairwise(span)]
    slack = min(gaps) / 2 if gaps else info.frame_duration_s
    result = await run_ffmpeg(
        argv.keypass_argv(ffmpeg_bin, src, seek_s=keys_s[0], picks=wanted, enc=enc, outdir=workdir, keep_dts=keep_dts),
        limits,
        workdir,
        stderr_keep=_LONG_LOG,
    )
    logged = showinfo.frames_by_name(result.stderr)
    decoded = [f.time_s - origin for f in logged.get("a0", [])]
    written = len(logged.get("pass", []))
    # Proven up to the first keyframe that is not where the index puts it.
    proven = 0
    for seen, expected in zip(decoded, ahead, strict=False):
        if abs(seen - expected) >= slack:
            break
        proven += 1
    out: list[Frame | None] = []
    for n, (key, pick) in enumerate(zip(keys_s, wanted, strict=True)):
        path = argv.pass_file(workdir, n)
        if pick >= proven or n >= written or not path.exists():
            out.append(None)
            continue
        w, h = check_jpeg(path, max_bytes)
        out.append(Frame(path, key, w, h))
    return out


async def decode_pass(
    ffmpeg_bin: str,
    src: Source,
    info: MediaInfo,
    times_s: Sequence[float],
    *,
    intra: bool,
    tolerances_s: Sequence[float | None],
    enc: Encoding,
    workdir: Path,
    limits: process.Limits,
    max_bytes: int,
) -> list[Frame | None]:
    """Frames for points close together, from one decode of their range."""
    fd = info.frame_duration_s
    origin = info.start_time_s
    windows = [frames.exact_window(t, fd, variable_rate=info.variable_rate) for t in times_s]
    if intra:
        reach = max((t for t in tolerances_s if t is not None), default=fd)
        start = max(0.0, min(times_s) - reach - fd)
        duration = max(times_s) + reach + fd - start
        select = None
    else:
        start = max(0.0, min(w[0] for w in windows) - fd)
        duration = max(times_s) + fd - start
        select = sorted({(origin + a, origin + b) for a, b in windows})
    result = await run_ffmpeg(
        argv.pass_argv(
            ffmpeg_bin,
            src,
            start_s=start,
            duration_s=duration,
            windows=select,
            intra=intra,
            enc=enc,
            outdir=workdir,
        ),
        limits,
        workdir,
    )
    decoded = showinfo.times(result.stderr, "pass", origin)
    available = [(t, argv.pass_file(workdir, n)) for n, t in enumerate(decoded)]
    available = [(t, p) for t, p in available if p.exists()]
    times_only = [t for t, _ in available]
    out: list[Frame | None] = []
    used: set[Path] = set()
    for i, target in enumerate(times_s):
        if intra:
            best = frames.nearest_keyframe(sorted(times_only), target)
            # A keyframe before T may lie before the range this pass could reach (a seek
            # that landed late): then only a decode of its own can tell the nearest.
            if best is None or (start > 0 and times_only and times_only[0] > target):
                out.append(None)
                continue
            path = available[times_only.index(best)][1]
            chosen = best
        else:
            chosen_or_none = frames.in_window(times_only, windows[i])
            if chosen_or_none is None:
                out.append(None)
                continue
            chosen = chosen_or_none
            path = available[times_only.index(chosen)][1]
        path = _claim(path, used, workdir / f"dup{i}.jpg")
        w, h = check_jpeg(path, max_bytes, enc.image.pillow)
        out.append(Frame(path, chosen, w, h))
    return out


async def first_non_black(
    ffmpeg_bin: str,
    src: Source,
    *,
    window_s: float,
    level: int,
    pixel_threshold: int,
    workdir: Path,
    limits: process.Limits,
) -> float | None:
    """Media time (s) of the first frame whose black share is below ``level`` percent."""
    result = await run_ffmpeg(
        argv.black_scan_argv(ffmpeg_bin, src, window_s=window_s, pixel_threshold=pixel_threshold), limits, workdir
    )
    for time_s, share in showinfo.black_shares(result.stderr):
        if share < level:
            return time_s
    return None
