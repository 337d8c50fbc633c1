"""Running one asynchronous job: probe, plan, capture each image, publish it, finish.

The runner owns a job from "Snapshoting" to its final state. It never leaves a partial
result: on failure or cancellation every object it wrote is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import posixpath
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from pathlib import Path

from mps_snapshot_server.domain import extraction, planning, sprites, validation
from mps_snapshot_server.domain import frames as frames_rule
from mps_snapshot_server.domain.errors import InternalError, MpsError, ResourceContentBad, ServiceFault
from mps_snapshot_server.domain.models import AnimatedImage, FrameType, Job, JobState, SnapshotImage, SpriteImage
from mps_snapshot_server.media import animate, encodings
from mps_snapshot_server.media.capture import Frame, PastTheEnd
from mps_snapshot_server.media.engine import MediaEngine
from mps_snapshot_server.media.probe import KeyIndex, MediaInfo
from mps_snapshot_server.media.sprite import SpriteCanvas
from mps_snapshot_server.service.jobs import JobService, media_time_ms, now
from mps_snapshot_server.storage.base import InputHandle, ObjectInfo, ObjectStore
from mps_snapshot_server.storage.router import StorageRouter
from mps_snapshot_server.worker import faults

log = logging.getLogger(__name__)

# Progress is committed at most this often (every event still reaches watchers at once).
_COMMIT_EVERY_S = 1.0


@dataclasses.dataclass
class _Written:
    """Objects a run has published, so a failed or cancelled run can take them back."""

    items: list[tuple[ObjectStore, str, str]] = dataclasses.field(default_factory=list)

    async def remove_all(self, job_id: str) -> None:
        for store, bucket, key in self.items:
            try:
                await store.delete(bucket, key)
            except Exception:
                log.exception("could not remove %s/%s of job %s", bucket, key, job_id)
        self.items.clear()


class JobRunner:
    def __init__(
        self,
        *,
        jobs: JobService,
        engine: MediaEngine,
        router: StorageRouter,
        ffmpeg_timeout_s: float,
        notify_wanted: Callable[[Job], bool],
        max_sprite_pixels: int,
    ) -> None:
        self.jobs = jobs
        self.engine = engine
        self.router = router
        self.timeout = ffmpeg_timeout_s
        self.notify_wanted = notify_wanted
        self.max_sprite_pixels = max_sprite_pixels

    async def run(self, job: Job, *, retry: bool = False) -> Job:
        """Run a job already committed as Snapshoting; return it committed in its final state,
        or, when it met a service fault and ``retry`` is set, committed as Submitted again
        (the scheduler queues it after a backoff).

        Cancellation propagates (after the outputs are removed) so the scheduler decides
        what the job becomes (Cancelled, or Submitted again on shutdown).
        """
        written = _Written()
        error: MpsError | None = None
        try:
            job = await self._capture_all(job, written)
        except MpsError as exc:
            error = exc
        except asyncio.CancelledError:
            await asyncio.shield(written.remove_all(job.id))
            raise
        except Exception as exc:
            error = faults.from_exception(exc)
            if error is None:
                log.exception("job %s failed unexpectedly", job.id)
                error = InternalError("An internal error stopped the job; quote the job id when reporting it.")
        if error is not None:
            await asyncio.shield(written.remove_all(job.id))
            if isinstance(error, ServiceFault):
                self.jobs.report_fault(error)
                if retry:
                    log.warning("job %s attempt %d met a service fault, will retry: %s", job.id, job.attempts, error)
                    again = dataclasses.replace(
                        job,
                        state=JobState.SUBMITTED,
                        code=error.code,
                        message=f"Attempt {job.attempts} stopped by a fault of the server, not of the input "
                        f"({error.message}); the job will run again.",
                        count=0,
                        images=(),
                        sprites=(),
                        tile_count=0,
                    )
                    return await asyncio.shield(self.jobs.save(again))
            job = dataclasses.replace(
                job,
                state=JobState.FAIL,
                code=error.code,
                message=error.message,
                count=0,
                images=(),
                sprites=(),
                tile_count=0,
                animated=None,
            )
        job = dataclasses.replace(job, finish_time=now(), notify_pending=self.notify_wanted(job))
        await asyncio.shield(self.jobs.save(job))
        log.info(
            "job %s ended %s (%d images)%s",
            job.id,
            job.state.value,
            job.count,
            f": {job.code} {job.message}" if job.code else "",
        )
        return job

    async def _capture_all(self, job: Job, written: _Written) -> Job:
        valid = validation.validate(job.request)
        in_store = self.router.store_for(valid.input, "input")
        out_store = self.router.store_for(valid.output_file, "snapshot_config.output_file")
        head = await in_store.head(valid.input.bucket, valid.input_key)
        try:
            return await self._capture(job, written, valid, in_store, out_store, head)
        except ResourceContentBad as exc:
            work = self.engine.tmp_dir
            raise await faults.explain(exc, in_store, valid.input.bucket, valid.input_key, work) from None

    async def _capture(
        self,
        job: Job,
        written: _Written,
        valid: validation.ValidRequest,
        in_store: ObjectStore,
        out_store: ObjectStore,
        head: ObjectInfo,
    ) -> Job:
        handle = await in_store.input_handle(valid.input.bucket, valid.input_key)
        version = (id(in_store), valid.input.bucket, valid.input_key, head.version)
        info = await self.engine.probe(handle, version, self.timeout)
        the_plan = planning.plan(valid.config, info.duration_s)
        outputs = _Outputs(self, job, valid, info, out_store, written)
        points = outputs.points_to_capture(the_plan)
        job = outputs.start(the_plan)
        async with self.engine.workdir(job.id) as workdir:
            first_override = await self._skip_black(handle, the_plan, workdir)

            async def fresh_handle() -> InputHandle:
                # Signed anew for every ffmpeg run: presigned URLs expire, long jobs do not.
                return await in_store.input_handle(valid.input.bucket, valid.input_key)

            outputs.fresh_handle = fresh_handle

            frames = self._frames(
                fresh_handle, version, info, valid, points, first_override, workdir, outputs.capture_size()
            )
            async with contextlib.aclosing(frames):
                async for point, frame in frames:
                    if frame is None or outputs.repeats(frame):
                        continue  # intra: no keyframe near this point, or the same keyframe again
                    await outputs.add(point, frame, workdir)
            if valid.config.animated_out is not None:
                await outputs.write_animation(await fresh_handle(), workdir)
            await outputs.finish(workdir)
        return outputs.job

    async def _skip_black(self, handle: InputHandle, the_plan: planning.Plan, workdir: Path) -> float | None:
        if the_plan.black is None or not the_plan.points:
            return None
        found = await self.engine.first_non_black(
            handle,
            window_s=planning.BLACK_WINDOW_S,
            level=the_plan.black.level,
            pixel_threshold=the_plan.black.pixel_threshold,
            workdir=workdir,
            wall_seconds=self.timeout,
        )
        return found

    async def _units(
        self,
        new_handle: Callable[[], Awaitable[InputHandle]],
        version: Hashable,
        info: MediaInfo,
        valid: validation.ValidRequest,
        points: list[planning.Point],
        first_override: float | None,
        frame_size: tuple[int, int],
    ) -> tuple[list[_Unit], KeyIndex | None, bool]:
        """The job's ffmpeg runs, in time order, and the keyframe index if one was used."""
        intra = valid.frame_type is FrameType.INTRA
        first = 1 if first_override is not None and points else 0
        rest = points[first:]
        units: list[_Unit] = []
        if first:
            assert first_override is not None
            units.append(_Unit(None, [first_override], [[0]]))
        index = await self.engine.key_index(await new_handle(), version, info, self.timeout) if intra and rest else None
        drop = False
        if index:
            drop = await self.engine.filters_input_packets(await new_handle())
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
                units.append(_Unit(c.mode, wanted, [serves[k] for k in wanted]))
        else:
            gop_s = 0.0
            if len(rest) > 2:
                gop_s = await self.engine.keyframe_interval(await new_handle(), version, self.timeout)
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
                units.append(_Unit(c.mode, [points[i].time_ms / 1000 for i in idx], [[i] for i in idx]))
        log.info("extraction plan: %s", xplan.reason)
        return units, index, drop

    async def _frames(
        self,
        new_handle: Callable[[], Awaitable[InputHandle]],
        version: Hashable,
        info: MediaInfo,
        valid: validation.ValidRequest,
        points: list[planning.Point],
        first_override: float | None,
        workdir: Path,
        size: tuple[int | None, int | None],
    ) -> AsyncGenerator[tuple[planning.Point, Frame | None], None]:
        """Yield (point, frame, or None for a skipped intra point) in time order.

        The extraction planner groups points into ffmpeg runs (seek batches, decode passes,
        keyframe passes); as many runs as the engine allows are in flight, and results are
        handed out in order so images are numbered and published in time order.
        """
        width, height = size
        cells_only = valid.config.tile_out is not None and not validation.keeps_cell_pics(valid.config)
        intra = valid.frame_type is FrameType.INTRA
        enc = encodings.cells(valid, info, size) if cells_only else encodings.snapshots(valid, info)
        units, index, drop = await self._units(
            new_handle, version, info, valid, points, first_override, info.output_size(width, height)
        )
        t = self.timeout

        async def run_unit(number: int, unit: _Unit) -> list[Frame | None]:
            folder = workdir / f"c{number:05d}"
            folder.mkdir()
            handle = await new_handle()
            times = unit.times
            results: list[Frame | None]
            if unit.mode is None:
                results = [None]  # the first image after black frames: taken on its own below
            elif unit.mode is extraction.Mode.KEYPASS:
                assert index is not None
                results = await self.engine.keyframe_pass(
                    handle, info, times, index, enc=enc, workdir=folder, wall_seconds=t, drop_others=drop
                )
            elif unit.mode is extraction.Mode.PASS:
                tolerances = [points[s[0]].tolerance_ms for s in unit.serves]
                results = await self.engine.decode_pass(
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
                # With the index, the times are keyframes: the frame shown at a keyframe's
                # time is that keyframe, so an exact seek takes it.
                results = await self.engine.seek_batch(
                    handle, info, times, intra=intra and not index, enc=enc, workdir=folder, wall_seconds=t
                )
            single_type = FrameType.NORMAL if unit.mode is None else valid.frame_type
            for k, frame in enumerate(results):
                if frame is None:  # not served exactly by the batch: take this point on its own
                    single = folder / f"s{k}"
                    single.mkdir()
                    try:
                        results[k] = await self.engine.snapshot(
                            handle,
                            info,
                            time_s=times[k],
                            frame_type=single_type,
                            enc=enc,
                            workdir=single,
                            wall_seconds=t,
                            keys=index.times if index else None,
                        )
                    except PastTheEnd:
                        # The probe's duration can overstate the video (an estimate for files
                        # without an index): points after the last frame are left out.
                        results[k] = None
            return results

        def hand_out(unit: _Unit, results: list[Frame | None]) -> list[tuple[planning.Point, Frame | None]]:
            out: list[tuple[planning.Point, Frame | None]] = []
            for frame, served in zip(results, unit.serves, strict=True):
                for i in served:
                    if intra and unit.mode is not None and frame is not None and _too_far(frame.time_s, points[i]):
                        out.append((points[i], None))  # no keyframe within half a step of this point
                    else:
                        out.append((points[i], frame))
            return out

        window = max(1, self.engine.max_processes)
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


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One ffmpeg run of a job: how (None: the first image after black frames, on its own),
    the times it captures, and for each time the points (indexes) its frame serves."""

    mode: extraction.Mode | None
    times: list[float]
    serves: list[list[int]]


def _too_far(time_s: float, point: planning.Point) -> bool:
    """An intra frame further from its point than half a step (the point is then skipped)."""
    return point.tolerance_ms is not None and abs(time_s * 1000 - point.time_ms) > point.tolerance_ms + 0.001


class _Outputs:
    """What a run writes: single images (if kept), sprites filled cell by cell (one in
    memory at a time), then the WebVTT and JSON storyboards. Keeps the job's progress."""

    def __init__(
        self,
        runner: JobRunner,
        job: Job,
        valid: validation.ValidRequest,
        info: MediaInfo,
        out_store: ObjectStore,
        written: _Written,
    ) -> None:
        self.runner = runner
        self.job = job
        self.valid = valid
        self.info = info
        self.out_store = out_store
        self.written = written
        config = valid.config
        self.keep = validation.keeps_cell_pics(config)
        self.tile_store = out_store
        self.layout: sprites.Layout | None = None
        if config.tile_out is not None and valid.tile_name is not None and config.tile_output_file is not None:
            self.tile_store = runner.router.store_for(config.tile_output_file, "snapshot_config.tile_output_file")
            self.layout = sprites.layout(config.tile_out, encodings.output_size(valid, info), valid.background)
            sprites.check_size(self.layout, runner.max_sprite_pixels)
        self.images: list[SnapshotImage] = []
        self.sprites: list[SpriteImage] = []
        self.tiles: list[sprites.Tile] = []
        self.taken = 0
        self.last_time: float | None = None
        self.canvas: SpriteCanvas | None = None
        self.prefiltered = False
        self.step_count = 0
        self.last_commit = time.monotonic()
        #: Smart picks: a fresh input handle for each measuring run (set by the runner).
        self.fresh_handle: Callable[[], Awaitable[InputHandle]] | None = None
        self.black_first = False

    def capture_size(self) -> tuple[int | None, int | None]:
        """The size ffmpeg scales to. Without single images, frames are decoded straight to
        their place in the cell, so no full-size intermediate image is ever made."""
        config = self.valid.config
        if self.layout is None or self.keep:
            return config.width, config.height
        frame = encodings.output_size(self.valid, self.info)
        _, _, w, h = sprites.fit(frame, (self.layout.cell_width, self.layout.cell_height))
        return w, h

    def points_to_capture(self, the_plan: planning.Plan) -> list[planning.Point]:
        points = list(the_plan.points)
        lay = self.layout
        # Without single images, only cells need capturing; exact frames are never
        # skipped, so every step-th point is known to be a cell up front.
        if lay is not None and not self.keep and lay.step > 1 and self.valid.frame_type is FrameType.NORMAL:
            self.prefiltered = True
            self.step_count = len(points)
            points = points[:: lay.step]
        return points

    def start(self, the_plan: planning.Plan) -> Job:
        self.black_first = the_plan.black is not None
        planned = len(the_plan.points)
        sprites_planned = self.layout.sprites_for(self.layout.cells_for(planned)) if self.layout else 0
        self.job = dataclasses.replace(
            self.job,
            images_planned=planned if self.keep else 0,
            sprites_planned=sprites_planned,
            images=(),
            sprites=(),
            count=0,
            tile_count=0,
            animated=None,
        )
        return self.job

    def repeats(self, frame: Frame) -> bool:
        return (
            self.valid.frame_type is FrameType.INTRA
            and self.last_time is not None
            and abs(frame.time_s - self.last_time) < 1e-6
        )

    async def add(self, point: planning.Point, frame: Frame, workdir: Path) -> None:
        valid = self.valid
        index = self.taken
        self.taken += 1
        self.last_time = frame.time_s
        kind = "state"
        replaced = ""
        smart = valid.config.smart_pick
        # MPS's black-frame rule keeps deciding the first image when it applies.
        if smart is not None and self.fresh_handle is not None and not (index == 0 and self.black_first):
            cells_only = self.layout is not None and not self.keep
            frame, replaced = await self.runner.engine.smart_pick(
                await self.fresh_handle(),
                self.info,
                frame,
                time_s=point.time_ms / 1000,
                smart=smart,
                enc=encodings.cells(valid, self.info, self.capture_size())
                if cells_only
                else encodings.snapshots(valid, self.info),
                workdir=workdir,
                wall_seconds=self.runner.timeout,
            )
        if self.keep:
            key = valid.output_name.render(
                input_key=valid.input_key, count=len(self.images) + 1, snapshot_time_ms=point.time_ms
            )
            validation.check_not_input(valid, valid.output_file.bucket, key, "snapshot_config.output_file.object")
            self.written.items.append((self.out_store, valid.output_file.bucket, key))
            await self.out_store.put_file(valid.output_file.bucket, key, frame.path, valid.image_format.content_type)
            self.images.append(
                SnapshotImage(
                    object=key,
                    time_ms=media_time_ms(frame.time_s),
                    requested_time_ms=point.time_ms,
                    width=frame.width,
                    height=frame.height,
                    replaced=replaced,
                )
            )
            kind = "image"
        lay = self.layout
        if lay is not None and (self.prefiltered or index % lay.step == 0):
            if self.canvas is None:
                self.canvas = SpriteCanvas(lay)
            canvas = self.canvas
            x, y, w, h = await asyncio.to_thread(canvas.add, frame.path)
            self.tiles.append(
                sprites.Tile(
                    sprite=self._sprite_key(len(self.sprites) + 1),
                    x=x,
                    y=y,
                    width=w,
                    height=h,
                    time_ms=media_time_ms(frame.time_s),
                    requested_ms=point.time_ms,
                )
            )
            if canvas.full:
                await self._write_sprite(workdir)
                kind = "sprite"
        frame.path.unlink(missing_ok=True)
        await self._progress(kind)

    def _sprite_key(self, number: int) -> str:
        assert self.valid.tile_name is not None
        return self.valid.tile_name.render(input_key=self.valid.input_key, tile_count=number)

    async def _write_sprite(self, workdir: Path) -> None:
        canvas = self.canvas
        config = self.valid.config
        assert canvas is not None and config.tile_output_file is not None
        self.canvas = None
        number = len(self.sprites) + 1
        path = workdir / f"sprite{number:05d}.jpg"
        fmt = self.valid.sprite_format
        await asyncio.to_thread(canvas.save, path, fmt, config.quality, bool(config.lossless))
        key = self._sprite_key(number)
        bucket = config.tile_output_file.bucket
        validation.check_not_input(self.valid, bucket, key, "snapshot_config.tile_output_file.object")
        self.written.items.append((self.tile_store, bucket, key))
        await self.tile_store.put_file(bucket, key, path, fmt.content_type)
        path.unlink(missing_ok=True)
        self.sprites.append(
            SpriteImage(object=key, cell_count=canvas.cells, width=canvas.layout.width, height=canvas.layout.height)
        )

    async def _progress(self, kind: str) -> None:
        count = self.step_count_so_far()
        self.job = dataclasses.replace(
            self.job, images=tuple(self.images), count=count, sprites=tuple(self.sprites), tile_count=len(self.sprites)
        )
        if kind == "state":
            return
        if time.monotonic() - self.last_commit >= _COMMIT_EVERY_S:
            await self.runner.jobs.save(self.job, kind)
            self.last_commit = time.monotonic()
        else:
            self.runner.jobs.events.publish(kind, self.job)

    def step_count_so_far(self) -> int:
        if self.prefiltered and self.layout is not None:
            # Only every step-th snapshot was decoded; Count still reports the snapshots
            # the request asked for up to this point.
            return min(self.step_count, self.taken * self.layout.step)
        return self.taken

    async def finish(self, workdir: Path) -> None:
        if self.canvas is not None and self.canvas.cells:
            await self._write_sprite(workdir)
            await self._progress("sprite")
        if self.taken == 0:
            raise ResourceContentBad(
                "No image could be taken: no keyframe lies near any requested time; "
                "use FrameType normal, or a longer Interval."
            )
        if self.valid.vtt:
            await self._write_vtt(workdir)
        if self.sprites and self.layout is not None:
            await self._write_storyboard(workdir)
        self.job = dataclasses.replace(
            self.job,
            state=JobState.SUCCESS,
            count=self.step_count_so_far(),
            images=tuple(self.images),
            sprites=tuple(self.sprites),
            tile_count=len(self.sprites),
        )

    async def write_animation(self, handle: InputHandle, workdir: Path) -> None:
        """The animated preview (beyond MPS), from its own decode of its time range."""
        valid = self.valid
        anim, ref, name = valid.config.animated_out, valid.config.animated_output_file, valid.animated_name
        assert anim is not None and ref is not None and name is not None
        store = self.runner.router.store_for(ref, "snapshot_config.animated_output_file")
        key = name.render(input_key=valid.input_key)
        spec = animate.plan(anim, self.info, key, encodings.tone_map(valid, self.info))
        folder = workdir / "animated"
        folder.mkdir()
        preview = await self.runner.engine.animate(
            handle, spec, workdir=folder, wall_seconds=self.runner.timeout, max_bytes=anim.max_bytes or 0
        )
        self.written.items.append((store, ref.bucket, key))
        await store.put_file(ref.bucket, key, preview.path, f"image/{preview.format}")
        self.job = dataclasses.replace(
            self.job,
            animated=AnimatedImage(
                object=key,
                format=preview.format,
                frame_count=preview.frame_count,
                duration_ms=preview.duration_ms,
                width=preview.width,
                height=preview.height,
                bytes=preview.bytes,
            ),
        )

    def _beside(self, key: str, extension: str) -> str:
        folder = posixpath.dirname(key)
        name = sprites_name(self.valid.input_key) + extension
        return f"{folder}/{name}" if folder else name

    async def _put_text(
        self, store: ObjectStore, bucket: str, key: str, text: str, content_type: str, workdir: Path
    ) -> None:
        path = workdir / f"text-{len(self.written.items)}"
        validation.check_not_input(self.valid, bucket, key, "snapshot_config.output_file.object")
        await asyncio.to_thread(path.write_text, text, "utf-8")
        self.written.items.append((store, bucket, key))
        await store.put_file(bucket, key, path, content_type)
        path.unlink(missing_ok=True)

    async def _write_vtt(self, workdir: Path) -> None:
        config = self.valid.config
        duration_ms = self.info.duration_s * 1000
        spt_frag = bool(config.sub_out_is_spt_frag) and bool(self.sprites)
        if spt_frag:
            assert config.tile_output_file is not None
            store, bucket = self.tile_store, config.tile_output_file.bucket
            key = self._beside(self.sprites[0].object, ".vtt")
            targets = [f"{sprites.relative(key, t.sprite)}#xywh={t.x},{t.y},{t.width},{t.height}" for t in self.tiles]
            times = [t.requested_ms for t in self.tiles]
        elif self.images:
            store, bucket = self.out_store, self.valid.output_file.bucket
            key = self._beside(self.images[0].object, ".vtt")
            targets = [sprites.relative(key, i.object) for i in self.images]
            times = [i.requested_time_ms for i in self.images]
        else:
            raise ResourceContentBad(
                "Format vtt needs images to point at: keep the single snapshots "
                "(IsKeepCellPic true) or set SubOut.IsSptFrag true with TileOut."
            )
        text = sprites.webvtt(sprites.cues(times, targets, duration_ms))
        await self._put_text(store, bucket, key, text, "text/vtt", workdir)
        self.job = dataclasses.replace(self.job, web_vtt_object=key)

    async def _write_storyboard(self, workdir: Path) -> None:
        config = self.valid.config
        assert self.layout is not None and config.tile_output_file is not None
        key = self._beside(self.sprites[0].object, ".json")
        text = sprites.storyboard_json(
            self.tiles, self.layout, self.info.duration_s * 1000, [s.object for s in self.sprites], key
        )
        await self._put_text(self.tile_store, config.tile_output_file.bucket, key, text, "application/json", workdir)
        self.job = dataclasses.replace(self.job, storyboard_object=key)


def sprites_name(input_key: str) -> str:
    """The input's file name without extension: storyboards are named after the video."""
    base = posixpath.basename(input_key)
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base
