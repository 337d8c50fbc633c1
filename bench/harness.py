"""Shared machinery of the benchmark suite (``python -m bench``).

- ``Session``: the real server (``mps-snapshot serve`` through ``bench_sync.Server``) on a loopback
  port the OS picks, with a temporary data dir whose input bucket holds hard links to the media.
- ``Stopwatch``: wall time of one measurement, the CPU our own processes used in it (the server
  with its ffmpeg children, or the baseline process with its children), and the CPU *other* work
  on the machine took meanwhile (``/proc/stat`` busy time minus ours), in average cores. A round
  during which other work took more than ``FOREIGN_LIMIT_CORES`` is run again (bounded).
- ``run_rounds``: interleaved rounds; each round runs every side once, the order rotating.
- ``RssSampler``: VmRSS/VmHWM of the server process every 100 ms, plus its ffmpeg children.
- Small helpers: the job request, a timed job (Submit to the final state seen through
  WatchSnapshotJob), a timed process, statistics and markdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio  # type: ignore[import-untyped, unused-ignore]

from bench import bench_sync as bs
from mps_snapshot_client._client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: A round during which other work used more than this many cores on average is run again.
FOREIGN_LIMIT_CORES = 0.3
#: Before a benchmark starts, wait (bounded) while other work uses more than this.
QUIET_LIMIT_CORES = 0.5
QUIET_WAIT_S = 90.0
#: Each round is tried at most this many times (the attempt with the least other work is kept).
MAX_ATTEMPTS = 2
IN_BUCKET = bs.IN_BUCKET
OUT_BUCKET = bs.OUT_BUCKET
SUBMIT_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 1800.0
PROCESS_TIMEOUT_S = 1800.0

Progress = Callable[[str], None]


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def loadavg() -> str:
    """The three load averages (1, 5, 15 min); 2 cores: 2.0 is a full machine."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------- CPU accounting


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (user, nice, system, irq, softirq) since boot."""
    return machine_cpu_s()[0]


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds since boot; steal is time the hypervisor gave to other guests."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def io_stall_s() -> float:
    """Seconds in which every non-idle task waited for I/O (PSI ``full``, /proc/pressure/io), since boot:
    reads that missed the page cache show up here, and not as CPU."""
    try:
        for line in Path("/proc/pressure/io").read_text().splitlines():
            if line.startswith("full"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of a live process: itself, and the children it has reaped."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = [int(x) for x in text[text.rindex(")") + 2 :].split()[11:15]]
    return (fields[0] + fields[1]) / CLK_TCK, (fields[2] + fields[3]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of a live process: itself and the children it has reaped."""
    return sum(proc_cpu_split(pid))


def own_cpu_s() -> float:
    """This process and every child it has reaped (baselines, vcsi and their own children)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Measure:
    seconds: float
    cpu_s: float
    foreign_cores: float
    max_rss_kb: int = 0
    #: CPU of the server process itself (Python, gRPC, Pillow), apart from its ffmpeg children.
    server_self_s: float = 0.0
    #: Cores the hypervisor gave to other guests meanwhile (steal time), on average.
    steal_cores: float = 0.0
    #: Seconds during which all running tasks waited for I/O (PSI full).
    io_stall_s: float = 0.0


class Stopwatch:
    """Wall time, our CPU and other work's CPU over one measurement."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.busy0, self.steal0 = machine_cpu_s()
        self.io0 = io_stall_s()
        self.ours0 = self._ours()
        self.self0 = proc_cpu_split(server_pid)[0] if server_pid else 0.0
        self.t0 = time.perf_counter()

    def _ours(self) -> float:
        if not self.server_pid:
            return own_cpu_s()
        # Live children count too: the warm decoder workers live across jobs (their CPU is
        # in cutime only once the server has reaped them), ffmpeg runs are reaped at once.
        live = sum(proc_cpu_s(k) for k in _children(self.server_pid))
        return own_cpu_s() + proc_cpu_s(self.server_pid) + live

    def stop(self) -> Measure:
        seconds = time.perf_counter() - self.t0
        ours = self._ours() - self.ours0
        busy, steal = machine_cpu_s()
        foreign = max(0.0, (busy - self.busy0) - ours)
        self_s = proc_cpu_split(self.server_pid)[0] - self.self0 if self.server_pid else 0.0
        per_s = 1 / seconds if seconds > 0 else 0.0
        return Measure(
            seconds,
            ours,
            foreign * per_s,
            server_self_s=self_s,
            steal_cores=(steal - self.steal0) * per_s,
            io_stall_s=io_stall_s() - self.io0,
        )


