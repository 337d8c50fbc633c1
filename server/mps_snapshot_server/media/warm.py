"""The warm decoder pool: pre-started worker processes that keep local inputs open.

A bare ffmpeg snapshot of a 1080p MP4 spends most of its time before decoding anything:
about 0.12 s of process start (Debian's ffmpeg links 215 shared libraries) and 0.05 s
parsing the index. A worker (``warm_worker.py``, PyAV) pays both once: it keeps recently
used inputs open per object version and answers each capture with a seek, the decode from
the keyframe and a JPEG encode.

Containment is the ffmpeg path's (docs/architecture.md): workers start through
``process.start_worker`` (setpriv pdeathsig, prlimit address space/CPU/files/no core, their
own session, the minimal environment, a private folder), open inputs with the same
whitelists and bounds (``hardening.input_options``), run only inside an engine slot (the
server-wide process cap still bounds the decodes), and are killed as a group and replaced on
a timeout, a crash, a cancelled request or a refused start. They are recycled after
``max_requests`` requests or half their CPU-seconds limit (RLIMIT_CPU counts a process's
whole life).

The frame is proven exactly as from an ffmpeg log: the worker reports the time of every
frame it decoded from the keyframe and the time of the one it wrote, and ``domain.frames``
decides. The pool serves only the common case (``refusal``); everything else, and every
answer it cannot prove (a refused frame, a decode error, a crash), takes the ffmpeg path,
which then reports any fault of the input with today's messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mps_snapshot_server.domain import frames
from mps_snapshot_server.domain.errors import ResourceContentBad
from mps_snapshot_server.domain.formats import ImageFormat, jpeg_qscale
from mps_snapshot_server.media import process
from mps_snapshot_server.media.argv import JPEG_QUALITY, Encoding
from mps_snapshot_server.media.capture import Frame, check_jpeg
from mps_snapshot_server.media.hardening import input_options
from mps_snapshot_server.media.probe import KeyIndex, MediaInfo, parse_key_index
from mps_snapshot_server.storage.base import InputHandle

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("warm_worker.py")
#: Containers the pool reads: MP4/MOV (ffprobe's "mov,mp4,m4a,3gp,3g2,mj2"), whose index
#: makes every seek land on the keyframe at or before the point.
FORMATS = frozenset({"mov"})
CODECS = frozenset({"h264", "hevc"})
_HDR_TRANSFERS = frozenset({"smpte2084", "arib-std-b67"})
#: Re-seeks one point may take (1, 5, 30 s back, then the start), as capture._MAX_RUNS.
_MAX_RUNS = 6
#: Frames one answer may list (a GOP of a few hundred at most in the files served).
_MAX_FRAMES = 20000
#: How long a worker may take to start (import PyAV) before it counts as failed.
_START_S = 30.0
#: A worker's peak memory (MB) above which ``shrink`` replaces it: a fresh worker (Python,
#: PyAV, Pillow) peaks at about 40 MB, one that decoded 1080p at 75-140 MB.
_FRESH_MB = 64.0
#: How long a capture waits for a worker that is being started before it runs ffmpeg.
_WAIT_SPAWN_S = 1.0
#: Inputs whose worker crashed or timed out are not sent to the pool again (per version).
_REFUSED_KEEP = 256


def refusal(handle: InputHandle, info: MediaInfo, enc: Encoding) -> str:
    """Why the pool does not serve this capture ("" when it does): the ffmpeg path does
    everything else. The pool serves local MP4/MOV files of H.264/HEVC with square pixels,
    no rotation, a constant frame rate and SDR colour, written as JPEG at the MPS size (no
    fit mode, tone mapping or other format): the cases where a seek, a decode and one
    swscale pass give the ffmpeg path's frame and pixels."""
    if handle.protocols != ("file",) or not handle.url.startswith("file:"):
        return "not a local file"
    if info.format_name.split(",")[0] not in FORMATS:
        return f"container {info.format_name}"
    if info.video_codec not in CODECS:
        return f"codec {info.video_codec}"
    if info.rotation % 360:
        return "rotation"
    if info.sample_aspect != 1:
        return "non-square pixels"
    if info.variable_rate:
        return "variable frame rate"
    if info.color_transfer in _HDR_TRANSFERS:
        return "HDR"
    if enc.image is not ImageFormat.JPEG or enc.geometry is not None or enc.tone_map is not None or enc.lossless:
        return "output options"
    return ""


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    folder: Path
    served: int = 0

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def peak_mb(self) -> float:
        """VmHWM: the most memory it has held (what a job's memory budget counts)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0.0

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (RLIMIT_CPU counts it over the whole life)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0


class _Lost(Exception):
    """The worker died or broke the protocol mid-request."""


class WarmPool:
    def __init__(
        self,
        *,
        size: int,
        max_requests: int,
        tmp_dir: Path,
        cpu_seconds: int,
        memory_bytes: int,
        threads: int = 2,
        python: str | None = None,
    ) -> None:
        self.size = size
        self.max_requests = max_requests
        #: The workers' private folders: beside the engine's work folders, not among them
        #: (those hold only the work of running captures), swept when the pool starts.
        self.tmp_dir = tmp_dir.with_name(".warm")
        #: Decoder threads per worker. Frame threads: two decode a GOP's frames side by side
        #: on two cores (a sync snapshot mid-GOP decodes up to a GOP), and each thread holds
        #: its own reference frames (about 5 MB per thread more at 1080p than one).
        self.threads = threads
        self.python = python or sys.executable
        self._limits = process.Limits(wall_seconds=0, cpu_seconds=cpu_seconds, address_space_bytes=memory_bytes)
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self._started = False
        self._closed = False
        #: Workers answering a request, and workers starting.
        self._busy = 0
        self._spawning = 0
        #: Why the pool stopped serving (workers cannot start); "" while it serves.
        self.broken = ""
        #: Counters for tests and logs: workers started, requests answered by the pool,
        #: requests handed back to the ffmpeg path, workers killed.
        self.spawned = 0
        self.served = 0
        self.fallbacks = 0
        self.killed = 0

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._all if w.alive]

    def start(self) -> None:
        """Start the workers in the background (the server's start does not wait)."""
        if self._started or self._closed:
            return
        self._started = True
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(self.size):
            self._replace()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._retire(w) for w in list(self._all)), return_exceptions=True)

    def _replace(self) -> None:
        task = asyncio.get_running_loop().create_task(self._spawn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self) -> None:
        self._spawning += 1
        try:
            await self._start_one()
        finally:
            self._spawning -= 1

    async def _start_one(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="warm-", dir=self.tmp_dir))
        try:
            proc = await process.start_worker(
                [self.python, "-I", str(WORKER_SCRIPT)], limits=self._limits, cwd=str(folder)
            )
        except Exception as exc:  # ContainmentUnavailable, a missing interpreter: never serve
            shutil.rmtree(folder, ignore_errors=True)
            self._break(f"a worker could not start: {exc}")
            return
        worker = _Worker(proc, folder)
        self._all.add(worker)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(_START_S):
                hello = json.loads(await proc.stdout.readline() or b"{}")
            if not hello.get("ready"):
                raise _Lost("no greeting")
        except (TimeoutError, _Lost, ValueError, OSError) as exc:
            await self._retire(worker)
            self._break(f"a worker did not start ({exc or type(exc).__name__}); is PyAV (av) installed?")
            return
        except BaseException:
            await self._retire(worker)
            raise
        self.spawned += 1
        if self._closed:
            await self._retire(worker)
            return
        self._idle.put_nowait(worker)

    def shrink(self) -> None:
        """Replace idle workers that have grown past a fresh one's size by fresh ones.

        Called before an asynchronous job runs ffmpeg decodes of its own (decode passes,
        batches the pool does not serve): the summed peak of the processes alive during a job
        (``job_memory_mb``) counts the idle workers too, and a worker that decoded 1080p
        keeps its peak for life, while a fresh one holds only the interpreter and PyAV."""
        if self._closed or not self._started:
            return
        keep: list[_Worker] = []
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker.alive and worker.peak_mb() > _FRESH_MB:
                self._retire_later(worker)
                self._replace()
            else:
                keep.append(worker)
        for worker in keep:
            self._idle.put_nowait(worker)

    def _retire_later(self, worker: _Worker) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _break(self, reason: str) -> None:
        if not self.broken:
            log.warning("warm decoder pool off, every capture takes the ffmpeg path: %s", reason)
        self.broken = reason

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        if worker.alive:
            self.killed += 1
        await process.kill_group(worker.proc)
        await asyncio.to_thread(shutil.rmtree, worker.folder, True)

    async def _take(self) -> _Worker | None:
        """An idle worker; None when all ``size`` are busy (the engine's slots allow
        ``sync_reserved_processes`` more runs than the pool has workers, and those run
        ffmpeg instead of waiting). A worker being replaced is waited for: it is ready within
        a few tenths of a second (at most ``_WAIT_SPAWN_S``, then ffmpeg runs instead)."""
        if self.broken or self._closed:
            return None
        self.start()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _WAIT_SPAWN_S
        while not self.broken and not self._closed:
            if not self._idle.empty():
                worker = self._idle.get_nowait()
                if worker.alive:
                    self._busy += 1
                    return worker
                await self._retire(worker)
                self._replace()
                continue
            if self._busy >= self.size or not self._spawning or loop.time() > give_up:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    self._idle.put_nowait(await self._idle.get())
        return None

    def _give_back(self, worker: _Worker) -> None:
        self._busy -= 1
        recycle = worker.served >= self.max_requests or worker.cpu_seconds() > self._limits.cpu_seconds / 2
        if self._closed or recycle or not worker.alive:
            self._retire_later(worker)
            if not self._closed:
                self._replace()
            return
        self._idle.put_nowait(worker)

    async def _ask(
        self, request: dict[str, Any], deadline: float, limit_s: float, slow: str = ""
    ) -> dict[str, Any] | None:
        """One request to an idle worker; None when the pool cannot answer it (the caller
        takes the ffmpeg path). A timeout kills the worker and fails like an ffmpeg run."""
        worker = await self._take()
        if worker is None:
            return None
        assert worker.proc.stdin is not None and worker.proc.stdout is not None
        healthy = False
        try:
            async with asyncio.timeout_at(deadline):
                worker.proc.stdin.write(json.dumps(request).encode() + b"\n")
                await worker.proc.stdin.drain()
                line = await worker.proc.stdout.readline()
            if not line:
                raise _Lost("the worker ended")
            answer: dict[str, Any] = json.loads(line)
            healthy = True
        except TimeoutError:
            raise ResourceContentBad(
                slow.format(limit_s=limit_s)
                or f"Decoding the input took longer than {limit_s:g} s and was stopped; "
                "the file may be damaged or unreadable."
            ) from None
        except (_Lost, ValueError, ConnectionError) as exc:
            # A crash (a limit hit, a decoder fault): this input goes to ffmpeg from now on.
            log.info("warm worker lost mid-request (%s); the ffmpeg path takes this input", exc)
            self._remember_refused(request)
            return None
        finally:
            if healthy:
                worker.served += 1
                self._give_back(worker)
            else:
                # Timed out, crashed or cancelled mid-request: its state is unknown.
                self._busy -= 1
                self._retire_later(worker)
                if not self._closed:
                    self._replace()
        if not answer.get("ok"):
            # Refusals come from the file (its pixel format, a decode error): the ffmpeg path
            # takes this object version from now on, without a wasted decode first.
            log.info("warm worker refused a capture (the ffmpeg path takes it): %s", answer.get("reason"))
            self._remember_refused(request)
        return answer if answer.get("ok") else None

    def _remember_refused(self, request: dict[str, Any]) -> None:
        key = (request["url"], *request["version"])
        self._refused[key] = None
        while len(self._refused) > _REFUSED_KEEP:
            self._refused.popitem(last=False)

    def _request(self, handle: InputHandle) -> dict[str, Any] | None:
        """What every request names: the input, its version, and ffmpeg's input options."""
        try:
            st = os.stat(handle.url.removeprefix("file:"))
        except OSError:
            return None  # the ffmpeg path reports it
        version = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        if (handle.url, *version) in self._refused:
            return None
        options = input_options(handle.protocols)
        # The options before ffmpeg's -i, as a dictionary: -protocol_whitelist file ...
        return {
            "url": handle.url,
            "version": version,
            "options": {options[i].lstrip("-"): options[i + 1] for i in range(0, len(options), 2)},
        }

    async def key_index(self, handle: InputHandle, info: MediaInfo, *, wall_seconds: float) -> KeyIndex | None:
        """The keyframe index ffprobe would list (probe.parse_key_index of the same CSV),
        from one demux in a worker, so an intra job runs no ffprobe beside its workers
        (their memory counts in ``job_memory_mb``); None: the ffprobe path builds it."""
        if self.broken or refusal(handle, info, Encoding()):
            return None
        request = self._request(handle)
        if request is None:
            return None
        limit = max(0.1, wall_seconds)
        answer = await self._ask(
            {**request, "op": "index"},
            asyncio.get_running_loop().time() + limit,
            limit,
            "Reading the input's keyframes took longer than {limit_s:g} s.",
        )
        if answer is None:
            return None
        return parse_key_index(str(answer["csv"]), info.start_time_s)

    async def exact(
        self,
        handle: InputHandle,
        info: MediaInfo,
        *,
        time_s: float,
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
        max_bytes: int,
        name: str = "warm",
    ) -> Frame | None:
        """The frame shown at ``time_s`` (domain.frames), or None: not a case the pool
        serves, or not one it could prove (the caller then runs ffmpeg)."""
        if self.broken or refusal(handle, info, enc):
            return None
        request = self._request(handle)
        if request is None:
            return None
        width, height = info.output_size(enc.width, enc.height)
        origin = info.start_time_s
        seek = max(0.0, time_s - info.seek_lead_s)
        out = workdir / f"{name}.jpg"
        loop = asyncio.get_running_loop()
        # One limit for all of this point's runs, like an ffmpeg run's (at least 0.1 s).
        deadline = loop.time() + max(0.1, wall_seconds)
        for _ in range(_MAX_RUNS):
            out.unlink(missing_ok=True)
            answer = await self._ask(
                {
                    **request,
                    "threads": self.threads,
                    "seek": origin + seek,
                    "target": origin + time_s,
                    "from_start": seek <= 0,
                    "max_frames": _MAX_FRAMES,
                    "out": str(out),
                    "width": width,
                    "height": height,
                    "full_chroma": enc.full_chroma,
                    "qscale": JPEG_QUALITY if enc.quality is None else jpeg_qscale(enc.quality),
                },
                deadline,
                max(0.1, wall_seconds),
            )
            if answer is None:
                break
            decoded = sorted(t - origin for t in answer["decoded"])
            reached_eof = not any(t > time_s + frames.TOL for t in decoded)
            decision = frames.decide_exact(
                decoded, time_s, seek_s=seek, reached_eof=reached_eof, frame_duration_s=info.frame_duration_s
            )
            if isinstance(decision, frames.SeekEarlier):
                seek = decision.seek_s
                continue
            written = answer.get("written")
            if (
                isinstance(decision, frames.Shown)
                and written is not None
                and abs(written - origin - decision.time_s) < frames.TOL
                and out.exists()
            ):
                w, h = check_jpeg(out, max_bytes)
                self.served += 1
                log.debug("warm capture at %.6f s: decode %s ms, encode %s ms", decision.time_s, *answer["ms"])
                return Frame(out, decision.time_s, w, h)
            # Past the end or undecodable: the ffmpeg path says which, with its messages.
            log.debug("warm capture at %.6f s not proven (%s): the ffmpeg path takes it", time_s, decision)
            break
        self.fallbacks += 1
        return None
