"""The whole benchmark suite, each benchmark side by side with its baseline, in one command.

    .venv/bin/python -m bench                 # everything, 3 rounds of the long ones (about 20-25 min)
    .venv/bin/python -m bench --rounds 5
    .venv/bin/python -m bench --quick         # 60-s files, 1 round: a smoke test (about 3 min), docs left alone
    .venv/bin/python -m bench --only jobs,sprite   # a subset (the summary keeps the other rows)

Generates the missing media first (bench/media.py; the 10-minute files take 10-20 min each to
encode). Benchmarks, in order (names for --only):

  sync         the sync latency benchmark (bench/bench_sync.py; its own --rounds, default 10)
  jobs         1+2: 100 exact / intra images at 6 s steps vs the ffmpeg fps=1/6 pass
  gop10        3: exact images 1 s after each keyframe of the 10-s-GOP file vs the fps pass
  sprite       4: a 10x10 sprite of 160x90 cells vs ffmpeg tile and vcsi
  concurrency  5: 8 concurrent sync callers vs 1
  memory       6: server RSS during a 1000-cell sprite job
  build        7: job 1 and the sync benchmark with the static ffmpeg of imageio-ffmpeg
  beyond       8: a WebP sprite and an animated WebP preview vs the equivalent ffmpeg commands

Each writes its own marked section of docs/performance.md (not with --quick unless --write-doc),
and the run ends with the summary section (bench:summary): the machine, the load average at the
start of each benchmark, and one table of medians, ratios and targets.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import bench_beyond, bench_build, bench_concurrency, bench_jobs, harness, media
from bench import bench_sync as bs
from bench.harness import (
    FOREIGN_LIMIT_CORES,
    Row,
    Suite,
    code_version,
    met_text,
    now_utc,
    probe_duration,
    progress,
    quiet_check,
    save_json,
    warm_page_cache,
)

NAMES = ("sync", "jobs", "gop10", "sprite", "concurrency", "memory", "build", "beyond")
SUMMARY = "summary"
VCSI_VENV = Path(__file__).resolve().parent / ".vcsi" / "bin" / "vcsi"
_ROWS = re.compile(r"<!-- rows: (.*?) -->", re.S)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="60-second files, 1 round: a smoke test")
    p.add_argument(
        "--rounds", type=int, help="rounds of the job, sprite and concurrency benchmarks (default 3; 1 quick)"
    )
    p.add_argument("--sync-rounds", type=int, help="rounds of the sync benchmark (default 10; 3 quick)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(NAMES)}")
    p.add_argument("--vcsi", help="the vcsi executable (default: next to this Python, bench/.vcsi/bin/vcsi, PATH)")
    p.add_argument("--static-ffmpeg", help="a static ffmpeg for benchmark 7 (default: imageio-ffmpeg's, if importable)")
    p.add_argument(
        "--busy-machine",
        action="store_true",
        help="a shared, loaded machine: no waiting for quiet and no re-run of rounds other work disturbed "
        "(the load is still recorded with every benchmark)",
    )
    doc = p.add_mutually_exclusive_group()
    doc.add_argument("--write-doc", action="store_true", help="update docs/performance.md even with --quick")
    doc.add_argument("--no-doc", action="store_true", help="do not touch docs/performance.md")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.sync_rounds is None:
        args.sync_rounds = 3 if args.quick else 10
    if not 1 <= args.rounds <= 50 or not 1 <= args.sync_rounds <= 1000:
        p.error("--rounds must be 1-50 and --sync-rounds 1-1000")
    which = [w.strip() for w in args.only.split(",")] if args.only else list(NAMES)
    unknown = [w for w in which if w not in NAMES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(NAMES)}")
    args.which = which
    return args


def find_vcsi(explicit: str | None) -> tuple[str | None, str]:
    """vcsi, and where it came from (or exactly why there is none)."""
    candidates = [Path(explicit)] if explicit else [Path(sys.executable).parent / "vcsi", VCSI_VENV]
    if not explicit and (on_path := shutil.which("vcsi")):
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file():
            return str(c), f"`{c}`"
    if explicit:
        return None, f"--vcsi {explicit} is not a file"
    return None, (
        "vcsi is not installed: not in this venv (`pip install -e .[bench]`), not in bench/.vcsi "
        "(`python3 -m venv bench/.vcsi && bench/.vcsi/bin/pip install vcsi`) and not on PATH"
    )


def suite_command(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m bench", *argv])


def summary_rows_from_doc() -> dict[str, dict[str, object]]:
    """The rows of the previous summary (kept for benchmarks a subset run does not repeat)."""
    try:
        text = bs.DOC.read_text()
    except OSError:
        return {}
    begin = text.find(f"<!-- bench:{SUMMARY}:begin -->")
    if begin < 0:
        return {}
    match = _ROWS.search(text, begin)
    if not match:
        return {}
    try:
        loaded = json.loads(match.group(1))
    except ValueError:
        return {}
    return {str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def summary(suite: Suite, info: dict[str, str], started: float, which: Sequence[str], status: str) -> str:
    when = now_utc()
    fresh = {
        r.benchmark: {**dataclasses.asdict(r), "load": suite.loads.get(r.section, r.load), "when": when}
        for r in suite.rows
    }
    # Rows of sections this run did not measure (a subset, or a benchmark skipped for want of vcsi or a
    # static ffmpeg) stay from the previous summary, with their own date; the others are replaced.
    measured = {r.section for r in suite.rows}
    previous = {} if suite.quick else summary_rows_from_doc()  # quick numbers never mix with full ones
    rows = {k: v for k, v in previous.items() if v.get("section") not in measured}
    rows.update(fresh)
    table = [
        "| benchmark | ours (median) | baseline (median) | ratio | target | met? "
        "| load at start (1/5/15 min) / other work (cores) | measured, section |",
        "|---|---|---|---|---|---|---|---|",
    ]
    misses = []
    for r in rows.values():
        met = r.get("met")
        table.append(
            f"| {r['benchmark']} | {r['ours']} | {r['baseline']} | {r['ratio']} | {r['target']} | "
            f"{met_text(met if isinstance(met, bool) else None)} | {r['load']} | {r['when']}, `bench:{r['section']}` |"
        )
        if met is False:
            misses.append(f"- {r['benchmark']}: {r['miss']}.")
    minutes = (time.monotonic() - started) / 60
    lines = [
        "## Benchmark suite: summary",
        "",
        f"Last run {when}: `{suite.command}` ({status}; {minutes:.0f} min"
        + (", quick mode: 60-s files, 1 round, a smoke test" if suite.quick else "")
        + ").",
        "",
        f"- Machine: nproc {info['nproc']}, CPU `{info['cpu']}`, {info['memory']} RAM, {info['os']}, "
        f"Python {info['python']}",
        f"- ffmpeg: `{info['ffmpeg']}` (`{bs.FFMPEG}`; ffprobe `{bs.FFPROBE}`), on both sides unless a row says "
        "otherwise",
        f"- Code: `{info['commit']}` at the start, `{code_version()}` at the end (each section records its own)",
        f"- vcsi: {suite.vcsi_note}; static ffmpeg for the build comparison: {suite.static_note}",
        "- Load average at the start of each benchmark: "
        + ", ".join(f"{k} {v}" for k, v in suite.loads.items())
        + " (load averages 1/5/15 min / cores other work used in a 2-s sample just before, while the suite was idle. "
        "2 cores: 2.0 is a full machine; the suite itself keeps one or two cores busy, so the load average at a "
        "benchmark's start includes the tail of the one before, and the sample is the better measure of other work).",
        "",
        *table,
        "",
        "Ratios: for jobs and sprites, baseline time over ours (how many times faster we are); for sync latency, ours "
        "over bare ffmpeg (lower is better); for concurrency, throughput with 8 callers over 1.",
        "",
        "**Targets missed:**" if misses else "**Every target with a verdict was met.**",
        *misses,
        "",
        f"Method: each benchmark runs its sides in interleaved rounds (the order rotating), on this machine in this "
        f"run, and reports every round and the median; every baseline runs afresh in every round. During each "
        f"measurement the suite compares the machine's busy CPU time (/proc/stat) with its own (the server and its "
        f"ffmpeg children, or the baseline process): a round during which other work took more than "
        f"{FOREIGN_LIMIT_CORES:g} cores on average is run again (at most {harness.MAX_ATTEMPTS} tries, the "
        "quieter kept, "
        "the other listed in the section). Before each side the media are read into the page cache again "
        "(untimed: this VM's memory reclaim evicts idle pages). The sections also show the hypervisor's steal time "
        "(/proc/stat) and the seconds all tasks stalled on I/O (/proc/pressure/io), which no CPU figure shows. "
        "Raw samples: bench/results/suite-*.json (not committed).",
        "",
        f"<!-- rows: {json.dumps(rows, ensure_ascii=False)} -->",
    ]
    return "\n".join(lines)


def sync_row(run: bs.Run, load: str) -> Row:
    ratio = bs.overall_ratio(run)
    normal = [run.samples[c.name] for c in run.cases if c.frame_type == "normal"]
    ours = [x for s in normal for x in s.ours]
    base = [x for s in normal for x in s.baseline]
    o, b = statistics.median(ours), statistics.median(base)
    met = ratio <= bs.AIM_RATIO
    miss = (
        ""
        if met
        else f"p50 {ratio:.2f}x bare ffmpeg against ≤ {bs.AIM_RATIO:g}x: {(o - b * bs.AIM_RATIO) * 1000:.0f} ms over"
    )
    return Row(
        "sync snapshot latency, p50 over the normal cases",
        f"{o * 1000:.0f} ms",
        f"{b * 1000:.0f} ms",
        f"{ratio:.2f}x (ours/ffmpeg)",
        f"≤ {bs.AIM_RATIO:g}x",
        met,
        load,
        miss,
        "sync",
    )


def sync_intra_row(run: bs.Run, load: str) -> Row | None:
    ratio = bs.intra_ratio(run)
    intra = next((c for c in run.cases if c.frame_type == "intra"), None)
    if ratio is None or intra is None:
        return None
    sample = run.samples[intra.name]
    o, b = statistics.median(sample.ours), statistics.median(sample.baseline)
    met = ratio <= bs.INTRA_AIM_RATIO
    return Row(
        "sync intra snapshot latency, p50",
        f"{o * 1000:.0f} ms",
        f"{b * 1000:.0f} ms (bare keyframe command)",
        f"{ratio:.2f}x (ours/ffmpeg)",
        f"≤ {bs.INTRA_AIM_RATIO:g}x",
        met,
        load,
        ""
        if met
        else f"p50 {ratio:.2f}x against ≤ {bs.INTRA_AIM_RATIO:g}x: {(o - b * bs.INTRA_AIM_RATIO) * 1000:.0f} ms over",
        "sync",
    )


async def run_async(suite: Suite, which: Sequence[str], debian_sync: bs.Run | None) -> None:
    job_names = [n for n, w in (("sequences", "jobs"), ("gop10", "gop10"), ("sprite", "sprite")) if w in which]
    if "memory" in which:
        job_names.append("memory")
    if job_names:
        await bench_jobs.run_all(suite, job_names)
    if "concurrency" in which:
        await bench_concurrency.bench_concurrency(suite)
    if "build" in which:
        await bench_build.bench_build(suite, debian_sync)
    if "beyond" in which:
        await bench_beyond.bench_beyond(suite)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.monotonic()
    bs.stop_on_sigterm()
    files = media.ALL_QUICK if args.quick else media.ALL_FULL
    if args.busy_machine:
        harness.MAX_ATTEMPTS = 1
        harness.QUIET_WAIT_S = 0.0
    for m in files:
        # The 10-s-GOP file serves benchmark 3 only: not made for runs without it.
        if m is files[0] or "gop10" in args.which:
            media.ensure(m)
    media_a, media_c = (m.path for m in files)
    progress("reading the media once into the page cache")
    warm_page_cache([media_a, media_c])
    vcsi, vcsi_note = find_vcsi(args.vcsi)
    static, static_note = bench_build.find_static(args.static_ffmpeg)
    info = bs.machine()
    write_doc = args.write_doc or not (args.quick or args.no_doc)
    status = "interrupted"
    with tempfile.TemporaryDirectory(prefix="mps-bench-suite-") as tmp:
        suite = Suite(
            quick=args.quick,
            rounds=args.rounds,
            work=Path(tmp),
            write_doc=write_doc,
            command=suite_command(argv),
            media_a=media_a,
            media_c=media_c,
            dur_a=probe_duration(media_a),
            dur_c=probe_duration(media_c) if media_c.is_file() else 0.0,
            vcsi=vcsi,
            vcsi_note=vcsi_note,
            static_ffmpeg=static,
            static_note=static_note,
        )
        progress(f"vcsi: {vcsi_note}; static ffmpeg: {static_note}")
        debian_sync: bs.Run | None = None
        try:
            if "sync" in args.which:
                load, idle = asyncio.run(quiet_check(None, progress))
                suite.note_load("sync", load, idle)
                sync_argv = ["--rounds", str(args.sync_rounds)]
                sync_argv += ["--quick"] if args.quick else []
                sync_argv += ["--write-doc"] if write_doc and args.quick else [] if write_doc else ["--no-doc"]
                debian_sync = bs.run(sync_argv)
                suite.raw["sync"] = debian_sync
                suite.rows.append(sync_row(debian_sync, suite.loads["sync"]))
                if (intra_row := sync_intra_row(debian_sync, suite.loads["sync"])) is not None:
                    suite.rows.append(intra_row)
            asyncio.run(run_async(suite, args.which, debian_sync))
            status = "complete"
        finally:
            text = summary(suite, info, started, args.which, status)
            print("\n" + text.rsplit("<!-- rows:", 1)[0])
            if write_doc and suite.rows:
                suite.write(SUMMARY, text)
            path = save_json("suite" + ("-quick" if args.quick else ""), {"argv": argv, "machine": info, **suite.raw})
            progress(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
