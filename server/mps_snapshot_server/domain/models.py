"""The snapshot domain: requests, jobs and pipelines as plain frozen dataclasses.

Nothing here knows about protobuf, gRPC, SQLite or ffmpeg. Optional fields keep the
caller's "not given" (None) apart from a given zero, because MPS defaults differ from
zero (Time, Num, Lines, IsKeepCellPic ...).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime


class JobState(enum.StrEnum):
    """A job's state, spelled as MPS spells it ("Snapshoting" has one t)."""

    SUBMITTED = "Submitted"
    SNAPSHOTING = "Snapshoting"
    SUCCESS = "Success"
    FAIL = "Fail"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCESS, JobState.FAIL, JobState.CANCELLED)


class FrameType(enum.StrEnum):
    """Which frame a snapshot takes: the exact one, or the nearest keyframe."""

    NORMAL = "normal"
    INTRA = "intra"


class JobEventKind(enum.StrEnum):
    """What a change to a job was, as WatchSnapshotJob reports it."""

    #: The job as it stood when the watch began.
    INITIAL = "initial"
    #: Its state (or its code and message) changed.
    STATE = "state"
    #: A snapshot image was published.
    IMAGE = "image"
    #: A sprite was published.
    SPRITE = "sprite"


class PipelineState(enum.StrEnum):
    ACTIVE = "Active"
    PAUSED = "Paused"


@dataclass(frozen=True)
class ObjectRef:
    """An object in a bucket. ``object`` is kept exactly as the caller sent it
    (URL-encoded) so it can be echoed; ``key`` is the decoded key after validation."""

    bucket: str = ""
    location: str = ""
    object: str = ""
    role_arn: str = ""


@dataclass(frozen=True)
class TileOut:
    lines: int | None = None
    columns: int | None = None
    cell_width: int | None = None
    cell_height: int | None = None
    margin: int = 0
    padding: int = 0
    color: str = ""
    is_keep_cell_pic: bool | None = None
    cell_sel_step: int | None = None
    #: Beyond MPS: cover the whole video with this many cells.
    auto_cells: int | None = None


@dataclass(frozen=True)
class AnimatedOut:
    """Beyond MPS: an animated preview of a time range (None: not given)."""

    start: int | None = None
    start_percent: float | None = None
    duration: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    quality: int | None = None
    max_bytes: int | None = None
    loop: int | None = None


@dataclass(frozen=True)
class SmartPick:
    """Beyond MPS: replace black, uniform or blurred frames by the best one nearby."""

    window: int | None = None
    max_blur: float | None = None


@dataclass(frozen=True)
class SnapshotConfig:
    output_file: ObjectRef | None = None
    time: int | None = None
    interval: int | None = None
    num: int | None = None
    frame_type: str = ""
    width: int | None = None
    height: int | None = None
    tile_output_file: ObjectRef | None = None
    tile_out: TileOut | None = None
    # None: no TimeArray element; an empty tuple is a TimeArray with no points.
    time_points: tuple[float, ...] | None = None
    format: str = ""
    sub_out_is_spt_frag: bool | None = None
    has_sub_out: bool = False
    black_level: int | None = None
    pixel_black_threshold: int | None = None
    # Beyond MPS (docs/api.md "Outputs beyond MPS"); None: not given.
    quality: int | None = None
    lossless: bool | None = None
    fit: str | None = None
    pad_color: str | None = None
    no_upscale: bool | None = None
    time_percent: float | None = None
    interval_percent: float | None = None
    #: Empty when TimeArray has no percent points.
    time_percent_points: tuple[float, ...] = ()
    animated_out: AnimatedOut | None = None
    animated_output_file: ObjectRef | None = None
    smart_pick: SmartPick | None = None
    tone_map: bool | None = None

    @property
    def is_async(self) -> bool:
        """MPS's rule, extended to TimeArray and TileOut which only exist async, and to the
        sequence and animation fields beyond MPS."""
        return (
            self.interval is not None
            or self.num is not None
            or bool(self.time_points)
            or self.tile_out is not None
            or self.interval_percent is not None
            or bool(self.time_percent_points)
            or self.animated_out is not None
        )

    @property
    def effective_frame_type(self) -> FrameType:
        # MPS documents both defaults (contradiction C2); users expect the exact frame.
        return FrameType(self.frame_type.lower()) if self.frame_type else FrameType.NORMAL


