"""Running one asynchronous job: probe, plan, capture each image, publish it, finish.

The runner owns a job from "Snapshoting" to its final state. It never leaves a partial
result: on failure or cancellation every object it wrote is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from server.domain import planning, validation
from server.domain.errors import InternalError, MpsError, ResourceContentBad
from server.domain.models import FrameType, Job, JobState, SnapshotImage
from server.jobs import JobService, media_time_ms, now
from server.media.engine import MediaEngine
from server.media.probe import MediaInfo
from server.media.snapshot import Frame
from server.storage.base import InputHandle, ObjectStore
from server.storage.router import StorageRouter

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
    ) -> None:
        self.jobs = jobs
        self.engine = engine
        self.router = router
        self.timeout = ffmpeg_timeout_s
        self.notify_wanted = notify_wanted

    async def run(self, job: Job) -> Job:
        """Run a job already committed as Snapshoting; return it committed in its final state.

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
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            error = InternalError("An internal error stopped the job; quote the job id when reporting it.")
        if error is not None:
            await asyncio.shield(written.remove_all(job.id))
            job = dataclasses.replace(
                job,
                state=JobState.FAIL,
                code=error.code,
                message=error.message,
                count=0,
                images=(),
                sprites=(),
                tile_count=0,
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
        in_store = self.router.for_location(valid.input.location, "input.location")
        out_store = self.router.for_location(valid.output_file.location, "snapshot_config.output_file.location")
        head = await in_store.head(valid.input.bucket, valid.input_key)
        handle = await in_store.input_handle(valid.input.bucket, valid.input_key)
        info = await self.engine.probe(
            handle, (id(in_store), valid.input.bucket, valid.input_key, head.version), self.timeout
        )
        the_plan = planning.plan(valid.config, info.duration_s)
        job = dataclasses.replace(job, images_planned=len(the_plan.points), images=(), count=0)
        async with self.engine.workdir(job.id) as workdir:
            first_override = await self._skip_black(handle, the_plan, workdir)
            images: list[SnapshotImage] = []
            last_commit = time.monotonic()
            frames = self._frames(handle, info, valid, the_plan, first_override, workdir)
            async with contextlib.aclosing(frames):
                async for point, frame in frames:
                    if frame is None or (
                        images
                        and abs(frame.time_s * 1000 - images[-1].time_ms) < 0.001
                        and valid.frame_type is FrameType.INTRA
                    ):
                        continue  # intra: no keyframe near this point, or the same keyframe again
                    count = len(images) + 1
                    key = valid.output_name.render(
                        input_key=valid.input_key, count=count, snapshot_time_ms=point.time_ms
                    )
                    written.items.append((out_store, valid.output_file.bucket, key))
                    await out_store.put_file(valid.output_file.bucket, key, frame.path, "image/jpeg")
                    frame.path.unlink(missing_ok=True)
                    images.append(
                        SnapshotImage(
                            object=key,
                            time_ms=media_time_ms(frame.time_s),
                            requested_time_ms=point.time_ms,
                            width=frame.width,
                            height=frame.height,
                        )
                    )
                    job = dataclasses.replace(job, images=tuple(images), count=len(images))
                    if time.monotonic() - last_commit >= _COMMIT_EVERY_S:
                        await self.jobs.save(job, "image")
                        last_commit = time.monotonic()
                    else:
                        self.jobs.events.publish("image", job)
        if not images:
            raise ResourceContentBad(
                "No image could be taken: no keyframe lies near any requested time; "
                "use FrameType normal, or a longer Interval."
            )
        return dataclasses.replace(job, state=JobState.SUCCESS)

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

    async def _frames(
        self,
        handle: InputHandle,
        info: MediaInfo,
        valid: validation.ValidRequest,
        the_plan: planning.Plan,
        first_override: float | None,
        workdir: Path,
    ) -> AsyncGenerator[tuple[planning.Point, Frame | None], None]:
        """Yield (point, frame or None) in time order, capturing several points at once.

        A sliding window keeps as many captures in flight as the engine can run, while
        results come back in order so images are numbered and published in time order.
        """
        window = max(1, self.engine.max_processes)
        pending: deque[tuple[planning.Point, asyncio.Task[Frame | None]]] = deque()
        config = valid.config

        async def capture(index: int, point: planning.Point) -> Frame | None:
            folder = workdir / f"p{index:06d}"
            folder.mkdir()
            if index == 0 and first_override is not None:
                return await self.engine.snapshot(
                    handle,
                    info,
                    time_s=first_override,
                    frame_type=FrameType.NORMAL,
                    width=config.width,
                    height=config.height,
                    workdir=folder,
                    wall_seconds=self.timeout,
                )
            frame = await self.engine.snapshot(
                handle,
                info,
                time_s=point.time_ms / 1000,
                frame_type=valid.frame_type,
                width=config.width,
                height=config.height,
                workdir=folder,
                wall_seconds=self.timeout,
            )
            if (
                valid.frame_type is FrameType.INTRA
                and point.tolerance_ms is not None
                and abs(frame.time_s * 1000 - point.time_ms) > point.tolerance_ms + 0.001
            ):
                return None
            return frame

        try:
            for index, point in enumerate(the_plan.points):
                pending.append((point, asyncio.create_task(capture(index, point))))
                if len(pending) >= window:
                    head_point, task = pending.popleft()
                    yield head_point, await task
            while pending:
                head_point, task = pending.popleft()
                yield head_point, await task
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