async def quiet_check(server_pid: int | None, log: Progress) -> tuple[str, float]:
    """The load average, and the cores other work uses while we are idle (2-s samples); while that
    is above ``QUIET_LIMIT_CORES``, wait, at most ``QUIET_WAIT_S``."""
    deadline = time.monotonic() + QUIET_WAIT_S
    load = loadavg()
    for _ in range(1000):
        sw = Stopwatch(server_pid)
        await asyncio.sleep(2.0)
        foreign = sw.stop().foreign_cores
        if foreign <= QUIET_LIMIT_CORES or time.monotonic() > deadline:
            return load, foreign
        log(f"other work is using {foreign:.2f} cores (load {loadavg()}); waiting for it to settle")
        await asyncio.sleep(3.0)
        load = loadavg()
    return load, foreign


# ---------------------------------------------------------------- rounds


@dataclass
class Sample:
    side: str
    round: int
    seconds: float
    cpu_s: float
    foreign_cores: float
    attempt: int = 1
    extra: dict[str, float] = field(default_factory=dict)


def sample(side: str, rnd: int, m: Measure, attempt: int, **extra: float) -> Sample:
    base = {"steal_cores": m.steal_cores, "io_stall_s": m.io_stall_s}
    return Sample(side, rnd, m.seconds, m.cpu_s, m.foreign_cores, attempt, {**base, **extra})


@dataclass(frozen=True)
class Side:
    """One side of a benchmark: ``run(round, attempt)`` measures it once."""

    name: str
    run: Callable[[int, int], Awaitable[Sample]]


@dataclass
class Rounds:
    sides: list[str]
    kept: list[dict[str, Sample]] = field(default_factory=list)
    discarded: list[dict[str, Sample]] = field(default_factory=list)

    def values(self, side: str, key: str = "seconds") -> list[float]:
        return [value(r[side], key) for r in self.kept if side in r]

    def median(self, side: str, key: str = "seconds") -> float:
        return statistics.median(self.values(side, key))

    def worst_foreign(self, rnd: dict[str, Sample]) -> float:
        return max(s.foreign_cores for s in rnd.values())


def value(s: Sample, key: str) -> float:
    if key == "seconds":
        return s.seconds
    if key == "cpu_s":
        return s.cpu_s
    return s.extra[key]


async def run_rounds(
    sides: Sequence[Side], rounds: int, log: Progress, label: str, prepare: Callable[[], None] | None = None
) -> Rounds:
    """Interleaved rounds: each runs every side once, in an order that rotates from round to round;
    ``prepare`` (untimed) runs before each side. A round during which other work took more than
    FOREIGN_LIMIT_CORES is tried again (at most MAX_ATTEMPTS tries; the try with the least other work
    is kept, the others are reported)."""
    out = Rounds([s.name for s in sides])
    for r in range(rounds):
        shift = r % len(sides)
        order = list(sides[shift:]) + list(sides[:shift])
        best: dict[str, Sample] | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            got: dict[str, Sample] = {}
            for side in order:
                if prepare is not None:
                    await asyncio.to_thread(prepare)
                s = await side.run(r + 1, attempt)
                got[side.name] = s
                log(
                    f"{label} round {r + 1}/{rounds} (try {attempt}): {side.name} {s.seconds:.2f} s, "
                    f"cpu {s.cpu_s:.1f} s, other work {s.foreign_cores:.2f} cores, "
                    f"I/O stall {s.extra.get('io_stall_s', 0.0):.2f} s"
                )
            if best is None or out.worst_foreign(got) < out.worst_foreign(best):
                if best is not None:
                    out.discarded.append(best)
                best = got
            else:
                out.discarded.append(got)
            if out.worst_foreign(got) <= FOREIGN_LIMIT_CORES:
                break
            if attempt < MAX_ATTEMPTS:
                log(f"{label} round {r + 1}: other work took {out.worst_foreign(got):.2f} cores; running it again")
        assert best is not None
        out.kept.append(best)
    return out


