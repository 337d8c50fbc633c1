"""Synchronous snapshot latency: mps-snapshot over gRPC against bare ffmpeg on the same file.

    .venv/bin/python -m bench.bench_sync                # 10-min 1080p file, 10 rounds, writes docs/performance.md
    .venv/bin/python -m bench.bench_sync --rounds 20
    .venv/bin/python -m bench.bench_sync --quick        # 60-s file, 3 rounds, smoke test (docs left alone)

It starts the real server (``mps-snapshot serve --listen 127.0.0.1:0``) on a temporary data
dir, copies the media into a bucket, and for each case runs interleaved rounds of

  (a) the bare baseline ``/usr/bin/ffmpeg -ss T -i FILE -frames:v 1 -y out.jpg`` on the very
      same file the server reads, timed wall-clock from spawn to exit, and
  (b) one ``SnapshotClient.snapshot`` (FrameType normal, full size), timed from call to response.

One warm-up round runs first and is not counted. The first call of the server (and the first
call on a new object, which costs the server one ffprobe) is reported apart as "cold".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grpc import aio  # type: ignore[import-untyped, unused-ignore]

from bench import media
from mps_snapshot_client._client import SnapshotClient

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
FFMPEG = media.FFMPEG
FFPROBE = "/usr/bin/ffprobe"
IN_BUCKET = "bench-media"
OUT_BUCKET = "bench-out"
SECTION = "sync"
#: Issue 18: p50 at most 0.6x the bare command for exact frames, 0.5x for intra.
AIM_RATIO = 0.6
INTRA_AIM_RATIO = 0.5
#: Passed through to the server (settings.local_ffmpeg), e.g. "imageio"; reported with the results.
LOCAL_FFMPEG_ENV = "MPS_SNAPSHOT_LOCAL_FFMPEG"
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"listening on \S+ \(port (\d+)\)")


@dataclass(frozen=True)
class Case:
    name: str
    time_s: float
    frame_type: str = "normal"

    @property
    def time_ms(self) -> int:
        return round(self.time_s * 1000)


# Times on the 10-minute file (GOP 2 s: keyframes at every even second).
FULL_CASES = (
    Case("on keyframe", 300.0),
    Case("just before keyframe", 301.9),
    Case("early, mid-GOP", 17.3),
    Case("late, mid-GOP", 555.5),
)
# The same positions relative to the GOP, scaled to the 60-second file.
QUICK_CASES = (
    Case("on keyframe", 30.0),
    Case("just before keyframe", 31.9),
    Case("early, mid-GOP", 1.73),
    Case("late, mid-GOP", 55.55),
)


def intra_case(cases: Sequence[Case]) -> Case:
    """The extra FrameType=intra case: at the worst time for an exact frame."""
    return Case("intra, just before keyframe", cases[1].time_s, "intra")


def baseline_argv(case: Case, src: Path, out: Path, ffmpeg: str = FFMPEG) -> list[str]:
    """Bare ffmpeg doing the same job. Exact frame: input seek. Intra: keyframe at or before T."""
    if case.frame_type == "intra":
        return [
            ffmpeg,
            "-noaccurate_seek",
            "-ss",
            f"{case.time_s:g}",
            "-i",
            str(src),
            "-fps_mode",
            "passthrough",
            "-frames:v",
            "1",
            "-y",
            str(out),
        ]
    return [ffmpeg, "-ss", f"{case.time_s:g}", "-i", str(src), "-frames:v", "1", "-y", str(out)]


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample."""
    data = sorted(values)
    if not data:
        raise ValueError("no samples")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class Samples:
    baseline: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)

    def paired_ratio(self) -> float:
        """Median of the per-round ours/baseline ratios (robust against slow drifts of a noisy VM)."""
        return statistics.median(o / b for o, b in zip(self.ours, self.baseline, strict=True))


# ---------------------------------------------------------------- server


def loadavg() -> str:
    """The 1-minute load average: other work on the box shows up here (2 cores: 2.0 is full)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so the finally blocks stop the server on either."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def default_program() -> str:
    """The venv's ``mps-snapshot`` next to this interpreter, else the one on PATH."""
    exe = Path(sys.executable).parent / "mps-snapshot"
    return str(exe if exe.exists() else shutil.which("mps-snapshot") or "mps-snapshot")


