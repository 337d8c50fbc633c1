"""The one place that starts ffmpeg/ffprobe: it caps how many run at once across the
whole server, caches probes per object version, and gives each run a private folder.

Synchronous snapshots are not queued behind asynchronous work: they take the next free
slot ahead of every waiting async run, and when every slot is busy they may use a small
number of reserved extra slots (``sync_reserved``), so a sync call's time limit is spent
on its own snapshot, not on waiting for a long batch of someone else's job to finish."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from pathlib import Path

from mps_snapshot_server.config import Settings
from mps_snapshot_server.domain import frames
from mps_snapshot_server.domain.models import FrameType, SmartPick
from mps_snapshot_server.media import animate, capture, picks, process, warm
from mps_snapshot_server.media import probe as probe_mod
from mps_snapshot_server.media.argv import Animation, Encoding, Source
from mps_snapshot_server.media.capture import Frame
from mps_snapshot_server.observability import Telemetry
from mps_snapshot_server.storage.base import InputHandle

log = logging.getLogger(__name__)

#: The keyframe index is built only for inputs up to this long (an hour of 30 fps video is
#: 108,000 packets, about 1.3 MB of ffprobe output; the demux reads the whole file).
KEY_INDEX_MAX_S = 3600.0


class Priority(enum.IntEnum):
    """Who waits for an ffmpeg slot: a synchronous call (a caller is waiting on it, within
    a few seconds) goes before asynchronous work."""

    SYNC = 0
    ASYNC = 1


class Slots:
    """``size`` process slots shared by everyone, plus ``reserved`` more that only
    synchronous calls may take when the shared ones are busy. Waiters are served by
    priority, then in arrival order."""

    def __init__(self, size: int, reserved: int) -> None:
        self.size = size
        self.reserved = reserved
        self.busy = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = 0

    @property
    def waiting(self) -> int:
        """Runs waiting for a slot."""
        return len(self._waiters)

    def _capacity(self, priority: Priority) -> int:
        return self.size + (self.reserved if priority is Priority.SYNC else 0)

    async def acquire(self, priority: Priority) -> None:
        if self.busy < self._capacity(priority) and not any(p <= priority for p, _, _ in self._waiters):
            self.busy += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._order += 1
        entry = (int(priority), self._order, future)
        self._waiters.append(entry)
        self._waiters.sort(key=lambda e: (e[0], e[1]))
        try:
            await future
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            priority, _, future = entry
            if self.busy >= self._capacity(Priority(priority)):
                continue
            self._waiters.remove(entry)
            if not future.done():
                self.busy += 1
                future.set_result(None)


class MediaEngine:
    def __init__(
        self,
        *,
        ffmpeg: str,
        ffprobe: str,
        tmp_dir: Path,
        max_processes: int,
        cpu_seconds: int,
        memory_bytes: int,
        max_image_bytes: int,
        probe_cache_entries: int,
        max_input_streams: int,
        max_input_pixels: int,
        max_duration_s: float,
        sync_reserved: int,
        telemetry: Telemetry,
        job_memory_mb: float,
        local_ffmpeg: str,
        warm_workers: int,
        warm_worker_requests: int,
    ) -> None:
        self.telemetry = telemetry
        self.ffmpeg = ffmpeg
        #: The ffmpeg that decodes local files (settings.local_ffmpeg).
        self.local_ffmpeg = local_ffmpeg
        self.ffprobe = ffprobe
        # Absolute: ffmpeg runs with its work folder as cwd, so a relative data_dir would break paths.
        self.tmp_dir = tmp_dir
        self.max_processes = max_processes
        #: What the ffmpeg processes of one job may use together (extraction.batch_size).
        self.job_memory_mb = job_memory_mb
        self._slots = Slots(max_processes, sync_reserved)
        self.telemetry.metrics.ffmpeg_limit.set(max_processes)
        self._cpu = cpu_seconds
        self._memory = memory_bytes
        self._max_image_bytes = max_image_bytes
        self._probes: OrderedDict[Hashable, probe_mod.MediaInfo] = OrderedDict()
        self._gops: OrderedDict[Hashable, float] = OrderedDict()
        self._keys: OrderedDict[Hashable, probe_mod.KeyIndex] = OrderedDict()
        #: Per ffmpeg binary: whether it filters input packets (-bsf on an input, FFmpeg 7+).
        self._filters_input: dict[str, bool] = {}
        #: Background index builds in flight (a reference keeps each task alive).
        self._building: dict[Hashable, asyncio.Task[None]] = {}
        self._probe_cap = probe_cache_entries
        #: What an input must satisfy at probe time (streams, pixels, duration).
        self.probe_limits = probe_mod.ProbeLimits(
            max_streams=max_input_streams, max_pixels=max_input_pixels, max_duration_s=max_duration_s
        )
        self.running = 0
        self.peak_running = 0
        #: Processes started so far (tests use it to prove validation starts none).
        self.started = 0
        #: The warm decoder pool (media.warm) for local inputs; None: every capture runs ffmpeg.
        self.warm = (
            warm.WarmPool(
                size=warm_workers,
                max_requests=warm_worker_requests,
                tmp_dir=tmp_dir,
                cpu_seconds=cpu_seconds,
                memory_bytes=memory_bytes,
            )
            if warm_workers > 0
            else None
        )

    def start_warm(self) -> None:
        """Start the warm decoder workers in the background (after ``sweep``)."""
        if self.warm is not None:
            self.warm.start()

    async def close(self) -> None:
        if self.warm is not None:
            await self.warm.close()

    async def _warm_exact(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        time_s: float,
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
        name: str = "warm",
    ) -> Frame | None:
        """The frame shown at ``time_s`` from the warm pool, or None (then ffmpeg runs)."""
        if self.warm is None:
            return None
        return await self.warm.exact(
            handle,
            info,
            time_s=time_s,
            enc=enc,
            workdir=workdir,
            wall_seconds=wall_seconds,
            max_bytes=self._max_image_bytes,
            name=name,
        )

    async def _warm_each(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        times_s: list[float],
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
        *,
        on_time: bool,
    ) -> list[Frame | None]:
        """The frame shown at each time, one after another in one worker; None where the pool
        did not serve it (the caller takes that point on its own) or, with ``on_time`` (a
        keyframe's own time), where the decode put the frame anywhere else."""
        found: list[Frame | None] = []
        for i, t in enumerate(times_s):
            frame = await self._warm_exact(handle, info, t, enc, workdir, wall_seconds, name=f"w{i}")
            if frame is not None and on_time and abs(frame.time_s - t) >= frames.TOL:
                frame = None
            found.append(frame)
        return found

    def _shrink_warm(self) -> None:
        """An asynchronous job is about to run ffmpeg decodes: idle workers that grew are
        replaced by fresh ones, so the job's processes stay within ``job_memory_mb``."""
        if self.warm is not None:
            self.warm.shrink()

    def _warm_serves(self, handle: InputHandle, info: probe_mod.MediaInfo, enc: Encoding) -> bool:
        return self.warm is not None and not self.warm.broken and not warm.refusal(handle, info, enc)

    @classmethod
    def from_settings(cls, s: Settings, telemetry: Telemetry) -> MediaEngine:
        """The engine the settings describe (their defaults are the only ones)."""
        return cls(
            ffmpeg=s.resolved_ffmpeg(),
            local_ffmpeg=s.resolved_local_ffmpeg(),
            ffprobe=s.resolved_ffprobe(),
            tmp_dir=s.tmp_dir,
            max_processes=s.max_ffmpeg_processes,
            cpu_seconds=s.ffmpeg_cpu_s,
            memory_bytes=s.ffmpeg_memory_mb * 1024 * 1024,
            max_image_bytes=s.max_image_bytes,
            probe_cache_entries=s.probe_cache_entries,
            max_input_streams=s.max_input_streams,
            max_input_pixels=s.max_input_pixels,
            max_duration_s=s.max_duration_s,
            sync_reserved=s.sync_reserved_processes,
            telemetry=telemetry,
            job_memory_mb=s.job_memory_mb,
            warm_workers=s.resolved_warm_workers(),
            warm_worker_requests=s.warm_worker_requests,
        )

    def sweep(self) -> None:
        """Remove work folders a crashed server left behind."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.chmod(0o700)

    @contextlib.asynccontextmanager
    async def workdir(self, label: str) -> AsyncIterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.tmp_dir))
        try:
            yield path
        finally:
            await asyncio.to_thread(shutil.rmtree, path, True)

    @property
    def waiting(self) -> int:
        """ffmpeg/ffprobe runs waiting for a slot."""
        return self._slots.waiting

    def limits(self, wall_seconds: float) -> process.Limits:
        return process.Limits(
            wall_seconds=max(0.1, wall_seconds), cpu_seconds=self._cpu, address_space_bytes=self._memory
        )

    @contextlib.asynccontextmanager
    async def _slot(self, kind: str, priority: Priority = Priority.ASYNC) -> AsyncIterator[None]:
        """A process slot for one run of ``kind`` (probe, keyframes, snapshot, black,
        seek_batch, decode_pass; animate and measure beyond MPS), reported as a span and in
        the run-time histogram."""
        metrics = self.telemetry.metrics
        await self._slots.acquire(priority)
        try:
            self.started += 1
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            metrics.ffmpeg_in_use.set(self.running)
            program = "ffprobe" if kind in ("probe", "keyframes", "key_index") else "ffmpeg"
            try:
                with (
                    self.telemetry.tracing.tracer.start_as_current_span(
                        f"{program}.{kind}", attributes={"mps.ffmpeg.kind": kind}
                    ),
                    metrics.ffmpeg_run(kind),
                ):
                    yield
            finally:
                self.running -= 1
                metrics.ffmpeg_in_use.set(self.running)
        finally:
            self._slots.release()

    async def probe(
        self, handle: InputHandle, cache_key: Hashable, wall_seconds: float, priority: Priority = Priority.ASYNC
    ) -> probe_mod.MediaInfo:
        cached = self._probes.get(cache_key)
        if cached is not None:
            self._probes.move_to_end(cache_key)
            return cached
        # ffprobe, like ffmpeg, runs in a private empty folder removed afterwards.
        async with self._slot("probe", priority), self.workdir("probe") as folder:
            info = await probe_mod.probe(
                self.ffprobe,
                handle.url,
                handle.protocols,
                self.limits(wall_seconds),
                self.probe_limits,
                cwd=str(folder),
            )
            if info.duration_s <= 0:
                end = await probe_mod.probe_end(
                    self.ffprobe,
                    handle.url,
                    handle.protocols,
                    info.start_time_s,
                    self.limits(wall_seconds),
                    cwd=str(folder),
                )
                info = dataclasses.replace(info, duration_s=end)
        self._probes[cache_key] = info
        while len(self._probes) > self._probe_cap:
            self._probes.popitem(last=False)
        return info

    async def keyframe_interval(self, handle: InputHandle, cache_key: Hashable, wall_seconds: float) -> float:
        """Seconds between keyframes near the start of the input (cached like probes)."""
        key = ("keyframes", cache_key)
        cached = self._gops.get(key)
        if cached is not None:
            return cached
        async with self._slot("keyframes"), self.workdir("keys") as folder:
            gop = await probe_mod.probe_keyframes(
                self.ffprobe, handle.url, handle.protocols, self.limits(wall_seconds), cwd=str(folder)
            )
        self._gops[key] = gop
        while len(self._gops) > self._probe_cap:
            self._gops.popitem(last=False)
        return gop

    def _ffmpeg_for(self, handle: InputHandle) -> str:
        # Bytes read over HTTP were measured with ``ffmpeg`` (docs/storage.md): remote inputs keep it.
        return self.local_ffmpeg if handle.protocols == ("file",) else self.ffmpeg

    def cached_key_index(self, cache_key: Hashable) -> probe_mod.KeyIndex | None:
        """The keyframe index of an object version, if an earlier job built it."""
        return self._keys.get(("index", cache_key))

    async def key_index(
        self, handle: InputHandle, cache_key: Hashable, info: probe_mod.MediaInfo, wall_seconds: float
    ) -> probe_mod.KeyIndex | None:
        """Every keyframe's time (seconds from the presentation start), cached per object
        version; None where building it would cost more than it saves: inputs that are not
        local files (the demuxer reads every packet, so the whole object would be downloaded)
        and very long ones."""
        key = ("index", cache_key)
        cached = self._keys.get(key)
        if cached is not None:
            self._keys.move_to_end(key)
            return cached
        if handle.protocols != ("file",) or info.duration_s > KEY_INDEX_MAX_S:
            return None
        async with self._slot("key_index"), self.workdir("index") as folder:
            from_pool = await self.warm.key_index(handle, info, wall_seconds=wall_seconds) if self.warm else None
            keys = from_pool or await probe_mod.probe_key_index(
                self.ffprobe,
                handle.url,
                handle.protocols,
                self.limits(wall_seconds),
                info.start_time_s,
                cwd=str(folder),
            )
        if not keys.times:
            return None
        self._keys[key] = keys
        while len(self._keys) > self._probe_cap:
            self._keys.popitem(last=False)
        return keys

    def key_index_later(
        self, handle: InputHandle, cache_key: Hashable, info: probe_mod.MediaInfo, wall_seconds: float
    ) -> None:
        """Build the keyframe index in the background (as asynchronous work), so the next
        intra snapshot of the same object version decodes only its keyframe; a synchronous
        call never waits for it."""
        key = ("index", cache_key)
        if key in self._keys or key in self._building or handle.protocols != ("file",):
            return

        async def build() -> None:
            try:
                await self.key_index(handle, cache_key, info, wall_seconds)
            except Exception as exc:  # an unreadable file is reported by the call that needs it
                log.info("keyframe index not built: %s", exc)
            finally:
                self._building.pop(key, None)

        self._building[key] = asyncio.get_running_loop().create_task(build())

    async def snapshot(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        *,
        time_s: float,
        frame_type: FrameType,
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
        priority: Priority = Priority.ASYNC,
        keys: tuple[float, ...] | None = None,
    ) -> Frame:
        """One frame. ``keys``: the input's keyframe index, when known; an intra snapshot then
        decodes only the chosen keyframe."""
        src = Source(handle.url, handle.protocols)
        limits = self.limits(wall_seconds)
        async with self._slot("snapshot", priority):
            # The warm pool first (a seek and a decode in a running worker); None: ffmpeg.
            target: float | None = time_s
            if frame_type is FrameType.INTRA:
                target = frames.nearest_keyframe(keys, time_s) if keys else None
            if target is not None:
                frame = await self._warm_exact(handle, info, target, enc, workdir, wall_seconds)
                if frame is not None and (frame_type is FrameType.NORMAL or abs(frame.time_s - target) < frames.TOL):
                    return frame
            if frame_type is FrameType.INTRA:
                return await capture.capture_keyframe(
                    self._ffmpeg_for(handle),
                    src,
                    info,
                    time_s=time_s,
                    enc=enc,
                    workdir=workdir,
                    limits=limits,
                    max_bytes=self._max_image_bytes,
                    keys=keys,
                )
            return await capture.capture_exact(
                self._ffmpeg_for(handle),
                src,
                info,
                time_s=time_s,
                enc=enc,
                workdir=workdir,
                limits=limits,
                max_bytes=self._max_image_bytes,
            )

    async def first_non_black(
        self,
        handle: InputHandle,
        *,
        window_s: float,
        level: int,
        pixel_threshold: int,
        workdir: Path,
        wall_seconds: float,
    ) -> float | None:
        async with self._slot("black"):
            return await capture.first_non_black(
                self._ffmpeg_for(handle),
                Source(handle.url, handle.protocols),
                window_s=window_s,
                level=level,
                pixel_threshold=pixel_threshold,
                workdir=workdir,
                limits=self.limits(wall_seconds),
            )

    async def seek_batch(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        times_s: list[float],
        *,
        intra: bool,
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
    ) -> list[Frame | None]:
        async with self._slot("seek_batch"):
            if not intra and self._warm_serves(handle, info, enc):
                return await self._warm_each(handle, info, times_s, enc, workdir, wall_seconds, on_time=False)
            self._shrink_warm()
            return await capture.seek_batch(
                self._ffmpeg_for(handle),
                Source(handle.url, handle.protocols),
                info,
                times_s,
                intra=intra,
                enc=enc,
                workdir=workdir,
                limits=self.limits(wall_seconds),
                max_bytes=self._max_image_bytes,
            )

    async def filters_input_packets(self, handle: InputHandle) -> bool:
        """Whether the ffmpeg for ``handle`` takes ``-bsf`` on an input (FFmpeg 7 and later):
        a keyframe pass can then decode only the chosen keyframes. Asked once per binary."""
        binary = self._ffmpeg_for(handle)
        known = self._filters_input.get(binary)
        if known is None:
            async with self._slot("version"), self.workdir("version") as folder:
                result = await process.run(
                    [binary, "-hide_banner", "-version"], limits=self.limits(30), cwd=str(folder)
                )
            known = capture.major_version(result.stdout.decode(errors="replace")) >= 7
            self._filters_input[binary] = known
        return known

    async def keyframe_pass(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        keys_s: list[float],
        index: probe_mod.KeyIndex,
        *,
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
        drop_others: bool,
    ) -> list[Frame | None]:
        async with self._slot("keyframe_pass"):
            if self._warm_serves(handle, info, enc):
                # Each chosen keyframe by a seek to it: the frame shown at a keyframe's time is
                # that keyframe, proven by the decode.
                return await self._warm_each(handle, info, keys_s, enc, workdir, wall_seconds, on_time=True)
            self._shrink_warm()
            return await capture.keyframe_pass(
                self._ffmpeg_for(handle),
                Source(handle.url, handle.protocols),
                info,
                keys_s,
                index,
                drop_others=drop_others,
                enc=enc,
                workdir=workdir,
                limits=self.limits(wall_seconds),
                max_bytes=self._max_image_bytes,
            )

    async def decode_pass(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        times_s: list[float],
        *,
        intra: bool,
        tolerances_s: list[float | None],
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
    ) -> list[Frame | None]:
        async with self._slot("decode_pass"):
            self._shrink_warm()
            return await capture.decode_pass(
                self._ffmpeg_for(handle),
                Source(handle.url, handle.protocols),
                info,
                times_s,
                intra=intra,
                tolerances_s=tolerances_s,
                enc=enc,
                workdir=workdir,
                limits=self.limits(wall_seconds),
                max_bytes=self._max_image_bytes,
            )

    async def animate(
        self, handle: InputHandle, anim: Animation, *, workdir: Path, wall_seconds: float, max_bytes: int
    ) -> animate.Preview:
        """An animated preview (beyond MPS), bounded by ``max_bytes`` and the image limit."""
        async with self._slot("animate"):
            return await animate.render(
                self._ffmpeg_for(handle),
                Source(handle.url, handle.protocols),
                anim,
                workdir=workdir,
                limits=self.limits(wall_seconds),
                max_bytes=min(max_bytes, self._max_image_bytes) if max_bytes else self._max_image_bytes,
            )

    async def smart_pick(
        self,
        handle: InputHandle,
        info: probe_mod.MediaInfo,
        frame: Frame,
        *,
        time_s: float,
        smart: SmartPick,
        enc: Encoding,
        workdir: Path,
        wall_seconds: float,
        priority: Priority = Priority.ASYNC,
    ) -> tuple[Frame, str]:
        """Smart picks (media.picks): ``frame`` (shown at ``time_s``), or the best frame of
        the window around it when it is black, uniform or blurred, with the reason."""
        window_s = (smart.window or picks.DEFAULT_WINDOW_MS) / 1000
        src = Source(handle.url, handle.protocols)
        async with self._slot("measure", priority):
            measures = await picks.measure(
                self._ffmpeg_for(handle),
                src,
                info,
                time_s=time_s,
                window_s=window_s,
                workdir=workdir,
                limits=self.limits(wall_seconds),
            )
        pick = picks.choose(measures, time_s, smart.max_blur or picks.DEFAULT_MAX_BLUR)
        if pick.time_s is None or abs(pick.time_s - frame.time_s) < 1e-6:
            return frame, ""
        folder = workdir / f"pick-{round(time_s * 1e6)}"
        folder.mkdir(exist_ok=True)
        better = await self.snapshot(
            handle,
            info,
            time_s=pick.time_s,
            frame_type=FrameType.NORMAL,
            enc=enc,
            workdir=folder,
            wall_seconds=wall_seconds,
            priority=priority,
        )
        return better, pick.reason
