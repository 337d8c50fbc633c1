"""The client CLI's error lines: a field violation printed once; a local path as input
caught before anything is sent."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from mps_snapshot_client import cli
from mps_snapshot_client.errors import FieldViolation, MpsApiError


def test_a_violation_already_in_the_message_is_printed_once() -> None:
    err = MpsApiError(
        "InvalidParameter",
        "The parameter SnapshotConfig.Time is invalid: must be a number",
        grpc.StatusCode.INVALID_ARGUMENT,
        violations=(FieldViolation("SnapshotConfig.Time", "must be a number"),),
    )
    text = cli.format_error(err)
    assert text.count("must be a number") == 1, text


def test_a_violation_not_in_the_message_is_printed() -> None:
    err = MpsApiError(
        "InvalidParameter",
        "The request is invalid",
        grpc.StatusCode.INVALID_ARGUMENT,
        violations=(FieldViolation("SnapshotConfig.Time", "must be a number"),),
    )
    text = cli.format_error(err)
    assert "SnapshotConfig.Time: must be a number" in text and text.count("must be a number") == 1


@pytest.mark.parametrize("path", ["/home/me/clip.mp4"])
def test_an_absolute_path_is_refused_with_a_hint(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["snapshot", path, "--out", "my-shots/x.jpg", "--target", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "BUCKET/KEY" in err and "mps-snapshot put" in err


def test_a_path_under_data_names_the_store(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["snapshot", "data/my-videos/x.mp4", "--out", "my-shots/x.jpg", "--target", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "my-videos/x.mp4" in err and "data/" in err and "root" in err


def test_an_existing_local_file_is_refused_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    code = cli.main(["snapshot", "clips/a.mp4", "--out", "my-shots/x.jpg", "--target", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code != 0 and "mps-snapshot put" in err, err


def test_a_bad_boolean_says_what_is_accepted() -> None:
    from google.protobuf import json_format

    from mps_snapshot_client import mps_json

    doc = {"Input": {"Bucket": "b", "Object": "k"}, "SnapshotConfig": {"Lossless": "yes"}}
    with pytest.raises(json_format.ParseError) as info:
        mps_json.submit_request(doc)
    assert "with or without quotes" in str(info.value) and "Lossless" in str(info.value)
    assert "without quotes" not in str(info.value).replace("with or without quotes", "")
    assert mps_json.submit_request({**doc, "SnapshotConfig": {"Lossless": "true"}}).snapshot_config.lossless


def test_cli_json_carries_zero_fields_and_numbers_for_sizes() -> None:
    import json

    from mps_snapshot_client import mps_json
    from mps_snapshot_client.api import resources_pb2 as res

    image = res.SnapshotImage(object="a/0.jpg", time=0, requested_time=0, width=64, height=36)
    doc = json.loads(mps_json.to_json(image))
    assert doc["Time"] == 0 and doc["RequestedTime"] == 0 and doc["Replaced"] == ""
    animated = json.loads(mps_json.to_json(res.AnimatedImage(bytes=1234)))
    assert animated["Bytes"] == 1234  # a number, as int32 sizes are