class Server:
    """``mps-snapshot serve`` as a child in its own process group, on a loopback port the OS picks."""

    def __init__(
        self, data_dir: Path, log_path: Path, *, program: Sequence[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.program = list(program) if program else [default_program()]
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.argv: list[str] = []

    def start(self) -> None:
        self.argv = [*self.program, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPS_SNAPSHOT_") or k == LOCAL_FFMPEG_ENV}
        env.update(MPS_SNAPSHOT_FFMPEG=FFMPEG, MPS_SNAPSHOT_FFPROBE=FFPROBE, MPS_SNAPSHOT_SHUTDOWN_GRACE_S="1")
        env.update(self.extra_env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    async def wait_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"server did not log its port within {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after a few seconds."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            # The group may outlive its leader (an ffmpeg child); make sure it is gone too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return


async def wait_serving(client: SnapshotClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if await client.health(timeout=1.0) == "SERVING":
                return
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server not SERVING within {START_TIMEOUT_S:g} s (last error: {last})")


# ---------------------------------------------------------------- measuring


def time_baseline(case: Case, src: Path, out: Path, ffmpeg: str = FFMPEG) -> float:
    argv = baseline_argv(case, src, out, ffmpeg)
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=CALL_TIMEOUT_S,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"baseline failed ({done.returncode}): {' '.join(argv)}\n{done.stderr.decode()[-2000:]}")
    return took


async def time_ours(client: SnapshotClient, case: Case, key: str, out_key: str) -> tuple[float, float]:
    """Seconds from call to response, and the media time (ms) of the frame returned."""
    started = time.perf_counter()
    job = await client.snapshot(
        bucket=IN_BUCKET,
        object=key,
        output_bucket=OUT_BUCKET,
        output_object=out_key,
        time_ms=case.time_ms,
        frame_type=case.frame_type,
    )
    took = time.perf_counter() - started
    if job.state != "Success" or len(job.images) != 1:
        raise RuntimeError(f"snapshot {case} failed: {job.state} {job.code} {job.message}")
    image = job.images[0]
    if (image.width, image.height) != (1920, 1080):
        raise RuntimeError(f"snapshot {case}: unexpected size {image.width}x{image.height}")
    return took, image.time


@dataclass
class Run:
    cases: list[Case]
    samples: dict[str, Samples]
    frame_times_ms: dict[str, float]
    cold_first_call_s: float
    cold_first_case: str
    cold_new_object_s: float
    warm_same_case_p50_s: float
    rounds: int
    media_path: str
    media_bytes: int
    server_argv: list[str]
    load_before: str = ""
    load_after: str = ""


async def measure(
    media_file: Path,
    media_bytes: int,
    cases: list[Case],
    rounds: int,
    work: Path,
    progress: Callable[[str], None],
    ffmpeg: str = FFMPEG,
) -> Run:
    """``ffmpeg``: the binary of both sides (the server gets it as MPS_SNAPSHOT_FFMPEG; ffprobe stays FFPROBE)."""
    data_dir = work / "data"
    server = Server(data_dir, work / "server.log", env={"MPS_SNAPSHOT_FFMPEG": ffmpeg})
    (data_dir / IN_BUCKET).mkdir(parents=True)
    src = data_dir / IN_BUCKET / "video.mp4"
    progress(f"copying {media_file.name} into bucket {IN_BUCKET}")
    shutil.copyfile(media_file, src)
    # A second object with the same bytes (a hard link: no extra page cache), for a cold probe on a warm server.
    os.link(src, data_dir / IN_BUCKET / "video-b.mp4")
    baseline_out = work / "baseline.jpg"
    samples = {c.name: Samples() for c in cases}
    frame_times: dict[str, float] = {}
    channel: aio.Channel | None = None
    try:
        server.start()
        assert server.proc is not None
        port = await server.wait_port()
        progress(f"server pid {server.proc.pid} on 127.0.0.1:{port}")
        channel = aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
        client = SnapshotClient(channel=channel, timeout=CALL_TIMEOUT_S)
        await wait_serving(client, server.proc)

        first = cases[0]
        cold_first, _ = await time_ours(client, first, "video.mp4", "cold.jpg")
        progress(f"cold first call ({first.name}): {cold_first * 1000:.0f} ms")
        progress("warm-up round (not counted)")
        for case in cases:
            time_baseline(case, src, baseline_out, ffmpeg)
            await time_ours(client, case, "video.mp4", "warmup.jpg")
        cold_new, _ = await time_ours(client, first, "video-b.mp4", "cold-b.jpg")
        progress(f"cold call on a new object, warm server: {cold_new * 1000:.0f} ms")

        for r in range(rounds):
            for case in cases:
                s = samples[case.name]
                out_key = f"{case.time_ms}-{case.frame_type}.jpg"
                # Alternate which side goes first, so neither always runs right after the other.
                if r % 2 == 0:
                    s.baseline.append(time_baseline(case, src, baseline_out, ffmpeg))
                    took, frame_ms = await time_ours(client, case, "video.mp4", out_key)
                else:
                    took, frame_ms = await time_ours(client, case, "video.mp4", out_key)
                    s.baseline.append(time_baseline(case, src, baseline_out, ffmpeg))
                s.ours.append(took)
                frame_times[case.name] = frame_ms
            progress(
                f"round {r + 1}/{rounds}: "
                + ", ".join(
                    f"{c.name} {samples[c.name].baseline[-1] * 1000:.0f}/{samples[c.name].ours[-1] * 1000:.0f} ms"
                    for c in cases
                )
            )
    except BaseException:
        print(f"--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if channel is not None:
            await channel.close()
        server.stop()
    return Run(
        cases=cases,
        samples=samples,
        frame_times_ms=frame_times,
        cold_first_call_s=cold_first,
        cold_first_case=first.name,
        cold_new_object_s=cold_new,
        warm_same_case_p50_s=statistics.median(samples[first.name].ours),
        rounds=rounds,
        media_path=str(media_file),
        media_bytes=media_bytes,
        server_argv=server.argv,
    )


# ---------------------------------------------------------------- reporting


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def table(run: Run) -> str:
    head = (
        "| case | T (s) | FrameType | n | ffmpeg p50 ms | ffmpeg p95 ms | ours p50 ms | ours p95 ms "
        "| ours/ffmpeg p50 | paired ratio | frame returned (ms) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for c in run.cases:
        s = run.samples[c.name]
        b50, o50 = statistics.median(s.baseline), statistics.median(s.ours)
        rows.append(
            f"| {c.name} | {c.time_s:g} | {c.frame_type} | {len(s.ours)} | {ms(b50)} | "
            f"{ms(percentile(s.baseline, 95))} | {ms(o50)} | {ms(percentile(s.ours, 95))} | "
            f"{o50 / b50:.2f} | {s.paired_ratio():.2f} | {run.frame_times_ms.get(c.name, 0):g} |"
        )
    normal = [run.samples[c.name] for c in run.cases if c.frame_type == "normal"]
    base_all = [x for s in normal for x in s.baseline]
    ours_all = [x for s in normal for x in s.ours]
    pooled = Samples([x for s in normal for x in s.baseline], [x for s in normal for x in s.ours])
    b50, o50 = statistics.median(base_all), statistics.median(ours_all)
    rows.append(
        f"| **overall (normal cases)** | | normal | {len(ours_all)} | **{ms(b50)}** | "
        f"{ms(percentile(base_all, 95))} | **{ms(o50)}** | {ms(percentile(ours_all, 95))} | "
        f"**{o50 / b50:.2f}** | {pooled.paired_ratio():.2f} | |"
    )
    return head + "\n".join(rows) + "\n"


def cold_lines(run: Run) -> str:
    extra_first = run.cold_first_call_s - run.warm_same_case_p50_s
    extra_new = run.cold_new_object_s - run.warm_same_case_p50_s
    return (
        f"- Cold, first call of a fresh server ({run.cold_first_case}): **{ms(run.cold_first_call_s)} ms**, "
        f"{ms(extra_first)} ms above that case's warm p50 ({ms(run.warm_same_case_p50_s)} ms).\n"
        f"- Cold, first call on a new object (server already warm; one ffprobe more): "
        f"**{ms(run.cold_new_object_s)} ms**, {ms(extra_new)} ms above the warm p50.\n"
    )


def overall_ratio(run: Run) -> float:
    normal = [run.samples[c.name] for c in run.cases if c.frame_type == "normal"]
    return statistics.median([x for s in normal for x in s.ours]) / statistics.median(
        [x for s in normal for x in s.baseline]
    )


def intra_ratio(run: Run) -> float | None:
    """Paired p50 ratio of the intra case (ours over bare ffmpeg's keyframe snapshot)."""
    intra = next((c for c in run.cases if c.frame_type == "intra"), None)
    if intra is None:
        return None
    sample = run.samples[intra.name]
    return statistics.median(sample.ours) / statistics.median(sample.baseline)


def verdict(run: Run) -> str:
    ratio = overall_ratio(run)
    normal = [c for c in run.cases if c.frame_type == "normal"]
    ratios = {
        c.name: statistics.median(run.samples[c.name].ours) / statistics.median(run.samples[c.name].baseline)
        for c in normal
    }
    misses = [f'"{name}" at {r:.2f}x' for name, r in ratios.items() if r > AIM_RATIO]
    status = "meets" if ratio <= AIM_RATIO else "misses"
    per_case = f"{len(normal) - len(misses)} of {len(normal)} normal cases are within {AIM_RATIO}x" + (
        f"; missing: {', '.join(misses)}." if misses else "."
    )
    return (
        f"Overall p50 is {ratio:.2f}x bare ffmpeg, which {status} the aim (p50 within {AIM_RATIO}x of bare "
        f"ffmpeg) overall; per case, {per_case}"
    )


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ffv = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, timeout=30, check=False)
    mem = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.0f} GiB"

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=False)
        return done.stdout.strip()

    commit = git("describe", "--always") or "unknown"
    # Only changes to the measured code count (this benchmark rewrites docs/ itself).
    if git("status", "--porcelain", "--", "server", "client", "pyproject.toml"):
        commit += " + uncommitted changes in server/, client/ or pyproject.toml"
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ffmpeg": ffv.stdout.splitlines()[0] if ffv.stdout else "unknown",
        "commit": commit,
    }


def section(run: Run, info: dict[str, str], argv: Sequence[str], quick: bool, when: str) -> str:
    bench_cmd = ".venv/bin/python -m bench.bench_sync " + " ".join(argv)
    media_obj = media.QUICK if quick else media.FULL
    enc = " ".join(media.encode_argv(Path("bench/.media") / media_obj.path.name, media_obj.duration_s))
    c0 = run.cases[0]
    intra = next((c for c in run.cases if c.frame_type == "intra"), None)
    lines = [
        "## Sync snapshot latency",
        "",
        f"Measured {when} by `bench/bench_sync.py`{' (quick mode: 60-s file)' if quick else ''}. "
        f"{run.rounds} interleaved rounds per case after one uncounted warm-up round. "
        "Latencies in milliseconds: *ffmpeg* is the bare `ffmpeg` process, spawn to exit; *ours* is one "
        "synchronous `SubmitSnapshotJob` through gRPC (`SnapshotClient.snapshot`, full size), call to response, "
        "with the server's probe cache warm. *paired ratio* is the median of the per-round ours/ffmpeg ratios.",
        "",
        table(run),
        "The intra row is compared with bare ffmpeg's own keyframe snapshot (`-noaccurate_seek … -fps_mode "
        "passthrough`, see Commands), not with the exact-frame command.",
        "",
        cold_lines(run),
        f"**Result:** {verdict(run)}",
        "",
        "### Setup",
        "",
        f"- Date: {when}",
        f"- Machine: nproc {info['nproc']}, CPU `{info['cpu']}`, {info['memory']} RAM, {info['os']}, "
        f"Python {info['python']}",
        f"- ffmpeg: `{info['ffmpeg']}` (`{FFMPEG}`, used by both sides)",
        f"- Code: `{info['commit']}`",
        f"- 1-minute load average before / after the run: {run.load_before} / {run.load_after} (the benchmark "
        "itself keeps about one core busy; more means other work shared the machine).",
        f"- Media: `{Path(run.media_path).name}`, {run.media_bytes:,} bytes: 1920x1080, 30 fps, H.264 "
        "(x264 veryfast, about 6 Mbit/s), keyframe every 2 s, AAC, faststart; testsrc2 plus noise "
        "(the reference encode of /work/shared/reference/perf-anchors.md, file a). The server and the baseline "
        "read the same copy, in the page cache.",
        "",
        "### Commands",
        "",
        "```bash",
        f"{'.venv/bin/python -m bench.media --quick' if quick else '.venv/bin/python -m bench.media'}"
        "   # once; skipped when the file exists",
        f"{enc}",
        bench_cmd.strip() + "   # this run",
        "# the server, started by the benchmark:",
        "mps-snapshot serve --listen 127.0.0.1:0 --data-dir $TMP/data   "
        f"# env MPS_SNAPSHOT_FFMPEG={FFMPEG} MPS_SNAPSHOT_FFPROBE={FFPROBE}",
        "# baseline, per normal case:",
        " ".join(baseline_argv(c0, Path("FILE"), Path("out.jpg"))).replace(f"{c0.time_s:g}", "T"),
    ]
    if intra is not None:
        lines += [
            "# baseline for the intra case (keyframe at or before T, the bare way):",
            " ".join(baseline_argv(intra, Path("FILE"), Path("out.jpg"))).replace(f"{intra.time_s:g}", "T"),
        ]
    lines += ["```", ""]
    return "\n".join(lines)


DOC_HEADER = """# Performance

Benchmark results for mps-snapshot. Each `##` section below belongs to one benchmark script under `bench/`,
which rewrites only its own section (between its `bench:NAME` markers) when re-run; add new benchmarks as new
sections with their own markers.
"""


def write_section(doc: Path, name: str, body: str) -> None:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = doc.read_text() if doc.exists() else DOC_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)


def save_raw(run: Run, info: dict[str, str], when: str, quick: bool) -> Path:
    """All samples as JSON under bench/results/ (gitignored); never overwrites an earlier run."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"sync{'-quick' if quick else ''}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    path = RESULTS_DIR / f"{stem}.json"
    for n in range(1, 1000):
        if not path.exists():
            break
        path = RESULTS_DIR / f"{stem}-{n}.json"
    path.write_text(json.dumps({"when": when, "quick": quick, "machine": info, **asdict(run)}, indent=1))
    return path


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, help="counted rounds per case (default 10; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="60-second file, scaled times: a smoke test")
    doc = p.add_mutually_exclusive_group()
    doc.add_argument("--write-doc", action="store_true", help="update docs/performance.md even with --quick")
    doc.add_argument("--no-doc", action="store_true", help="do not touch docs/performance.md")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 10
    if not 1 <= args.rounds <= 1000:
        p.error("--rounds must be 1-1000")
    return args


def run(argv: Sequence[str] | None = None) -> Run:
    """Parse ``argv``, measure, print the report, save the raw samples and (unless told not to) write the doc."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    media_obj = media.QUICK if args.quick else media.FULL
    media_file = media.ensure(media_obj)
    cases = list(QUICK_CASES if args.quick else FULL_CASES)
    cases.append(intra_case(cases))

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    load_before = loadavg()
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="mps-bench-sync-") as tmp:
        result = asyncio.run(measure(media_file, media_file.stat().st_size, cases, args.rounds, Path(tmp), progress))
    result.load_before, result.load_after = load_before, loadavg()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    print()
    print(table(result))
    print(cold_lines(result))
    print(verdict(result))
    print(f"load average before/after: {result.load_before}/{result.load_after}")
    raw = save_raw(result, info, when, args.quick)
    print(f"\nraw samples: {raw}")
    if args.write_doc or not (args.quick or args.no_doc):
        write_section(DOC, SECTION, section(result, info, argv, args.quick, when))
        print(f"updated {DOC}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
