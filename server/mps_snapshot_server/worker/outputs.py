"""What a run writes: single images (if kept), sprites filled cell by cell (one in memory
at a time), the animated preview, then the WebVTT and JSON storyboards; and the list of
what was published, so a failed or cancelled run takes all of it back."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import posixpath
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mps_snapshot_server.domain import planning, sprites, validation
from mps_snapshot_server.domain.errors import ResourceContentBad
from mps_snapshot_server.domain.models import AnimatedImage, FrameType, Job, JobEventKind, SnapshotImage, SpriteImage
from mps_snapshot_server.media import animate, encodings
from mps_snapshot_server.media.capture import Frame
from mps_snapshot_server.media.engine import MediaEngine, Priority
from mps_snapshot_server.media.probe import MediaInfo
from mps_snapshot_server.media.sprite import SpriteCanvas
from mps_snapshot_server.storage.base import InputHandle, ObjectStore
from mps_snapshot_server.storage.router import StorageRouter
from mps_snapshot_server.store.ledger import JobLedger

log = logging.getLogger(__name__)

# Progress is committed at most this often (every event still reaches watchers at once).
_COMMIT_EVERY_S = 1.0


def media_time_ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclasses.dataclass
class Published:
    """Objects a run has published, so a failed or cancelled run can take them back."""

    items: list[tuple[ObjectStore, str, str]] = dataclasses.field(default_factory=list)

    async def remove_all(self, job_id: str) -> None:
        for store, bucket, key in self.items:
            try:
                await store.delete(bucket, key)
            except Exception:
                log.exception("could not remove %s/%s of job %s", bucket, key, job_id)
        self.items.clear()


@dataclasses.dataclass(frozen=True)
class Context:
    """What the writer needs from the run: where to write, how long an ffmpeg run may take,
    at which priority, and whether progress is committed (queued jobs) or only published
    (an inline snapshot is committed once, when it ends)."""

    ledger: JobLedger
    engine: MediaEngine
    router: StorageRouter
    wall_s: float
    priority: Priority
    commit_progress: bool
    max_sprite_pixels: int


class OutputWriter:
    """What a run writes: single images (if kept), sprites filled cell by cell (one in
    memory at a time), then the WebVTT and JSON storyboards. Keeps the job's progress."""

    def __init__(
        self,
        ctx: Context,
        job: Job,
        valid: validation.ValidRequest,
        info: MediaInfo,
        out_store: ObjectStore,
        written: Published,
    ) -> None:
        self.ctx = ctx
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
            self.tile_store = ctx.router.store_for(config.tile_output_file, "snapshot_config.tile_output_file")
            self.layout = sprites.layout(config.tile_out, encodings.output_size(valid, info), valid.background)
            sprites.check_size(self.layout, ctx.max_sprite_pixels)
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
        kind = JobEventKind.STATE
        replaced = ""
        smart = valid.config.smart_pick
        # MPS's black-frame rule keeps deciding the first image when it applies.
        if smart is not None and self.fresh_handle is not None and not (index == 0 and self.black_first):
            cells_only = self.layout is not None and not self.keep
            frame, replaced = await self.ctx.engine.smart_pick(
                await self.fresh_handle(),
                self.info,
                frame,
                time_s=point.time_ms / 1000,
                smart=smart,
                enc=encodings.cells(valid, self.info, self.capture_size())
                if cells_only
                else encodings.snapshots(valid, self.info),
                workdir=workdir,
                wall_seconds=self.ctx.wall_s,
                priority=self.ctx.priority,
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
            kind = JobEventKind.IMAGE
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
                kind = JobEventKind.SPRITE
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

    async def _progress(self, kind: JobEventKind) -> None:
        count = self.step_count_so_far()
        self.job = dataclasses.replace(
            self.job, images=tuple(self.images), count=count, sprites=tuple(self.sprites), tile_count=len(self.sprites)
        )
        if kind is JobEventKind.STATE:
            return
        if self.ctx.commit_progress and time.monotonic() - self.last_commit >= _COMMIT_EVERY_S:
            await self.ctx.ledger.save(self.job, kind)
            self.last_commit = time.monotonic()
        else:
            self.ctx.ledger.publish(kind, self.job)

    def step_count_so_far(self) -> int:
        if self.prefiltered and self.layout is not None:
            # Only every step-th snapshot was decoded; Count still reports the snapshots
            # the request asked for up to this point.
            return min(self.step_count, self.taken * self.layout.step)
        return self.taken

    async def finish(self, workdir: Path) -> None:
        if self.canvas is not None and self.canvas.cells:
            await self._write_sprite(workdir)
            await self._progress(JobEventKind.SPRITE)
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
        store = self.ctx.router.store_for(ref, "snapshot_config.animated_output_file")
        key = name.render(input_key=valid.input_key)
        spec = animate.plan(anim, self.info, key, encodings.tone_map(valid, self.info))
        folder = workdir / "animated"
        folder.mkdir()
        preview = await self.ctx.engine.animate(
            handle, spec, workdir=folder, wall_seconds=self.ctx.wall_s, max_bytes=anim.max_bytes or 0
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