# ---------------------------------------------------------------- processes


def _spawn(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None) -> tuple[subprocess.Popen[bytes], Path]:
    cwd.mkdir(parents=True, exist_ok=True)
    err_path = cwd / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    return proc, err_path


async def timed_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    server_pid: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = PROCESS_TIMEOUT_S,
) -> Measure:
    """Run a process to its end (own process group, killed on timeout or cancellation); wall time,
    CPU (with its children), other work's CPU and its peak RSS (``wait4``)."""
    sw = Stopwatch(server_pid)
    proc, err_path = _spawn(argv, cwd, env)
    reaper = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))
    try:
        _, status, usage = await asyncio.wait_for(asyncio.shield(reaper), timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reaper, 30)
        proc.returncode = -9
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = sw.stop()
    m.max_rss_kb = usage.ru_maxrss
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{Path(argv[0]).name} exited with {proc.returncode}: {' '.join(argv)}\n{tail}")
    return m


def first_line_version(binary: str) -> str:
    done = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


def probe_duration(path: Path) -> float:
    """The video stream's duration in seconds (Debian ffprobe)."""
    argv = [bs.FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=duration", "-of", "csv=p=0"]
    done = subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=60, check=True)
    return float(done.stdout.strip().splitlines()[0])


def warm_page_cache(paths: Sequence[Path]) -> None:
    """Read each file once, so every side starts from the page cache (24 GiB RAM here)."""
    for path in paths:
        if not path.is_file():  # a file only some benchmarks use, not made for this run
            continue
        with open(path, "rb") as f:
            for _ in range(1_000_000):
                if not f.read(8 * 1024 * 1024):
                    break


# ---------------------------------------------------------------- the server


class Session:
    """One server with its own data dir; ``objects`` maps an input key to the file it links to."""

    def __init__(
        self,
        work: Path,
        objects: Mapping[str, Path],
        *,
        env: Mapping[str, str] | None = None,
        trace: bool = False,
        program: Sequence[str] | None = None,
    ) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.data_dir = work / "data"
        self.objects = dict(objects)
        self.trace_path = work / "trace.jsonl" if trace else None
        extra = dict(env or {})
        prog = list(program) if program else None
        if self.trace_path is not None:
            extra.update(BENCH_TRACE_FILE=str(self.trace_path), BENCH_TRACE_ARGV="1")
            prog = [sys.executable, "-m", "bench.traced_server"]
        self.server = bs.Server(self.data_dir, work / "server.log", program=prog, env=extra)
        self.channel: aio.Channel | None = None
        self._client: SnapshotClient | None = None

    @property
    def client(self) -> SnapshotClient:
        assert self._client is not None
        return self._client

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def input_path(self, key: str) -> Path:
        return self.data_dir / IN_BUCKET / key

    def out_dir(self, prefix: str) -> Path:
        return self.data_dir / OUT_BUCKET / prefix

    async def start(self) -> None:
        (self.data_dir / IN_BUCKET).mkdir(parents=True, exist_ok=True)
        (self.data_dir / OUT_BUCKET).mkdir(parents=True, exist_ok=True)
        for key, src in self.objects.items():
            dst = self.input_path(key)
            try:
                os.link(src, dst)  # same inode: the server and the baselines share the page cache
            except OSError:
                shutil.copyfile(src, dst)
        if self.trace_path is not None:
            self.trace_path.touch()
        self.server.start()
        assert self.server.proc is not None
        port = await self.server.wait_port()
        self.channel = aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
        self._client = SnapshotClient(channel=self.channel, timeout=SUBMIT_TIMEOUT_S)
        await bs.wait_serving(self._client, self.server.proc)

    async def stop(self) -> None:
        try:
            if self.channel is not None:
                await self.channel.close()
        finally:
            self.server.stop()

    def log_text(self) -> str:
        try:
            return self.server.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def trace_events(self) -> list[dict[str, Any]]:
        if self.trace_path is None or not self.trace_path.exists():
            return []
        events = []
        for line in self.trace_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events


