"""Where a synchronous snapshot spends its time beyond bare ffmpeg.

    .venv/bin/python -m bench.explain_sync [--rounds N] [--quick] [--no-doc]

For each case of bench.bench_sync it times, interleaved, round by round:

  baseline      the bare ffmpeg command of bench.bench_sync
  server argv   the exact ffmpeg argv the server builds (mps_snapshot_server.media.argv.capture_argv with
                an ExactPoint or KeyPoint: hardening options, -copyts, showinfo/trim/scale/setsar/
                showinfo, -q:v 2, and for FrameType normal a seek to T keeping the window of one
                frame interval ending at T), run bare
  argv @T       (normal only) the same argv keeping frames from T on instead
  + wrapper     the server argv under the setpriv/prlimit wrapper the server adds (mps_snapshot_server.media.process)
  gRPC call     one SnapshotClient.snapshot against bench.traced_server, with the server-side
                steps timed: the ffmpeg process, publishing the JPEG, the SQLite commit, the rest

plus the bare ffprobe the server runs once per object version (the cold-call cost).
Nothing in server/ is modified; the argv builders are imported and called as the server calls them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio  # type: ignore[import-untyped, unused-ignore]

from bench import bench_sync as bs
from bench import media
from mps_snapshot_client._client import SnapshotClient
from mps_snapshot_server.domain import frames
from mps_snapshot_server.media import process
from mps_snapshot_server.media.argv import Encoding, ExactPoint, KeyPoint, Source, capture_argv, probe_argv
from mps_snapshot_server.media.probe import MediaInfo, probe

SECTION = "sync-breakdown"
LIMITS = process.Limits(bs.CALL_TIMEOUT_S, cpu_seconds=600, address_space_bytes=4 * 1024**3)
STEPS = ("ffmpeg", "put_file", "put_job", "server other", "gRPC + client")


@dataclass
class CaseTimes:
    variants: dict[str, list[float]] = field(default_factory=dict)
    steps: dict[str, list[float]] = field(default_factory=dict)

    def add(self, table: dict[str, list[float]], name: str, seconds: float) -> None:
        table.setdefault(name, []).append(seconds)


def run_bare(argv: Sequence[str], cwd: Path) -> float:
    # The server's argv has no -y: it removes old outputs first, and so does this.
    for old in (*cwd.glob("key*.jpg"), cwd / "exact.jpg"):
        old.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        timeout=bs.CALL_TIMEOUT_S,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stderr.decode()[-2000:]}")
    return took


def server_argvs(case: bs.Case, src: Source, info: MediaInfo, work: Path) -> dict[str, list[str]]:
    """The argv variants for one case, built by the server's own functions."""
    if case.frame_type == "intra":
        argv = capture_argv(bs.FFMPEG, src, [KeyPoint(case.time_s)], Encoding(), work)
        return {"server argv": argv, "+ wrapper": [*process._wrapper(LIMITS), *argv]}
    origin = info.start_time_s
    start, end = frames.exact_window(case.time_s, info.frame_duration_s, variable_rate=info.variable_rate)
    # as mps_snapshot_server.media.capture.capture_exact: seek to T, keep the window ending at T
    argv = capture_argv(bs.FFMPEG, src, [ExactPoint(case.time_s, (origin + start, origin + end))], Encoding(), work)
    at_t = capture_argv(
        bs.FFMPEG, src, [ExactPoint(case.time_s, (origin + case.time_s, origin + end + 1))], Encoding(), work
    )
    return {"server argv": argv, "argv @T": at_t, "+ wrapper": [*process._wrapper(LIMITS), *argv]}


def read_trace(path: Path, offset: int) -> tuple[list[dict[str, object]], int]:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()], offset + len(data)


async def grpc_call(
    client: SnapshotClient, case: bs.Case, trace: Path, offset: int, *, warm: bool
) -> tuple[float, dict[str, float], int]:
    took, _ = await bs.time_ours(client, case, "video.mp4", f"explain-{case.time_ms}.jpg")
    events: list[dict[str, object]] = []
    for _ in range(100):  # the server appends its last lines just after answering
        more, offset = read_trace(trace, offset)
        events += more
        if any(e["step"] == "submit" for e in events):
            break
        await asyncio.sleep(0.01)
    spans: dict[str, float] = {}
    for e in events:
        step = f"run {e['what']}" if e["step"] == "run" else str(e["step"])
        spans[step] = spans.get(step, 0.0) + float(str(e["s"]))
    if "submit" not in spans or (
        warm and ("run ffprobe" in spans or sum(1 for e in events if e["step"] == "run") != 1)
    ):
        raise RuntimeError(f"unexpected server steps for a warm call: {events}")
    runs = spans.get("run ffmpeg", 0.0) + spans.get("run ffprobe", 0.0)
    steps = {
        "ffmpeg": runs,
        "put_file": spans["put_file"],
        "put_job": spans["put_job"],
        "server other": spans["submit"] - runs - spans["put_file"] - spans["put_job"],
        "gRPC + client": took - spans["submit"],
    }
    return took, steps, offset


