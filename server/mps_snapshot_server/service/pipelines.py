"""Pipelines: named queues with a state and limits, kept in the store and in memory."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from mps_snapshot_server.domain.errors import ErrorCode, InvalidParameter, InvalidState, ResourceNotFound
from mps_snapshot_server.domain.ids import new_id
from mps_snapshot_server.domain.models import NotifyConfig, Pipeline, PipelineState
from mps_snapshot_server.store.base import Store

MAX_NAME_BYTES = 128
MAX_IDS = 10
SPEEDS = ("Standard", "Boost", "NarrowBandHDV2", "AIVideoCover", "AIVideoTag")
MAX_CONCURRENT_JOBS = 64
MAX_QUEUE_CAPACITY = 100_000

#: Called with the pipeline after each change, so the scheduler can resize or resume it.
Listener = Callable[[Pipeline | None, str], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class PipelineChanges:
    name: str
    state: str
    notify_config: NotifyConfig | None = None
    role: str = ""
    max_concurrent_jobs: int | None = None
    queue_capacity: int | None = None


def _check_name(name: str) -> None:
    if not name or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidParameter.field("name", f"Name must be 1-{MAX_NAME_BYTES} bytes.")
    if not name[0].isalnum():
        raise InvalidParameter.field("name", "Name must start with a letter or digit.")


def _check_notify(cfg: NotifyConfig | None) -> None:
    if cfg is None or not cfg.http_url:
        return
    parts = urlsplit(cfg.http_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter.field("notify_config.http_url", "HttpUrl must be an http:// or https:// URL.")


def _check_limits(max_jobs: int | None, capacity: int | None) -> None:
    if max_jobs is not None and not 1 <= max_jobs <= MAX_CONCURRENT_JOBS:
        raise InvalidParameter.field(
            "max_concurrent_jobs",
            f"MaxConcurrentJobs must be 1-{MAX_CONCURRENT_JOBS}.",
            code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE,
        )
    if capacity is not None and not 1 <= capacity <= MAX_QUEUE_CAPACITY:
        raise InvalidParameter.field(
            "queue_capacity",
            f"QueueCapacity must be 1-{MAX_QUEUE_CAPACITY}.",
            code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE,
        )


class PipelineRegistry:
    def __init__(self, store: Store, *, default_max_jobs: int, default_capacity: int) -> None:
        self._store = store
        self._default_max_jobs = default_max_jobs
        self._default_capacity = default_capacity
        self._pipelines: dict[str, Pipeline] = {}
        self._lock = asyncio.Lock()
        self.listeners: list[Listener] = []
        #: Other processes (replicas) change pipelines too: an unknown id is looked up in the
        #: store before it is refused (their NOTIFY may not have arrived yet).
        self.shared = False

    async def load(self) -> None:
        """Read pipelines from the store; create the default pipeline on first start."""
        self._pipelines = {p.id: p for p in await self._store.list_pipelines()}
        if not any(p.is_default for p in self._pipelines.values()):
            default = self._new("Default", is_default=True)
            await self._store.put_pipeline(default)
            self._pipelines[default.id] = default

    async def ensure(self, pipeline_id: str) -> None:
        """Make sure a pipeline another replica has just created is known here."""
        if self.shared and pipeline_id and pipeline_id not in self._pipelines:
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read pipelines changed elsewhere (another replica) and tell the listeners of
        each one added, changed or removed."""
        async with self._lock:
            fresh = {p.id: p for p in await self._store.list_pipelines()}
            old, self._pipelines = self._pipelines, fresh
        for pipeline_id in old.keys() | fresh.keys():
            if old.get(pipeline_id) != fresh.get(pipeline_id):
                await self._notify(fresh.get(pipeline_id), pipeline_id)

    def _new(
        self,
        name: str,
        *,
        is_default: bool = False,
        speed: str = "Standard",
        speed_level: int = 0,
        role: str = "",
        notify: NotifyConfig | None = None,
        max_jobs: int | None = None,
        capacity: int | None = None,
    ) -> Pipeline:
        return Pipeline(
            id=new_id(),
            name=name,
            state=PipelineState.ACTIVE,
            speed=speed,
            speed_level=speed_level,
            role=role,
            notify_config=notify or NotifyConfig(),
            max_concurrent_jobs=max_jobs or self._default_max_jobs,
            queue_capacity=capacity or self._default_capacity,
            creation_time=datetime.now(UTC),
            is_default=is_default,
        )

    @property
    def default(self) -> Pipeline:
        return next(p for p in self._pipelines.values() if p.is_default)

    def all(self) -> list[Pipeline]:
        return sorted(self._pipelines.values(), key=lambda p: (p.creation_time, p.id))

    def resolve(self, pipeline_id: str) -> Pipeline:
        """The pipeline a job goes to: the default one for an empty id."""
        if not pipeline_id:
            return self.default
        pipeline = self._pipelines.get(pipeline_id)
        if pipeline is None:
            raise ResourceNotFound(
                f"Pipeline {pipeline_id!r} does not exist; use an id from SearchPipeline, or leave "
                "PipelineId empty for the default pipeline."
            )
        return pipeline

    async def _notify(self, pipeline: Pipeline | None, pipeline_id: str) -> None:
        for listener in self.listeners:
            await listener(pipeline, pipeline_id)

    async def add(
        self,
        *,
        name: str,
        speed: str,
        speed_level: int,
        notify: NotifyConfig | None,
        role: str,
        max_jobs: int | None,
        capacity: int | None,
    ) -> Pipeline:
        _check_name(name)
        if speed and speed not in SPEEDS:
            raise InvalidParameter.field("speed", f"Speed {speed!r} is unknown; use one of {', '.join(SPEEDS)}.")
        if speed_level and not 1 <= speed_level <= 3:
            raise InvalidParameter.field(
                "speed_level", "SpeedLevel must be 1-3.", code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE
            )
        _check_notify(notify)
        _check_limits(max_jobs, capacity)
        pipeline = self._new(
            name,
            speed=speed or "Standard",
            speed_level=speed_level,
            role=role,
            notify=notify,
            max_jobs=max_jobs,
            capacity=capacity,
        )
        async with self._lock:
            await self._store.put_pipeline(pipeline)
            self._pipelines[pipeline.id] = pipeline
        await self._notify(pipeline, pipeline.id)
        return pipeline

    async def update(self, pipeline_id: str, changes: PipelineChanges) -> Pipeline:
        await self.ensure(pipeline_id)
        current = self.resolve_existing(pipeline_id)
        _check_name(changes.name)
        try:
            state = PipelineState(changes.state)
        except ValueError:
            raise InvalidParameter.field(
                "state", f"State {changes.state!r} is unknown; use Active or Paused."
            ) from None
        _check_notify(changes.notify_config)
        _check_limits(changes.max_concurrent_jobs, changes.queue_capacity)
        updated = dataclasses.replace(
            current,
            name=changes.name,
            state=state,
            notify_config=changes.notify_config if changes.notify_config is not None else current.notify_config,
            role=changes.role or current.role,
            max_concurrent_jobs=changes.max_concurrent_jobs or current.max_concurrent_jobs,
            queue_capacity=changes.queue_capacity or current.queue_capacity,
        )
        async with self._lock:
            await self._store.put_pipeline(updated)
            self._pipelines[updated.id] = updated
        await self._notify(updated, updated.id)
        return updated

    def resolve_existing(self, pipeline_id: str) -> Pipeline:
        if not pipeline_id:
            raise InvalidParameter.field(
                "pipeline_id", "PipelineId is required.", code=ErrorCode.INVALID_PARAMETER_NULL_VALUE
            )
        return self.resolve(pipeline_id)

    def query(self, ids: list[str]) -> tuple[list[Pipeline], list[str]]:
        if not ids or len(ids) > MAX_IDS:
            raise InvalidParameter.field("pipeline_ids", f"Give 1-{MAX_IDS} pipeline ids.")
        found = [self._pipelines[i] for i in ids if i in self._pipelines]
        missing = [i for i in ids if i not in self._pipelines]
        return found, missing

    def search(self, state: str, page_number: int, page_size: int) -> tuple[list[Pipeline], int, int, int]:
        state = state or "All"
        if state not in ("All", "Active", "Paused"):
            raise InvalidParameter.field("state", f"State {state!r} is unknown; use All, Active or Paused.")
        page_number = page_number or 1
        page_size = page_size or 10
        if page_number < 1:
            raise InvalidParameter.field(
                "page_number", "PageNumber starts at 1.", code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE
            )
        if not 1 <= page_size <= 100:
            raise InvalidParameter.field(
                "page_size", "PageSize must be 1-100.", code=ErrorCode.INVALID_PARAMETER_OUT_OF_RANGE
            )
        matching = [p for p in self.all() if state == "All" or p.state.value == state]
        start = (page_number - 1) * page_size
        return matching[start : start + page_size], len(matching), page_number, page_size

    async def delete(self, pipeline_id: str) -> None:
        await self.ensure(pipeline_id)
        pipeline = self.resolve_existing(pipeline_id)
        if pipeline.is_default:
            raise InvalidState("The default pipeline cannot be deleted.", code=ErrorCode.INCORRECT_PIPELINE_STATE)
        async with self._lock:
            unfinished = await self._store.count_unfinished(pipeline_id)
            if unfinished:
                raise InvalidState(
                    f"Pipeline {pipeline_id} still has {unfinished} unfinished job(s); cancel them or wait "
                    "for them to end, then delete it.",
                    code=ErrorCode.INCORRECT_PIPELINE_STATE,
                )
            await self._store.delete_pipeline(pipeline_id)
            del self._pipelines[pipeline_id]
        await self._notify(None, pipeline_id)