@contextlib.asynccontextmanager
async def session(
    work: Path,
    objects: Mapping[str, Path],
    log: Progress,
    *,
    env: Mapping[str, str] | None = None,
    trace: bool = False,
) -> AsyncIterator[Session]:
    """A started server; stopped (its whole process group) however the block ends."""
    s = Session(work, objects, env=env, trace=trace)
    try:
        await s.start()
        log(f"server pid {s.pid} ({'traced, ' if trace else ''}{s.server.log_path})")
        yield s
    except BaseException:
        print(f"--- server log (tail) ---\n{s.server.log_tail()}", file=sys.stderr)
        raise
    finally:
        await s.stop()


# ---------------------------------------------------------------- jobs


def job_request(key: str, out_prefix: str, config: Mapping[str, Any], *, tile: Mapping[str, Any] | None = None) -> Any:
    """An MPS JSON request (as a dict) for an asynchronous job on ``key``, outputs under ``out_prefix``."""
    cfg: dict[str, Any] = {"OutputFile": {"Bucket": OUT_BUCKET, "Object": f"{out_prefix}/{{Count}}.jpg"}, **config}
    if tile is not None:
        cfg["TileOut"] = dict(tile)
        cfg["TileOutputFile"] = {"Bucket": OUT_BUCKET, "Object": f"{out_prefix}/sheet-{{TileCount}}.jpg"}
    return {"Input": {"Bucket": IN_BUCKET, "Object": key}, "SnapshotConfig": cfg}


async def timed_job(s: Session, request: Any, *, timeout_s: float = JOB_TIMEOUT_S) -> tuple[Measure, res.SnapshotJob]:
    """Submit, then follow WatchSnapshotJob (SnapshotClient.wait) to the final state; fails unless Success."""
    sw = Stopwatch(s.pid)
    response = await s.client.submit(request)
    job = await s.client.wait(response.snapshot_job.id, timeout=timeout_s)
    m = sw.stop()
    if job.state != "Success":
        raise RuntimeError(f"job {job.id} ended {job.state}: {job.code} {job.message}")
    return m, job


def sequence_times_ms(time_ms: float, interval_s: int, num: int, duration_s: float) -> list[float]:
    """The points of ``Time``/``Interval``/``Num`` (docs/jobs.md), those before the end."""
    end_ms = duration_s * 1000
    if interval_s == 0:
        pts = [time_ms + k * (end_ms - time_ms) / num for k in range(num)]
    else:
        pts = [time_ms + k * interval_s * 1000 for k in range(num)]
    return [t for t in pts if t < end_ms]


def plan_lines(log_text: str, since: int = 0) -> list[str]:
    """The ``extraction plan: ...`` lines the server logged (from character ``since`` of its log)."""
    out = []
    for line in log_text[since:].splitlines():
        if "extraction plan:" in line:
            out.append(line.split("extraction plan:", 1)[1].strip())
    return out


# ---------------------------------------------------------------- where a job's time goes


@dataclass
class RunStats:
    kind: str
    runs: int
    points_per_run: float
    median_s: float
    max_s: float
    total_s: float


