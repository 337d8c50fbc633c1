"""Outputs beyond MPS against the equivalent one-command ffmpeg, run by ``python -m bench``
(``--only beyond``):

- ``webp sprite``: the sprite job of benchmark 4 (a 10x10 sheet of 160x90 cells, Interval 6,
  Num 100, IsKeepCellPic false) with Format webp, against ``fps,scale,tile`` encoded by libwebp;
- ``animated``: an animated WebP preview (AnimatedOut: 5 s from 60 s at 10 fps, 320 px wide)
  against ``-ss 60 -t 5 ... fps=10,scale=320:-2`` encoded by libwebp_anim. The job also writes
  its one poster snapshot (Time 0), which the baseline does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import bench_sync as bs
from bench.bench_jobs import CELL, GRID, TILE, JobSide, ProcSide, display, quiet_argv
from bench.harness import (
    OUT_BUCKET,
    Side,
    Suite,
    progress,
    quiet_check,
    rounds_table,
    run_rounds,
    sequence_times_ms,
    session,
    speedup_row,
)

MODULE = "bench_beyond.py"
ANIMATED = {"Duration": 5000, "Fps": 10, "Width": 320}


def animated_spec(duration_s: float) -> dict[str, int]:
    """5 s from 60 s (from the middle of a shorter, quick-mode file)."""
    return {"Start": round(min(60.0, duration_s / 2) * 1000), **ANIMATED}


def webp_tile_argv(ffmpeg: str, src: Path, out_dir: Path) -> list[str]:
    vf = f"fps=1/6,scale={CELL[0]}:{CELL[1]},tile={GRID[0]}x{GRID[1]}"
    return [*quiet_argv(ffmpeg), "-i", str(src), "-vf", vf, "-frames:v", "1", "-c:v", "libwebp", "-quality", "90",
            str(out_dir / "sheet.webp")]  # fmt: skip


def animated_argv(ffmpeg: str, src: Path, out_dir: Path, spec: dict[str, int]) -> list[str]:
    start, length = spec["Start"] / 1000, spec["Duration"] / 1000
    return [*quiet_argv(ffmpeg), "-ss", f"{start:g}", "-t", f"{length:g}", "-i", str(src),
            "-vf", f"fps={ANIMATED['Fps']},scale={ANIMATED['Width']}:-2", "-c:v", "libwebp_anim", "-quality", "75",
            "-loop", "0", str(out_dir / "preview.webp")]  # fmt: skip


async def bench_beyond(suite: Suite) -> None:
    src = suite.media_a
    async with session(suite.work / "beyond", {"a.mp4": src}, progress) as s:
        load, idle = await quiet_check(s.pid, progress)
        suite.note_load("beyond", load, idle)
        n = len(sequence_times_ms(0, 6, 100, suite.dur_a))
        sprite = JobSide(
            s, "webp-sprite", "a.mp4", {"Time": 0, "Interval": 6, "Num": 100, "Format": "webp"},
            images=n, tile=TILE, sprites=1,
        )  # fmt: skip
        spec = animated_spec(suite.dur_a)
        anim_config: dict[str, Any] = {
            "Time": 0,
            "AnimatedOut": spec,
            "AnimatedOutputFile": {"Bucket": OUT_BUCKET, "Object": "beyond/preview.webp"},
        }
        animated = JobSide(s, "animated", "a.mp4", anim_config, images=1)
        tile_side = ProcSide(suite, s, "ffmpeg-webp-tile", lambda out: webp_tile_argv(bs.FFMPEG, src, out))
        anim_side = ProcSide(suite, s, "ffmpeg-anim", lambda out: animated_argv(bs.FFMPEG, src, out, spec))
        sides = [
            Side("webp-sprite", sprite),
            Side("ffmpeg-webp-tile", tile_side),
            Side("animated", animated),
            Side("ffmpeg-anim", anim_side),
        ]
        progress("benchmark beyond: WebP sprite and animated WebP preview vs one-command ffmpeg")
        r = await run_rounds(sides, suite.rounds, progress, "beyond", prepare=suite.warm)
    suite.raw["beyond"] = r
    o1, b1 = r.median("webp-sprite"), r.median("ffmpeg-webp-tile")
    o2, b2 = r.median("animated"), r.median("ffmpeg-anim")
    suite.rows.append(speedup_row("10x10 WebP sprite vs one-command ffmpeg (libwebp)", o1, b1, None, load, "beyond"))
    suite.rows.append(speedup_row("5 s animated WebP preview vs one-command ffmpeg", o2, b2, None, load, "beyond"))
    cols = [("webp-sprite", "ours sprite s"), ("ffmpeg-webp-tile", "ffmpeg tile s"),
            ("animated", "ours animated s"), ("ffmpeg-anim", "ffmpeg anim s")]  # fmt: skip
    ratios = [("tile/ours", "ffmpeg-webp-tile", "webp-sprite"), ("anim/ours", "ffmpeg-anim", "animated")]
    lines = suite.header("Outputs beyond MPS: WebP sprite and animated preview", MODULE, load, idle)
    lines += [
        f"*ours*: asynchronous `SubmitSnapshotJob`s on `{src.name}`, timed from Submit to `Success`: the sprite job "
        "of the sprite benchmark with Format webp; an AnimatedOut of 5 s from 60 s (quick: mid-file) at 10 fps, "
        f"320 px wide (plus its poster snapshot at Time 0). {suite.rounds_text()}, interleaved.",
        "",
        *rounds_table(r, cols, ratios),
        "",
        "```bash",
        f"{suite.command}",
        display(webp_tile_argv(bs.FFMPEG, src, Path("/OUT")), src, Path("/OUT")),
        display(animated_argv(bs.FFMPEG, src, Path("/OUT"), spec), src, Path("/OUT")),
        "```",
        "",
        suite.media_note(),
    ]
    suite.write("beyond", "\n".join(lines))
