"""The frame rules of domain/frames (pure) and the ffmpeg slot queue of the media engine."""

from __future__ import annotations

import asyncio

import pytest

from mps_snapshot_server.domain import frames
from mps_snapshot_server.domain.frames import PastEnd, SeekEarlier, Shown, Undecodable
from mps_snapshot_server.media.engine import Priority, Slots

FD = 0.04


def test_exact_window_holds_exactly_the_shown_frame_at_a_constant_rate() -> None:
    times = [i * FD for i in range(100)]
    for t in (0.0, 0.04, 0.0399, 1.0, 1.02, 3.96):
        window = frames.exact_window(t, FD, variable_rate=False)
        assert frames.in_window(times, window) == frames.shown(times, t)


def test_a_frame_half_a_millisecond_after_t_is_not_shown_at_t() -> None:
    times = [0.959292, 1.001]
    assert frames.shown(times, 1.0005) == 0.959292
    assert frames.shown(times, 1.001) == 1.001


def test_decide_exact() -> None:
    decoded = [1.0, 1.04, 1.08, 1.12]
    assert frames.decide_exact(decoded, 1.1, seek_s=1.0, reached_eof=False, frame_duration_s=FD) == Shown(1.08)
    # The seek landed after T: seek earlier, then from the start.
    assert frames.decide_exact(decoded, 0.9, seek_s=0.9, reached_eof=False, frame_duration_s=FD) == SeekEarlier(0.0)
    later = [5.0, 5.04]
    assert frames.decide_exact(later, 4.5, seek_s=4.5, reached_eof=False, frame_duration_s=FD) == SeekEarlier(3.5)
    assert frames.decide_exact(later, 4.5, seek_s=3.5, reached_eof=False, frame_duration_s=FD) == SeekEarlier(0.0)
    # T before the first frame of the file: the first frame.
    assert frames.decide_exact(decoded, 0.5, seek_s=0.0, reached_eof=False, frame_duration_s=FD) == Shown(1.0)
    # At or past the display end of the last frame.
    assert frames.decide_exact(decoded, 1.159, seek_s=1.0, reached_eof=True, frame_duration_s=FD) == Shown(1.12)
    assert frames.decide_exact(decoded, 1.16, seek_s=1.0, reached_eof=True, frame_duration_s=FD) == PastEnd(
        pytest.approx(1.16)
    )
    assert frames.decide_exact([], 1.0, seek_s=0.0, reached_eof=True, frame_duration_s=FD) == Undecodable()


def test_nearest_keyframe_and_decide_keyframe() -> None:
    keys = [0.0, 2.0, 4.0]
    assert frames.nearest_keyframe(keys, 1.0) == 0.0  # a tie goes to the earlier
    assert frames.nearest_keyframe(keys, 1.01) == 2.0
    assert frames.nearest_keyframe(keys, 9.0) == 4.0
    assert frames.decide_keyframe([2.0, 4.0], 2.9, seek_s=2.9, complete=True) == Shown(2.0)
    assert frames.decide_keyframe([0.0, 2.0], 2.9, seek_s=2.9, complete=False) is None
    assert frames.decide_keyframe([4.0], 2.9, seek_s=2.9, complete=True) == SeekEarlier(1.9)


async def test_sync_callers_go_before_async_waiters_and_may_use_the_reserve() -> None:
    slots = Slots(2, 1)
    await slots.acquire(Priority.ASYNC)
    await slots.acquire(Priority.ASYNC)
    order: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        await slots.acquire(priority)
        order.append(name)

    waiting_async = asyncio.create_task(take("async", Priority.ASYNC))
    await asyncio.sleep(0)
    # Both shared slots are busy: the sync caller takes the reserved one at once.
    await asyncio.wait_for(take("sync-1", Priority.SYNC), 1)
    second_sync = asyncio.create_task(take("sync-2", Priority.SYNC))
    await asyncio.sleep(0)
    assert order == ["sync-1"] and slots.busy == 3
    slots.release()  # a slot frees: the waiting sync caller goes before the async one
    await asyncio.sleep(0)
    await asyncio.wait_for(second_sync, 1)
    assert order == ["sync-1", "sync-2"]
    slots.release()
    slots.release()
    await asyncio.wait_for(waiting_async, 1)
    assert order == ["sync-1", "sync-2", "async"] and slots.busy == 2


async def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    slots = Slots(1, 0)
    await slots.acquire(Priority.ASYNC)
    waiter = asyncio.create_task(slots.acquire(Priority.ASYNC))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release()
    assert slots.busy == 0
    await asyncio.wait_for(slots.acquire(Priority.SYNC), 1)