def _kind(argv: Sequence[str]) -> tuple[str, int]:
    prog = Path(argv[0]).name if argv else "?"
    inputs = sum(1 for a in argv if a == "-i")
    if "ffprobe" in prog:
        return "ffprobe", 0
    if inputs > 1:
        return "ffmpeg seek batch", inputs
    text = " ".join(argv)
    if "-t" in argv and "select=" in text:
        return "ffmpeg decode pass (exact)", text.count("between(")
    if "-t" in argv:
        return "ffmpeg decode pass (keyframes)", 0
    if "-discard" in argv:
        return "ffmpeg keyframe pass", text.count("eq(n,")
    if "-skip_frame" in argv:
        return "ffmpeg intra seek", 1
    return "ffmpeg single seek", 1


def explain_runs(events: Sequence[Mapping[str, Any]], since_epoch: float, until_epoch: float) -> dict[str, Any]:
    """Per kind of process: count, points per run, median/max/total wall time; and how much of the
    job's wall time had at least one process running, and on average how many."""
    runs = [e for e in events if e.get("step") == "run" and since_epoch <= float(e.get("start", 0)) <= until_epoch]
    by_kind: dict[str, list[tuple[float, int]]] = {}
    spans: list[tuple[float, float]] = []
    for e in runs:
        kind, points = _kind([str(a) for a in e.get("argv", [e.get("what", "?")])])
        by_kind.setdefault(kind, []).append((float(e["s"]), points))
        spans.append((float(e["start"]), float(e["start"]) + float(e["s"])))
    stats = [
        RunStats(
            kind,
            len(v),
            statistics.mean(p for _, p in v),
            statistics.median(s for s, _ in v),
            max(s for s, _ in v),
            sum(s for s, _ in v),
        )
        for kind, v in sorted(by_kind.items())
    ]
    covered = 0.0
    end = -1.0
    for a, b in sorted(spans):
        if b <= end:
            continue
        covered += b - max(a, end)
        end = b
    wall = until_epoch - since_epoch
    busy = sum(b - a for a, b in spans)
    return {"stats": stats, "covered_s": covered, "wall_s": wall, "process_s": busy}


def explain_markdown(ex: Mapping[str, Any], plans: Sequence[str]) -> list[str]:
    lines = []
    if plans:
        lines += [f"- Extraction plan (server log): `{p}`" for p in plans]
    stats: list[RunStats] = ex["stats"]
    if stats:
        lines += [
            "",
            "| processes | runs | points per run | median s | max s | total s |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s.kind} | {s.runs} | {s.points_per_run:.1f} | {s.median_s:.2f} | {s.max_s:.2f} | {s.total_s:.1f} |"
            for s in stats
        ]
        wall = ex["wall_s"]
        lines += [
            "",
            f"Job wall time (traced server) {wall:.2f} s; at least one ffmpeg/ffprobe running for "
            f"{ex['covered_s']:.2f} s of it ({100 * ex['covered_s'] / wall:.0f} %); process time "
            f"{ex['process_s']:.1f} s, i.e. {ex['process_s'] / wall:.2f} processes running on average; "
            f"outside any process (Submit, planning, publishing, SQLite, gRPC): {wall - ex['covered_s']:.2f} s.",
        ]
    return lines


# ---------------------------------------------------------------- memory


@dataclass
class RssTrace:
    idle_rss_kb: int = 0
    max_rss_kb: int = 0
    hwm_kb: int = 0
    max_children_kb: int = 0
    #: The highest sum of VmHWM (each process's own peak so far) over the children alive at
    #: one sample: the summed peak of the ffmpeg processes running at once, which VmRSS
    #: samples can miss between two samples.
    max_children_hwm_kb: int = 0
    max_total_kb: int = 0
    samples: int = 0


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError, ValueError):
                kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


