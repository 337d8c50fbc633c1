"""Running one job, synchronous or queued: resolve the input, probe, plan, capture each
image, publish it, finish. One path for both modes.

A queued (async) job is run by the scheduler, committed as Snapshoting, and ends in a final
state or, after a service fault, Submitted again. A synchronous snapshot is run inline, in
the caller's task, with the caller's deadline, at sync priority; it is committed once, when
it ends, and its error is raised to the caller after it is recorded. Either way nothing
partial is left: on failure or cancellation every object the run wrote is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Hashable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mps_snapshot_server.domain import extraction, planning, validation
from mps_snapshot_server.domain import frames as frames_rule
from mps_snapshot_server.domain.errors import (
    InternalError,
    MpsError,
    ResourceContentBad,
    ServiceFault,
    ServiceUnavailable,
    SnapshotTimeOut,
)
from mps_snapshot_server.domain.models import FrameType, Job
from mps_snapshot_server.media import encodings
from mps_snapshot_server.media.argv import Encoding
from mps_snapshot_server.media.capture import Frame, PastTheEnd
from mps_snapshot_server.media.engine import MediaEngine, Priority
from mps_snapshot_server.media.probe import KeyIndex, MediaInfo
from mps_snapshot_server.storage.base import InputHandle, ObjectInfo, ObjectStore
from mps_snapshot_server.storage.router import StorageRouter
from mps_snapshot_server.store.ledger import JobLedger
from mps_snapshot_server.worker import faults
from mps_snapshot_server.worker.outputs import Context, OutputWriter, Published

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Input:
    """A run's input, resolved once: its store, and the version HEAD found."""

    store: ObjectStore
    bucket: str
    key: str
    head: ObjectInfo

    @property
    def version(self) -> Hashable:
        """What probes and keyframe indexes are cached under: a new upload is a new version."""
        return (id(self.store), self.bucket, self.key, self.head.version)

    async def handle(self) -> InputHandle:
        # Signed anew for every ffmpeg run: presigned URLs expire, long jobs do not.
        return await self.store.input_handle(self.bucket, self.key)


@dataclasses.dataclass(frozen=True)
class Run:
    """How one run goes: inline (a synchronous snapshot; the caller waits) or queued."""

    valid: validation.ValidRequest
    source: Input
    #: Wall-clock limit of each ffmpeg run.
    wall_s: float
    inline: bool
    #: The input handle an inline run signed at its start (see ``handle``).
    pinned: InputHandle | None = None

    @property
    def priority(self) -> Priority:
        return Priority.SYNC if self.inline else Priority.ASYNC

    async def handle(self) -> InputHandle:
        """The handle for one ffmpeg run: signed anew for every run of a queued job
        (presigned URLs expire, long jobs do not); an inline snapshot, which lasts seconds,
        uses the one it signed at its start."""
        return self.pinned if self.pinned is not None else await self.source.handle()