async def measure(
    media_file: Path, cases: list[bs.Case], rounds: int, work: Path, progress: Callable[[str], None]
) -> tuple[dict[str, CaseTimes], list[float]]:
    data_dir = work / "data"
    (data_dir / bs.IN_BUCKET).mkdir(parents=True)
    src_path = data_dir / bs.IN_BUCKET / "video.mp4"
    shutil.copyfile(media_file, src_path)
    src = Source("file:" + str(src_path.resolve()), ("file",))
    info = await probe(bs.FFPROBE, src.url, src.protocols, LIMITS)
    trace = work / "trace.jsonl"
    trace.touch()
    server = bs.Server(
        data_dir,
        work / "server.log",
        program=[sys.executable, "-m", "bench.traced_server"],
        env={"BENCH_TRACE_FILE": str(trace)},
    )
    argvs = {c.name: server_argvs(c, src, info, work) for c in cases}
    results = {c.name: CaseTimes() for c in cases}
    ffprobe_s: list[float] = []
    channel: aio.Channel | None = None
    try:
        server.start()
        assert server.proc is not None
        port = await server.wait_port()
        channel = aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
        client = SnapshotClient(channel=channel, timeout=bs.CALL_TIMEOUT_S)
        await bs.wait_serving(client, server.proc)
        offset = 0
        for r in range(rounds + 1):  # round 0 is the warm-up
            counted = r > 0
            for case in cases:
                ct = results[case.name]
                runs: list[tuple[str, Callable[[], float]]] = [
                    ("baseline", functools.partial(bs.time_baseline, case, src_path, work / "baseline.jpg")),
                    *((name, functools.partial(run_bare, a, work)) for name, a in argvs[case.name].items()),
                ]
                if r % 2:
                    runs.reverse()
                for name, fn in runs:
                    took = fn()
                    if counted:
                        ct.add(ct.variants, name, took)
                took, steps, offset = await grpc_call(client, case, trace, offset, warm=counted)
                if counted:
                    ct.add(ct.variants, "gRPC call", took)
                    for step, seconds in steps.items():
                        ct.add(ct.steps, step, seconds)
            if counted:
                ffprobe_s.append(run_bare(probe_argv(bs.FFPROBE, src.url, src.protocols), work))
                progress(f"round {r}/{rounds} done")
            else:
                progress("warm-up round done (not counted)")
    except BaseException:
        print(f"--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if channel is not None:
            await channel.close()
        server.stop()
    return results, ffprobe_s


def ms(values: Sequence[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}" if values else "—"


def report(cases: list[bs.Case], results: dict[str, CaseTimes], ffprobe_s: list[float]) -> str:
    variants = ("baseline", "server argv", "argv @T", "+ wrapper", "gRPC call")
    out = [
        "p50 wall time in ms per variant:",
        "",
        "| case | T (s) | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for c in cases:
        v = results[c.name].variants
        out.append(f"| {c.name} | {c.time_s:g} | " + " | ".join(ms(v.get(n, [])) for n in variants) + " |")
    out += [
        "",
        "p50 of each server-side step of the gRPC call, in ms (steps add up to the call):",
        "",
        "| case | " + " | ".join(STEPS) + " | call |",
        "|---|" + "---|" * (len(STEPS) + 1),
    ]
    for c in cases:
        ct = results[c.name]
        out.append(
            f"| {c.name} | " + " | ".join(ms(ct.steps[s]) for s in STEPS) + f" | {ms(ct.variants['gRPC call'])} |"
        )
    out += [
        "",
        f"Bare `ffprobe` as the server runs it (once per object version, the cold-call extra): p50 {ms(ffprobe_s)} ms.",
        "",
        *findings(cases, results),
        "",
    ]
    return "\n".join(out)


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def findings(cases: list[bs.Case], results: dict[str, CaseTimes]) -> list[str]:
    """The differences that matter, computed from the medians above (ms)."""
    lines = ["Computed from the medians above:", ""]
    for c in cases:
        v, st = results[c.name].variants, results[c.name].steps
        outside = sum(p50(st[s]) for s in STEPS if s != "ffmpeg")
        text = (
            f"- {c.name} (T={c.time_s:g}): call − baseline = {p50(v['gRPC call']) - p50(v['baseline']):+.0f}; "
            f"server argv − baseline = {p50(v['server argv']) - p50(v['baseline']):+.0f}"
        )
        if "argv @T" in v:
            text += f", of which the seek to T minus one frame = {p50(v['server argv']) - p50(v['argv @T']):+.0f}"
        text += (
            f"; setpriv/prlimit wrapper {p50(v['+ wrapper']) - p50(v['server argv']):+.0f}; "
            f"outside ffmpeg (JPEG publish, SQLite, Python, gRPC) {outside:.0f}."
        )
        lines.append(text)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m bench.explain_sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-doc", action="store_true", help="do not touch docs/performance.md")
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 1000:
        p.error("--rounds must be 1-1000")
    media_file = media.ensure(media.QUICK if args.quick else media.FULL)
    cases = list(bs.QUICK_CASES if args.quick else bs.FULL_CASES)
    cases.append(bs.intra_case(cases))

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    load_before = bs.loadavg()
    bs.stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="mps-bench-explain-") as tmp:
        results, ffprobe_s = asyncio.run(measure(media_file, cases, args.rounds, Path(tmp), progress))
    text = report(cases, results, ffprobe_s)
    text += f"\n1-minute load average before / after the run: {load_before} / {bs.loadavg()}.\n"
    print(text)
    if not (args.quick or args.no_doc):
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        command = " ".join([".venv/bin/python -m bench.explain_sync", *argv])
        body = (
            f"## Sync snapshot latency: where the time goes\n\nMeasured {when} by `bench/explain_sync.py` "
            f"({args.rounds} rounds after one warm-up, same machine and media as above; `{command}`). "
            "*server argv* is the ffmpeg command the server builds, run bare; *argv @T* seeks to T instead "
            "of T minus one frame; *+ wrapper* adds the server's setpriv/prlimit wrapper; *gRPC call* is "
            "a whole SubmitSnapshotJob against `bench/traced_server.py` (the server with timers).\n\n" + text
        )
        bs.write_section(bs.DOC, SECTION, body)
        print(f"updated {bs.DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