class RssSampler:
    """VmRSS and VmHWM of ``pid`` (and the summed VmRSS of its children) every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.1, max_s: float = 3600.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.max_samples = int(max_s / interval_s)
        self.trace = RssTrace(idle_rss_kb=_status_kb(pid, "VmRSS"))
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        t = self.trace
        rss = _status_kb(self.pid, "VmRSS")
        children = _children(self.pid)
        kids = sum(_status_kb(k, "VmRSS") for k in children)
        t.max_children_hwm_kb = max(t.max_children_hwm_kb, sum(_status_kb(k, "VmHWM") for k in children))
        t.max_rss_kb = max(t.max_rss_kb, rss)
        t.hwm_kb = max(t.hwm_kb, _status_kb(self.pid, "VmHWM"))
        t.max_children_kb = max(t.max_children_kb, kids)
        t.max_total_kb = max(t.max_total_kb, rss + kids)
        t.samples += 1

    async def _loop(self) -> None:
        for _ in range(self.max_samples):
            self._sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> RssTrace:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        return self.trace


# ---------------------------------------------------------------- reporting


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


@dataclass
class Row:
    """One line of the summary table."""

    benchmark: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None
    load: str
    miss: str = ""
    section: str = ""


def met_text(met: bool | None) -> str:
    return "—" if met is None else ("**yes**" if met else "**no**")


def speedup_row(
    benchmark: str,
    ours_s: float,
    base_s: float,
    target: float | None,
    load: str,
    section: str,
    baseline_label: str = "",
) -> Row:
    """ours and baseline medians in seconds; the ratio is baseline/ours (how many times faster)."""
    ratio = base_s / ours_s
    met = None if target is None else ratio >= target
    miss = ""
    if met is False and target is not None:
        need = base_s / target
        miss = (
            f"{ratio:.2f}x against the {target:g}x target: {100 * (1 - ratio / target):.0f} % short; ours would "
            f"need {need:.2f} s instead of {ours_s:.2f} s ({ours_s - need:.2f} s less)"
        )
    return Row(
        benchmark,
        f"{fmt_s(ours_s)} s",
        f"{fmt_s(base_s)} s{baseline_label}",
        f"{ratio:.2f}x faster",
        "—" if target is None else f"≥ {target:g}x",
        met,
        load,
        miss,
        section,
    )


def rounds_table(r: Rounds, sides: Sequence[tuple[str, str]], ratio_of: Sequence[tuple[str, str, str]]) -> list[str]:
    """Per-round seconds for each side, per-round ratios (baseline/ours), other work, then medians.
    ``sides``: (side, column title); ``ratio_of``: (column title, numerator side, denominator side)."""
    head = [
        "round",
        *[t for _, t in sides],
        *[t for t, _, _ in ratio_of],
        "other work (cores, max of sides)",
        "steal (cores, max)",
        "I/O stall s (max)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, rnd in enumerate(r.kept, 1):
        cells = [
            str(i)
            + (f" (try {max(s.attempt for s in rnd.values())})" if any(s.attempt > 1 for s in rnd.values()) else "")
        ]
        cells += [fmt_s(rnd[s].seconds) if s in rnd else "—" for s, _ in sides]
        cells += [f"{rnd[a].seconds / rnd[b].seconds:.2f}x" for _, a, b in ratio_of]
        cells.append(f"{r.worst_foreign(rnd):.2f}")
        cells.append(f"{max(s.extra.get('steal_cores', 0.0) for s in rnd.values()):.2f}")
        cells.append(f"{max(s.extra.get('io_stall_s', 0.0) for s in rnd.values()):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    med = ["**median**", *[f"**{fmt_s(r.median(s))}**" for s, _ in sides]]
    med += [f"**{r.median(a) / r.median(b):.2f}x**" for _, a, b in ratio_of]
    med += ["", "", ""]
    lines.append("| " + " | ".join(med) + " |")
    if r.discarded:
        lines.append("")
        lines.append(
            "Rounds run again because other work took more than "
            f"{FOREIGN_LIMIT_CORES:g} cores during them (not counted): "
            + "; ".join(
                f"round {next(iter(d.values())).round} try {next(iter(d.values())).attempt}: "
                + ", ".join(f"{k} {fmt_s(v.seconds)} s" for k, v in d.items())
                + f", other work {r.worst_foreign(d):.2f} cores"
                for d in r.discarded
            )
            + "."
        )
    return lines


def save_json(name: str, payload: Any) -> Path:
    """Raw results under bench/results/ (gitignored); never overwrites an earlier file."""
    bs.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    path = bs.RESULTS_DIR / f"{stem}.json"
    for n in range(1, 1000):
        if not path.exists():
            break
        path = bs.RESULTS_DIR / f"{stem}-{n}.json"
    path.write_text(json.dumps(payload, indent=1, default=_jsonable))
    return path


def _jsonable(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ---------------------------------------------------------------- the suite's shared state


def code_version() -> str:
    """The commit, and whether server/, client/ or pyproject.toml differ from it (other sessions may
    change the code while a long run goes on, so each section records it when it is written)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(bs.ROOT), *args], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip()

    commit = git("describe", "--always") or "unknown"
    if git("status", "--porcelain", "--", "server", "client", "pyproject.toml"):
        commit += " + uncommitted changes"
    return commit