class JobRunner:
    def __init__(
        self,
        *,
        ledger: JobLedger,
        engine: MediaEngine,
        router: StorageRouter,
        ffmpeg_timeout_s: float,
        sync_timeout_s: float,
        max_sprite_pixels: int,
        notify_wanted: Callable[[Job], bool],
    ) -> None:
        self.ledger = ledger
        self.engine = engine
        self.router = router
        self.timeout = ffmpeg_timeout_s
        self.sync_timeout_s = sync_timeout_s
        self.max_sprite_pixels = max_sprite_pixels
        #: Whether a finished job is owed a notification (NotificationService.wanted).
        self.notify_wanted = notify_wanted
        #: Told of every service fault a job meets (the health monitor listens).
        self.fault_listeners: list[Callable[[MpsError], None]] = []
        #: Set when the server is stopping: an inline run cut off then is recorded as failed
        #: with ServiceUnavailable (and the stop waits for these records).
        self.draining = False
        self._inline: set[asyncio.Task[Any]] = set()
        self._recording: set[asyncio.Future[None]] = set()

    def report_fault(self, fault: MpsError) -> None:
        for listener in self.fault_listeners:
            listener(fault)

    async def resolve(self, valid: validation.ValidRequest) -> Input:
        """The input's store and current version (HEAD): it must exist before anything runs."""
        store = self.router.store_for(valid.input, "input")
        head = await store.head(valid.input.bucket, valid.input_key)
        return Input(store, valid.input.bucket, valid.input_key, head)

    # Queued jobs

    async def run(self, job: Job, *, retry: bool = False) -> Job:
        """Run a job already committed as Snapshoting; return it committed in its final state,
        or, when it met a service fault and ``retry`` is set, committed as Submitted again
        (the scheduler queues it after a backoff).

        Cancellation propagates (after the outputs are removed) so the scheduler decides
        what the job becomes (Cancelled, or Submitted again on shutdown).
        """
        published = Published()
        error: MpsError | None = None
        try:
            valid = validation.validate(job.request)
            run = Run(valid, await self.resolve(valid), self.timeout, inline=False)
            job = await self._execute(job, run, published)
        except asyncio.CancelledError:
            await asyncio.shield(published.remove_all(job.id))
            raise
        except Exception as exc:
            error = _as_mps_error(exc, job)
        if error is not None:
            await asyncio.shield(published.remove_all(job.id))
            if isinstance(error, ServiceFault):
                self.report_fault(error)
                if retry:
                    log.warning("job %s attempt %d met a service fault, will retry: %s", job.id, job.attempts, error)
                    again = job.requeued(
                        code=error.code,
                        message=f"Attempt {job.attempts} stopped by a fault of the server, not of the input "
                        f"({error.message}); the job will run again.",
                    )
                    return await asyncio.shield(self.ledger.save(again))
            job = job.failed(error.code, error.message, at=now())
        else:
            job = job.succeeded(at=now())
        job = dataclasses.replace(job, notify_pending=self.notify_wanted(job))
        await asyncio.shield(self.ledger.save(job))
        log.info(
            "job %s ended %s (%d images)%s",
            job.id,
            job.state.value,
            job.count,
            f": {job.code} {job.message}" if job.code else "",
        )
        return job

    # Synchronous snapshots

    async def run_inline(self, job: Job, valid: validation.ValidRequest, source: Input, *, limit: float) -> Job:
        """Run a synchronous snapshot now, within ``limit`` seconds, and commit it once:
        Success, or Fail with its error raised to the caller (``error.job_id`` set when the
        failure was recorded). Nothing of it is recorded before it ends."""
        me = asyncio.current_task()
        if me is not None:
            self._inline.add(me)
        try:
            return await self._run_inline(job.started(), Run(valid, source, limit, inline=True))
        finally:
            if me is not None:
                self._inline.discard(me)

    async def _run_inline(self, job: Job, run: Run) -> Job:
        limit = run.wall_s
        published = Published()
        error: MpsError | None = None
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                job = await self._execute(job, run, published)
        except TimeoutError:
            error = SnapshotTimeOut(
                f"The snapshot took longer than {limit:.1f} s and was stopped; submit it as an "
                "asynchronous job (set Num to 1) for slow inputs."
            )
        except asyncio.CancelledError:
            # The caller went away, or the server is stopping and cut the call off: record
            # the outcome anyway (the stop waits for it), then let the cancel go on.
            cut: MpsError
            if self.draining:
                cut = ServiceUnavailable(
                    "The server shut down before the snapshot was written; submit it again.", retry_after=1.0
                )
            else:
                cut = SnapshotTimeOut(
                    "The caller cancelled the call or its deadline passed before the snapshot was written."
                )
            recording = asyncio.ensure_future(self._record_failure(job, cut, published))
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)
            with contextlib.suppress(MpsError):
                await asyncio.shield(recording)
            raise
        except Exception as exc:
            error = _as_mps_error(exc, job)
        if error is not None:
            if isinstance(error, ServiceFault):
                self.report_fault(error)
            try:
                await asyncio.shield(self._record_failure(job, error, published))
                error.job_id = job.id
            except ServiceFault as unrecorded:
                # The store cannot record the failure either (a full disk): the caller still
                # learns the first fault; no job id, as no job was recorded.
                log.warning("sync snapshot %s: failure not recorded: %s", job.id, unrecorded)
            raise error
        job = job.succeeded(at=now())
        try:
            await asyncio.shield(self.ledger.save(job))
        except ServiceFault:
            # Not recorded: take the snapshot back, so a failed call leaves nothing behind.
            await asyncio.shield(published.remove_all(job.id))
            raise
        return job

    async def _record_failure(self, job: Job, error: MpsError, published: Published) -> None:
        await published.remove_all(job.id)
        await self.ledger.save(job.failed(error.code, error.message, at=now()))

    async def wait_recorded(self, timeout: float) -> None:
        """Wait (bounded) until cut-off inline runs are recorded, before the store closes."""
        running = {t for t in self._inline if not t.done()}
        for task in running:
            task.cancel()  # the port is closed: what still runs is cut off (and recorded)
        pending: set[asyncio.Future[Any]] = {*running, *self._recording}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self._recording:
            await asyncio.wait(list(self._recording), timeout=timeout)

    # The one path: plan, capture, publish

    async def _execute(self, job: Job, run: Run, published: Published) -> Job:
        try:
            return await self._capture(job, run, published)
        except ResourceContentBad as exc:
            source = run.source
            raise await faults.explain(exc, source.store, source.bucket, source.key, self.engine.tmp_dir) from None

    async def _capture(self, job: Job, run: Run, published: Published) -> Job:
        valid, source = run.valid, run.source
        out_store = self.router.store_for(valid.output_file, "snapshot_config.output_file")
        if run.inline:
            run = dataclasses.replace(run, pinned=await source.handle())
        info = await self.engine.probe(await run.handle(), source.version, run.wall_s, run.priority)
        the_plan = (
            planning.plan_single(valid.config, info.duration_s)
            if run.inline
            else planning.plan(
                valid.config, info.duration_s, 1 / float(info.frame_rate) if info.frame_rate > 0 else None
            )
        )
        ctx = Context(
            ledger=self.ledger,
            engine=self.engine,
            router=self.router,
            wall_s=run.wall_s,
            priority=run.priority,
            commit_progress=not run.inline,
            max_sprite_pixels=self.max_sprite_pixels,
        )
        if the_plan.dropped:
            log.info("%d points lie past the end of the video and are left out", the_plan.dropped)
        outputs = OutputWriter(ctx, job, valid, info, out_store, published)
        points = outputs.points_to_capture(the_plan)
        outputs.start(the_plan)
        async with self.engine.workdir(job.id) as workdir:
            first_override = await self._skip_black(run, the_plan, workdir)
            outputs.fresh_handle = run.handle
            frames = self._frames(run, info, points, first_override, workdir, outputs.capture_size())
            async with contextlib.aclosing(frames):
                async for point, frame in frames:
                    if frame is None or outputs.repeats(frame):
                        continue  # intra: no keyframe near this point, or the same keyframe again
                    await outputs.add(point, frame, workdir)
            if valid.config.animated_out is not None:
                await outputs.write_animation(await run.handle(), workdir)
            await outputs.finish(workdir)
        if run.inline and valid.frame_type is FrameType.INTRA and self.engine.cached_key_index(source.version) is None:
            # The next intra snapshot of this input decodes only its keyframe.
            self.engine.key_index_later(await run.handle(), source.version, info, self.sync_timeout_s * 10)
        return outputs.job

    async def _skip_black(self, run: Run, the_plan: planning.Plan, workdir: Path) -> float | None:
        if the_plan.black is None or not the_plan.points:
            return None
        return await self.engine.first_non_black(
            await run.handle(),
            window_s=planning.BLACK_WINDOW_S,
            level=the_plan.black.level,
            pixel_threshold=the_plan.black.pixel_threshold,
            workdir=workdir,
            wall_seconds=self.timeout,
        )

    async def _units(
        self,
        run: Run,
        info: MediaInfo,
        points: list[planning.Point],
        first_override: float | None,
        frame_size: tuple[int, int],
    ) -> tuple[list[_Unit], KeyIndex | None, bool]:
        """The run's ffmpeg runs, in time order, and the keyframe index if one was used."""
        valid, source = run.valid, run.source
        intra = valid.frame_type is FrameType.INTRA
        if run.inline:
            # One snapshot: one capture. An intra one decodes only the chosen keyframe when an
            # earlier call built the input's keyframe index (an inline run never builds it).
            index = self.engine.cached_key_index(source.version)
            return [_Unit(extraction.Mode.SINGLE, [points[0].time_ms / 1000], [[0]], valid.frame_type)], index, False
        first = 1 if first_override is not None and points else 0
        rest = points[first:]
        units: list[_Unit] = []
        if first:
            assert first_override is not None
            # The first image after black frames: the frame found, exactly.
            units.append(_Unit(extraction.Mode.SINGLE, [first_override], [[0]], FrameType.NORMAL))
        index = (
            await self.engine.key_index(await run.handle(), source.version, info, self.timeout)
            if intra and rest
            else None
        )
        drop = False
        if index:
            drop = await self.engine.filters_input_packets(await run.handle())
            # FrameType intra with the keyframe index: each point's keyframe is chosen from
            # the index (domain.frames), and each chosen keyframe is decoded once.
            serves: dict[float, list[int]] = {}
            for i, p in enumerate(rest, start=first):
                key = frames_rule.nearest_keyframe(index.times, p.time_ms / 1000)
                if key is not None and not _too_far(key, p):
                    serves.setdefault(key, []).append(i)
            keys = sorted(serves)
            xplan = extraction.plan_keyframes(
                keys,
                list(index.times),
                only_chosen=drop,
                frame_size=frame_size,
                processes=self.engine.max_processes,
                duration_s=info.duration_s,
                budget_mb=self.engine.job_memory_mb,
            )
            for c in xplan.chunks:
                wanted = [keys[k] for k in c.indexes]
                units.append(_Unit(c.mode, wanted, [serves[k] for k in wanted], valid.frame_type))
        else:
            gop_s = 0.0
            if len(rest) > 2:
                gop_s = await self.engine.keyframe_interval(await run.handle(), source.version, self.timeout)
            xplan = extraction.plan_extraction(
                [p.time_ms for p in rest],
                gop_s=gop_s,
                frame_size=frame_size,
                processes=self.engine.max_processes,
                dense_allowed=not intra or all(p.tolerance_ms is not None for p in rest),
                budget_mb=self.engine.job_memory_mb,
            )
            for c in xplan.chunks:
                idx = [i + first for i in c.indexes]
                units.append(
                    _Unit(c.mode, [points[i].time_ms / 1000 for i in idx], [[i] for i in idx], valid.frame_type)
                )
        log.info("extraction plan: %s", xplan.reason)
        return units, index, drop

    async def _frames(
        self,
        run: Run,
        info: MediaInfo,
        points: list[planning.Point],
        first_override: float | None,
        workdir: Path,
        size: tuple[int | None, int | None],
    ) -> AsyncGenerator[tuple[planning.Point, Frame | None], None]:
        """Yield (point, frame, or None for a skipped intra point) in time order.

        The extraction planner groups points into ffmpeg runs (single captures, seek
        batches, decode passes, keyframe passes); as many runs as the engine allows are in
        flight, and results are handed out in order so images are numbered and published in
        time order.
        """
        valid = run.valid
        width, height = size
        cells_only = valid.config.tile_out is not None and not validation.keeps_cell_pics(valid.config)
        enc = encodings.cells(valid, info, size) if cells_only else encodings.snapshots(valid, info)
        units, index, drop = await self._units(run, info, points, first_override, info.output_size(width, height))
        captures = _Captures(self.engine, run, info, enc, points, index, drop)
        engine = self.engine

        async def run_unit(number: int, unit: _Unit) -> list[Frame | None]:
            folder = workdir / f"c{number:05d}"
            folder.mkdir()
            return await captures.unit(unit, folder)

        def hand_out(unit: _Unit, results: list[Frame | None]) -> list[tuple[planning.Point, Frame | None]]:
            out: list[tuple[planning.Point, Frame | None]] = []
            intra = unit.frame_type is FrameType.INTRA
            for frame, served in zip(results, unit.serves, strict=True):
                for i in served:
                    if intra and frame is not None and _too_far(frame.time_s, points[i]):
                        out.append((points[i], None))  # no keyframe within half a step of this point
                    else:
                        out.append((points[i], frame))
            return out

        window = max(1, engine.max_processes)
        pending: deque[tuple[_Unit, asyncio.Task[list[Frame | None]]]] = deque()
        try:
            for number, unit in enumerate(units):
                pending.append((unit, asyncio.create_task(run_unit(number, unit))))
                if len(pending) > window:
                    done, task = pending.popleft()
                    for item in hand_out(done, await task):
                        yield item
            while pending:
                done, task = pending.popleft()
                for item in hand_out(done, await task):
                    yield item
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(t for _, t in pending), return_exceptions=True)


