"""Throughput of synchronous snapshots: 8 concurrent callers against one (benchmark 5 of ``python -m bench``).

A fixed list of snapshot times spread over the 10-min file (golden-ratio steps: every position in
the GOP occurs, so some are on a keyframe and some just before the next), full size, FrameType
normal. *1 caller* takes them one after another; *8 callers* (8 clients, each its own channel)
share them, each taking every 8th. Throughput is snapshots per second of wall time; the ratio is
8 callers over 1 caller. For scale, the same snapshots as bare ffmpeg processes
(``ffmpeg -ss T -i FILE -frames:v 1 -y out.jpg``), one at a time and two at a time: what the
machine's two cores give at best with one process per snapshot.

The server runs with its defaults: ``max_ffmpeg_processes`` is the number of cores (here 2), so
at most two ffmpeg processes run at once whatever the number of callers.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from pathlib import Path

from bench import bench_sync as bs
from bench.harness import (
    IN_BUCKET,
    OUT_BUCKET,
    Sample,
    Session,
    Side,
    Stopwatch,
    Suite,
    fmt_s,
    progress,
    quiet_check,
    rounds_table,
    run_rounds,
    sample,
    session,
    speedup_row,
)
from mps_snapshot_client import MpsApiError, SnapshotClient

MODULE = "bench_concurrency.py"
CALLERS = 8
#: 8 callers against bare ffmpeg two at a time (the machine's ceiling with one process per snapshot).
TARGET = 1.0
GOLDEN = 0.6180339887498949


def snapshot_times_ms(count: int, duration_s: float) -> list[int]:
    """``count`` times spread over the file by golden-ratio steps (varied positions in the GOP)."""
    span = duration_s - 1.0
    return [round((0.5 + ((k + 1) * GOLDEN % 1.0) * span) * 1000) for k in range(count)]


class Callers:
    """Runs the whole list of snapshots through ``callers`` concurrent clients."""

    def __init__(self, s: Session, times_ms: list[int], callers: int) -> None:
        self.s = s
        self.times_ms = times_ms
        self.callers = callers

    async def __call__(self, rnd: int, attempt: int) -> Sample:
        tag = f"conc{self.callers}-r{rnd}-t{attempt}"
        clients = [
            SnapshotClient(f"127.0.0.1:{self.s.server.port}", timeout=bs.CALL_TIMEOUT_S) for _ in range(self.callers)
        ]
        latencies: list[float] = []
        errors: list[str] = []

        async def caller(i: int, client: SnapshotClient) -> None:
            for k in range(i, len(self.times_ms), self.callers):
                started = time.perf_counter()
                try:
                    job = await client.snapshot(
                        bucket=IN_BUCKET,
                        object="a.mp4",
                        output_bucket=OUT_BUCKET,
                        output_object=f"{tag}/{k}.jpg",
                        time_ms=self.times_ms[k],
                    )
                except MpsApiError as err:
                    errors.append(f"{err.code}: {err}")
                    continue
                latencies.append(time.perf_counter() - started)
                if job.state != "Success":
                    errors.append(f"{job.state} {job.code}")

        try:
            for c in clients:  # connect before the clock starts
                await c.health()
            sw = Stopwatch(self.s.pid)
            await asyncio.gather(*(caller(i, c) for i, c in enumerate(clients)))
            m = sw.stop()
        finally:
            for c in clients:
                await c.close()
        clean_dir(self.s.out_dir(tag))
        ok = len(self.times_ms) - len(errors)
        if errors:
            progress(f"{self.callers} caller(s): {len(errors)} failed calls, e.g. {errors[0]}")
        return sample(
            f"ours{self.callers}",
            rnd,
            m,
            attempt,
            per_s=ok / m.seconds,
            errors=float(len(errors)),
            p50_ms=1000 * statistics.median(latencies) if latencies else float("nan"),
            p99_ms=1000 * p99(latencies) if latencies else float("nan"),
            cores=m.cpu_s / m.seconds,
        )


class BareWorkers:
    """The same snapshots as bare ffmpeg processes, ``workers`` at a time."""

    def __init__(self, suite: Suite, s: Session, times_ms: list[int], workers: int, *, threads_1: bool = False) -> None:
        self.suite = suite
        self.s = s
        self.times_ms = times_ms
        self.workers = workers
        self.threads_1 = threads_1
        self.name = f"bare{workers}" + ("t1" if threads_1 else "")

    async def __call__(self, rnd: int, attempt: int) -> Sample:
        out = self.suite.work / f"{self.name}-r{rnd}-t{attempt}"
        out.mkdir(parents=True)
        src = self.s.input_path("a.mp4")
        failures: list[int] = []

        async def worker(i: int) -> None:
            for k in range(i, len(self.times_ms), self.workers):
                case = bs.Case("x", self.times_ms[k] / 1000)
                argv = bs.baseline_argv(case, src, out / f"{k}.jpg")
                if self.threads_1:
                    argv[1:1] = ["-threads", "1"]
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    code = await asyncio.wait_for(proc.wait(), bs.CALL_TIMEOUT_S)
                except BaseException:
                    proc.kill()
                    await proc.wait()
                    raise
                if code != 0:
                    failures.append(k)

        try:
            sw = Stopwatch(self.s.pid)
            await asyncio.gather(*(worker(i) for i in range(self.workers)))
            m = sw.stop()
        finally:
            clean_dir(out)
        if failures:
            raise RuntimeError(f"bare ffmpeg failed for snapshots {failures[:5]}")
        return sample(self.name, rnd, m, attempt, per_s=len(self.times_ms) / m.seconds, cores=m.cpu_s / m.seconds)


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]


def clean_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


async def bench_concurrency(suite: Suite) -> None:
    count = 16 if suite.quick else 48
    times = snapshot_times_ms(count, suite.dur_a)
    async with session(suite.work / "concurrency", {"a.mp4": suite.media_a}, progress) as s:
        load, idle = await quiet_check(s.pid, progress)
        suite.note_load("concurrency", load, idle)
        await Callers(s, times[:4], 1)(0, 0)  # warm-up (probe cache, page cache), not counted
        sides = [
            Side("ours1", Callers(s, times, 1)),
            Side(f"ours{CALLERS}", Callers(s, times, CALLERS)),
            Side("bare1", BareWorkers(suite, s, times, 1)),
            Side("bare2", BareWorkers(suite, s, times, 2)),
            Side("bare2t1", BareWorkers(suite, s, times, 2, threads_1=True)),
        ]
        progress(f"benchmark 5: {count} sync snapshots, 1 caller vs {CALLERS}; bare ffmpeg 1 vs 2 at a time")
        r = await run_rounds(sides, suite.rounds, progress, "concurrency", prepare=suite.warm)
    suite.raw["concurrency"] = r
    many = f"ours{CALLERS}"
    ratio = r.median(many, "per_s") / r.median("bare2", "per_s")
    alone_ratio = r.median(many, "per_s") / r.median("ours1", "per_s")
    bare_ratio = r.median("bare2", "per_s") / r.median("bare1", "per_s")
    bare_t1_ratio = r.median("bare2t1", "per_s") / r.median("bare1", "per_s")
    row = speedup_row(
        f"{CALLERS} concurrent sync callers vs bare ffmpeg 2 at a time (throughput)",
        r.median(many),
        r.median("bare2"),
        TARGET,
        load,
        "concurrency",
    )
    row.ours = f"{r.median(many, 'per_s'):.2f}/s (p99 {statistics.median(r.values(many, 'p99_ms')):.0f} ms)"
    row.baseline = f"{r.median('bare2', 'per_s'):.2f}/s (bare 2 at a time)"
    row.ratio = f"{ratio:.2f}x throughput"
    row.met = ratio >= TARGET
    row.miss = (
        ""
        if row.met
        else f"{ratio:.2f}x against ≥ {TARGET:g}x: {100 * (1 - ratio / TARGET):.0f} % short "
        f"(bare ffmpeg itself gains {bare_ratio:.2f}x from a second process)"
    )
    suite.rows.append(row)
    per_round = [
        "| round | 1 caller /s | 8 callers /s | ratio | 1 caller: cores busy | 8 callers: cores busy "
        "| 8 callers: p50 / p99 latency ms | bare 1 /s | bare 2 /s | bare 2, `-threads 1` /s | bare 2 / bare 1 "
        "| other work (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, rnd in enumerate(r.kept, 1):
        o1, o8, b1, b2, bt = rnd["ours1"], rnd[many], rnd["bare1"], rnd["bare2"], rnd["bare2t1"]
        per_round.append(
            f"| {i} | {o1.extra['per_s']:.2f} | {o8.extra['per_s']:.2f} | "
            f"{o8.extra['per_s'] / o1.extra['per_s']:.2f}x | {o1.extra['cores']:.2f} | {o8.extra['cores']:.2f} | "
            f"{o8.extra['p50_ms']:.0f} / {o8.extra['p99_ms']:.0f} | {b1.extra['per_s']:.2f} | "
            f"{b2.extra['per_s']:.2f} | {bt.extra['per_s']:.2f} | "
            f"{b2.extra['per_s'] / b1.extra['per_s']:.2f}x | {r.worst_foreign(rnd):.2f} |"
        )
    errors = sum(int(s.extra.get("errors", 0)) for rnd in r.kept for s in rnd.values())
    lines = suite.header(f"Throughput: {CALLERS} concurrent synchronous callers against one", MODULE, load, idle)
    lines += [
        f"{count} synchronous snapshots (`SnapshotClient.snapshot`, full size, FrameType normal) of "
        f"`{suite.media_a.name}` at times spread over the file by golden-ratio steps (every position in the 2-s GOP "
        f"occurs). *1 caller* takes them one after another; *{CALLERS} callers* (one client and channel each) share "
        f"them, every {CALLERS}th each. The server runs with its defaults: `max_ffmpeg_processes` = number of "
        "cores = 2. *bare* is the same list as bare `ffmpeg -ss T -i FILE -frames:v 1 -y out.jpg` processes, one "
        "at a time, two at a time, and two at a time with `-threads 1` (the machine's own ceiling for one process "
        f"per snapshot). {suite.rounds_text()}, interleaved.",
        "",
        *per_round,
        "",
        "Wall seconds per side:",
        "",
        *rounds_table(
            r,
            [
                ("ours1", "1 caller s"),
                (many, f"{CALLERS} callers s"),
                ("bare1", "bare 1 s"),
                ("bare2", "bare 2 s"),
                ("bare2t1", "bare 2, -threads 1 s"),
            ],
            [("1/8 callers", "ours1", many)],
        ),
        "",
        f"**Result:** {CALLERS} callers get {ratio:.2f}x the throughput of bare ffmpeg two at a time "
        f"({r.median(many, 'per_s'):.2f} against {r.median('bare2', 'per_s'):.2f} snapshots/s), "
        + ("meeting" if ratio >= TARGET else "**missing**")
        + f" the target (≥ {TARGET:g}x); {alone_ratio:.2f}x the throughput of one caller "
        f"({r.median('ours1', 'per_s'):.2f}/s)"
        + ("" if ratio >= TARGET else f" by {100 * (1 - ratio / TARGET):.0f} %")
        + f". The server's processes kept {statistics.median(r.values(many, 'cores')):.2f} cores busy with "
        f"{CALLERS} callers and {statistics.median(r.values('ours1', 'cores')):.2f} with one. Bare ffmpeg gains "
        f"{bare_ratio:.2f}x from two processes at a time ({r.median('bare2', 'per_s'):.2f} against "
        f"{r.median('bare1', 'per_s'):.2f}/s), and {bare_t1_ratio:.2f}x with `-threads 1` each: one snapshot "
        "process alone already keeps more than one core busy (frame threads), so a second process cannot double "
        f"the throughput. Failed calls: {errors}. Median latency per call: "
        f"{statistics.median(r.values('ours1', 'p50_ms')):.0f} ms alone, "
        f"{statistics.median(r.values(many, 'p50_ms')):.0f} ms with {CALLERS} callers (p99 "
        f"{statistics.median(r.values(many, 'p99_ms')):.0f} ms).",
        "",
        "```bash",
        f"{suite.command}",
        "ffmpeg -ss T -i FILE -frames:v 1 -y out.jpg   # bare, per snapshot",
        "```",
        "",
        f"Median wall seconds: 1 caller {fmt_s(r.median('ours1'))}, {CALLERS} callers {fmt_s(r.median(many))}.",
    ]
    suite.write("concurrency", "\n".join(lines))