@dataclass
class Suite:
    """What every benchmark of one ``python -m bench`` run shares."""

    quick: bool
    rounds: int
    work: Path
    write_doc: bool
    command: str
    media_a: Path
    media_c: Path
    dur_a: float
    dur_c: float
    vcsi: str | None = None
    vcsi_note: str = ""
    static_ffmpeg: str | None = None
    static_note: str = ""
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    loads: dict[str, str] = field(default_factory=dict)

    def write(self, name: str, body: str) -> None:
        """Write the section ``bench:NAME`` of docs/performance.md, or (docs left alone) print it."""
        if self.write_doc:
            bs.write_section(bs.DOC, name, body)
            progress(f"updated section bench:{name} of {bs.DOC}")
        else:
            print(f"\n<!-- bench:{name} (not written) -->\n{body}\n", flush=True)

    def header(self, title: str, module: str, load: str, foreign: float) -> list[str]:
        mode = " (quick mode: 60-s files, smoke test)" if self.quick else ""
        return [
            f"## {title}",
            "",
            f"Measured {now_utc()} by `bench/{module}` as part of `{self.command}`{mode}, code `{code_version()}`. "
            f"Load average at the start (1/5/15 min): {load}; other work on the machine just before "
            f"(2-s sample while the suite was idle): {foreign:.2f} cores.",
            "",
        ]

    def warm(self) -> None:
        """Read the media into the page cache again (the VM's memory reclaim evicts idle pages), so no
        side pays for disk reads the other did not."""
        warm_page_cache([self.media_a, self.media_c])

    def note_load(self, name: str, load: str, idle: float) -> None:
        """The load average at a benchmark's start, and the cores other work used just before it."""
        self.loads[name] = f"{load} / {idle:.2f}"

    def rounds_text(self) -> str:
        return f"{self.rounds} round{'' if self.rounds == 1 else 's'}"

    def media_note(self) -> str:
        length = f"{self.dur_a / 60:g} min" if self.dur_a >= 60 else f"{self.dur_a:g} s"
        return (
            f"Media: `{self.media_a.name}` ({length} of 1080p30 H.264, keyframe every 2 s) and `{self.media_c.name}` "
            "(the same content, keyframe every 10 s), both faststart, made by `bench/media.py` with the "
            "reference encodes of perf-anchors.md (files a and c); the server's bucket holds hard links to them, "
            "so both sides read the same bytes from the page cache."
        )


# ---------------------------------------------------------------- replaying a job's ffmpeg runs