@dataclass(frozen=True)
class SnapshotRequest:
    input: ObjectRef | None = None
    config: SnapshotConfig | None = None
    user_data: str = ""
    pipeline_id: str = ""


@dataclass(frozen=True)
class SnapshotImage:
    object: str
    time_ms: float
    requested_time_ms: float
    width: int
    height: int
    #: Smart picks: why the frame at the requested time was replaced ("" if it was not).
    replaced: str = ""


@dataclass(frozen=True)
class SpriteImage:
    object: str
    cell_count: int
    width: int
    height: int


@dataclass(frozen=True)
class AnimatedImage:
    object: str
    format: str
    frame_count: int
    duration_ms: float
    width: int
    height: int
    bytes: int


@dataclass(frozen=True)
class NotifyResult:
    message_id: str = ""
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class Job:
    id: str
    request: SnapshotRequest
    state: JobState
    creation_time: datetime
    request_id: str
    pipeline_id: str
    is_async: bool
    code: str = ""
    message: str = ""
    count: int = 0
    tile_count: int = 0
    images: tuple[SnapshotImage, ...] = ()
    sprites: tuple[SpriteImage, ...] = ()
    images_planned: int = 0
    sprites_planned: int = 0
    notify_result: NotifyResult | None = None
    finish_time: datetime | None = None
    attempts: int = 0
    #: The WebVTT thumbnail track and the JSON storyboard written, if any.
    web_vtt_object: str = ""
    storyboard_object: str = ""
    #: The animated preview written, if any (beyond MPS).
    animated: AnimatedImage | None = None
    #: A completion notification is owed (set with the final state, cleared once sent or given up).
    notify_pending: bool = False
    #: The principal that submitted the job (authorization of reads and cancels).
    owner: str = ""

    # State transitions. Every change of state goes through one of these, so each state
    # always resets the same fields (a job given back or failed never keeps the images or
    # sprites of the attempt that did not finish).

    def started(self) -> Job:
        """An attempt begins (Snapshoting): counted, with the last attempt's code cleared."""
        return dataclasses.replace(
            self._without_outputs(), state=JobState.SNAPSHOTING, attempts=self.attempts + 1, code="", message=""
        )

    def succeeded(self, *, at: datetime, notify: bool = False) -> Job:
        """Every output is written (the job already carries them)."""
        return dataclasses.replace(
            self, state=JobState.SUCCESS, code="", message="", finish_time=at, notify_pending=notify
        )

    def failed(self, code: str, message: str, *, at: datetime, notify: bool = False) -> Job:
        """Ended with an error; what the attempt wrote has been removed."""
        return dataclasses.replace(
            self._without_outputs(),
            state=JobState.FAIL,
            code=code,
            message=message,
            finish_time=at,
            notify_pending=notify,
        )

    def requeued(self, *, count_attempt: bool = True, code: str = "", message: str = "") -> Job:
        """Back to Submitted, to run again from the start: after a service fault or a crash
        (the attempt counts), or handed back at shutdown (``count_attempt=False``: as if
        the attempt had not started)."""
        return dataclasses.replace(
            self._without_outputs(),
            state=JobState.SUBMITTED,
            attempts=self.attempts if count_attempt else max(0, self.attempts - 1),
            code=code,
            message=message,
        )

    def cancelled(self, *, at: datetime) -> Job:
        return dataclasses.replace(
            self._without_outputs(),
            state=JobState.CANCELLED,
            code="",
            message="Cancelled by CancelSnapshotJob.",
            finish_time=at,
        )

    def _without_outputs(self) -> Job:
        return dataclasses.replace(
            self,
            count=0,
            tile_count=0,
            images=(),
            sprites=(),
            web_vtt_object="",
            storyboard_object="",
            animated=None,
        )


@dataclass(frozen=True)
class NotifyConfig:
    topic: str = ""
    queue_name: str = ""
    mq_topic: str = ""
    mq_tag: str = ""
    http_url: str = ""


@dataclass(frozen=True)
class Pipeline:
    id: str
    name: str
    state: PipelineState
    speed: str
    speed_level: int
    role: str
    notify_config: NotifyConfig
    max_concurrent_jobs: int
    queue_capacity: int
    creation_time: datetime
    is_default: bool = False
