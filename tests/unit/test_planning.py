"""Unit tests of the planner: which media times an async job captures."""

from __future__ import annotations

import pytest

from mps_snapshot_server.domain.errors import InvalidParameter, ResourceContentBad
from mps_snapshot_server.domain.models import ObjectRef, SnapshotConfig
from mps_snapshot_server.domain.planning import check_async_config, plan

OUT = ObjectRef("b-1", "", "{Count}.jpg")


def times(**config: object) -> list[float]:
    return [p.time_ms for p in plan(SnapshotConfig(output_file=OUT, **config), 10.0).points]  # type: ignore[arg-type]


def test_interval_and_num() -> None:
    assert times(time=1000, interval=2, num=3) == [1000, 3000, 5000]


def test_points_past_the_end_are_dropped_and_counted() -> None:
    result = plan(SnapshotConfig(output_file=OUT, time=1000, interval=2, num=10), 10.0)
    assert [p.time_ms for p in result.points] == [1000, 3000, 5000, 7000, 9000]
    assert result.dropped == 5


def test_interval_without_num_runs_to_the_end_and_defaults_to_10s() -> None:
    assert times(interval=3) == [0, 3000, 6000, 9000]
    assert times(num=5) == [0]  # 10 s default interval on a 10 s video


def test_interval_zero_spreads_num_evenly() -> None:
    assert times(interval=0, num=4) == [0, 2500, 5000, 7500]
    assert times(time=2000, interval=0, num=4) == [2000, 4000, 6000, 8000]


def test_num_one_is_a_single_snapshot() -> None:
    assert times(time=4000, num=1, interval=2) == [4000]


def test_time_array_sorted_duplicates_kept() -> None:
    result = plan(SnapshotConfig(output_file=OUT, time_points=(5000, 1000.5, 1000.5, 3000), time=9, num=1), 10.0)
    assert [p.time_ms for p in result.points] == [1000.5, 1000.5, 3000, 5000]
    assert all(p.tolerance_ms is None for p in result.points)


def test_time_array_past_the_end_fails() -> None:
    with pytest.raises(InvalidParameter) as caught:
        plan(SnapshotConfig(output_file=OUT, time_points=(1000, 10000)), 10.0)
    assert caught.value.code == "InvalidParameter.TimeArray"
    assert "10000 ms long" in caught.value.message


def test_start_past_the_end_fails() -> None:
    with pytest.raises(ResourceContentBad):
        plan(SnapshotConfig(output_file=OUT, time=10000, interval=1), 10.0)


def test_intra_tolerance_is_half_a_step() -> None:
    result = plan(SnapshotConfig(output_file=OUT, interval=2, num=3, frame_type="intra"), 10.0)
    assert {p.tolerance_ms for p in result.points} == {1000}


def test_black_filter_rules() -> None:
    def black(**config: object) -> object:
        return plan(SnapshotConfig(output_file=OUT, **config), 10.0).black  # type: ignore[arg-type]

    assert black(interval=1, num=3) is None
    assert black(interval=1, num=3, black_level=80).level == 80  # type: ignore[attr-defined]
    assert black(time=1, interval=1, num=3, black_level=80) is None  # only when starting at 0
    assert black(num=1).level == 100  # type: ignore[attr-defined]  # forced for Num 1 at 0


def test_interval_zero_needs_num() -> None:
    with pytest.raises(InvalidParameter):
        check_async_config(SnapshotConfig(output_file=OUT, interval=0))


def test_an_interval_percent_step_shorter_than_a_frame_is_refused() -> None:
    config = SnapshotConfig(output_file=ObjectRef("b", "", "a-{Count}.jpg"), interval_percent=0.1)
    with pytest.raises(InvalidParameter) as info:
        plan(config, 10.0, 1 / 25)  # 10 ms steps on a 25 fps clip: 1,000 images, 250 frames
    assert info.value.code == "InvalidParameter.OutOfRange"
    assert info.value.violations[0].field == "snapshot_config.interval_percent"
    assert len(plan(config, 100.0, 1 / 25).points) == 1000  # 100 ms steps: fine