def job_argvs(events: Sequence[Mapping[str, Any]], since_epoch: float, until_epoch: float) -> list[list[str]]:
    """The ffmpeg argvs (not ffprobe) a traced job ran, in start order."""
    runs = [
        e
        for e in events
        if e.get("step") == "run"
        and str(e.get("what", "")).startswith("ffmpeg")  # also a static build's "ffmpeg-linux-…"
        and since_epoch <= float(e.get("start", 0)) <= until_epoch
    ]
    return [[str(a) for a in e["argv"]] for e in sorted(runs, key=lambda e: float(e["start"])) if e.get("argv")]


def with_threads_1(argv: Sequence[str]) -> list[str]:
    """``-threads 1`` before every input: one decoder thread per input."""
    out: list[str] = []
    for a in argv:
        if a == "-i":
            out += ["-threads", "1"]
        out.append(a)
    return out


def without_copyts(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if a != "-copyts"]


def replay_variants(argvs: Sequence[Sequence[str]]) -> dict[str, Callable[[Sequence[str]], list[str]]]:
    """The changes worth measuring for these runs (each keeps what the runs compute, only the cost
    is measured: without -copyts the frame times would need shifting by the seek time)."""
    variants: dict[str, Callable[[Sequence[str]], list[str]]] = {
        "as the server ran them": list,
        "`-threads 1` on every input": with_threads_1,
    }
    if any("-skip_frame" in a and "-copyts" in a and a.count("-i") > 1 for a in argvs):
        variants["seek batches without `-copyts`"] = without_copyts
        variants["without `-copyts`, `-threads 1` on every input"] = lambda a: with_threads_1(without_copyts(a))
    return variants


async def replay(
    argvs: Sequence[Sequence[str]], tmp_root: Path, scratch: Path, workers: int, transform: Callable[..., list[str]]
) -> Measure:
    """Run the job's ffmpeg argvs bare (no setpriv/prlimit), ``workers`` at a time, in their order, with
    every path under ``tmp_root`` (the server's work folders, gone by now) moved under ``scratch``."""
    prefix = str(tmp_root) + "/"
    queue = list(enumerate(argvs))
    failures: list[str] = []

    async def worker() -> None:
        for _ in range(len(argvs)):
            if not queue:
                return
            k, argv = queue.pop(0)
            moved = [a.replace(prefix, f"{scratch}/{k}/") if a.startswith(prefix) else a for a in transform(argv)]
            for a in moved:
                if a.startswith(f"{scratch}/"):
                    Path(a).parent.mkdir(parents=True, exist_ok=True)
            proc = await asyncio.create_subprocess_exec(
                *moved, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                code = await asyncio.wait_for(proc.wait(), PROCESS_TIMEOUT_S)
            except BaseException:
                proc.kill()
                await proc.wait()
                raise
            if code != 0:
                failures.append(f"run {k} exited {code}")

    sw = Stopwatch()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    m = sw.stop()
    if failures:
        raise RuntimeError(f"replay failed: {failures[:3]}")
    return m


def replay_markdown(job_s: float, results: Mapping[str, Measure], workers: int) -> list[str]:
    if not results:
        return []
    base = next(iter(results.values()))
    lines = [
        "",
        f"The same ffmpeg runs replayed bare (without the setpriv/prlimit wrapper, {workers} at a time as the "
        "server's process cap allows), as they were and with changes to their argv (only the cost is compared):",
        "",
        "| ffmpeg runs | wall s | CPU s | vs as run |",
        "|---|---|---|---|",
    ]
    for i, (name, m) in enumerate(results.items()):
        versus = "—" if i == 0 else f"{base.seconds / m.seconds:.2f}x faster"
        lines.append(f"| {name} | {m.seconds:.2f} | {m.cpu_s:.1f} | {versus} |")
    lines += [
        "",
        f"The job took {job_s:.2f} s on the traced server and its ffmpeg runs replayed bare {base.seconds:.2f} s: "
        f"a difference of {job_s - base.seconds:+.2f} s for everything outside ffmpeg's own work (the wrapper, "
        "Python, publishing, gRPC) plus run-to-run noise.",
    ]
    return lines