class _Captures:
    """The ffmpeg runs of one job's units, with what they share (encoding, index, limits)."""

    def __init__(
        self,
        engine: MediaEngine,
        run: Run,
        info: MediaInfo,
        enc: Encoding,
        points: list[planning.Point],
        index: KeyIndex | None,
        drop: bool,
    ) -> None:
        self.engine = engine
        self.run = run
        self.info = info
        self.enc = enc
        self.points = points
        self.index = index
        self.drop = drop

    async def single(self, handle: InputHandle, time_s: float, frame_type: FrameType, folder: Path) -> Frame | None:
        try:
            return await self.engine.snapshot(
                handle,
                self.info,
                time_s=time_s,
                frame_type=frame_type,
                enc=self.enc,
                workdir=folder,
                wall_seconds=self.run.wall_s,
                priority=self.run.priority,
                keys=self.index.times if self.index else None,
            )
        except PastTheEnd:
            if self.run.inline:
                raise  # a snapshot past the end is the caller's error
            # The probe's duration can overstate the video (an estimate for files without an
            # index): points after the last frame are left out.
            return None

    async def unit(self, unit: _Unit, folder: Path) -> list[Frame | None]:
        engine, info, enc, t = self.engine, self.info, self.enc, self.run.wall_s
        handle = await self.run.handle()
        times = unit.times
        intra = unit.frame_type is FrameType.INTRA
        results: list[Frame | None]
        if unit.mode is extraction.Mode.SINGLE:
            return [await self.single(handle, times[0], unit.frame_type, folder)]
        if unit.mode is extraction.Mode.KEYPASS:
            assert self.index is not None
            results = await engine.keyframe_pass(
                handle, info, times, self.index, enc=enc, workdir=folder, wall_seconds=t, drop_others=self.drop
            )
        elif unit.mode is extraction.Mode.PASS:
            tolerances = [self.points[s[0]].tolerance_ms for s in unit.serves]
            results = await engine.decode_pass(
                handle,
                info,
                times,
                intra=intra,
                tolerances_s=[None if x is None else x / 1000 for x in tolerances],
                enc=enc,
                workdir=folder,
                wall_seconds=t,
            )
        else:
            # With the index, the times are keyframes: the frame shown at a keyframe's time
            # is that keyframe, so an exact seek takes it.
            results = await engine.seek_batch(
                handle, info, times, intra=intra and not self.index, enc=enc, workdir=folder, wall_seconds=t
            )
        for k, frame in enumerate(results):
            if frame is None:  # not served exactly by the batch: take this point on its own
                alone = folder / f"s{k}"
                alone.mkdir()
                results[k] = await self.single(handle, times[k], unit.frame_type, alone)
        return results


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One ffmpeg run of a job: how, the times it captures, for each time the points
    (indexes) its frame serves, and which frame it takes (the first image after black
    frames is always the exact frame found)."""

    mode: extraction.Mode
    times: list[float]
    serves: list[list[int]]
    frame_type: FrameType


def _too_far(time_s: float, point: planning.Point) -> bool:
    """An intra frame further from its point than half a step (the point is then skipped)."""
    return point.tolerance_ms is not None and abs(time_s * 1000 - point.time_ms) > point.tolerance_ms + 0.001


def _as_mps_error(exc: Exception, job: Job) -> MpsError:
    """An exception as the error the job ends with: MPS errors as they are, a full disk as
    the service fault it is, anything else as an internal error (logged with its trace)."""
    if isinstance(exc, MpsError):
        return exc
    fault = faults.from_exception(exc)
    if fault is not None:
        return fault
    log.exception("job %s failed unexpectedly", job.id, exc_info=exc)
    return InternalError("An internal error stopped the job; quote the job id when reporting it.")
