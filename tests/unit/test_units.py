"""Unit tests of pure logic: keys, placeholders, colours, MPS JSON, the store codec,
the ffmpeg argv builders and the error table."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from mps_snapshot_client import mps_json
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.domain import keys
from mps_snapshot_server.domain.errors import InvalidParameter
from mps_snapshot_server.domain.models import (
    Job,
    JobState,
    ObjectRef,
    SnapshotConfig,
    SnapshotImage,
    SnapshotRequest,
    TileOut,
)
from mps_snapshot_server.domain.placeholders import OUTPUT_FILE_PLACEHOLDERS, parse_output_name
from mps_snapshot_server.domain.validation import parse_color
from mps_snapshot_server.media.argv import Encoding, ExactPoint, Source, capture_argv
from mps_snapshot_server.media.hardening import FORMAT_WHITELIST
from mps_snapshot_server.media.probe import parse_probe
from mps_snapshot_server.rpc.errors import ERROR_TABLE, status_for
from mps_snapshot_server.store import codec
from tests.helpers.media import probe_limits

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", ["a.mp4", "a/b/c.flv", "中文/视频.mp4", "x" * 1024, "a b/c+d.mp4"])
def test_good_keys(key: str) -> None:
    assert keys.key_problem(key) is None


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "../x", "a/../b", "a/./b", "a//b", "a/", "a\x00b", "a\nb", "-x", "http://h/x", "x" * 1025, "é" * 513],
)
def test_bad_keys(key: str) -> None:
    assert keys.key_problem(key)


def test_key_is_decoded_once() -> None:
    assert keys.decode_key("example%2Ftest.flv", "f") == "example/test.flv"
    assert keys.decode_key("a%252F.mp4", "f") == "a%2F.mp4"  # not twice
    with pytest.raises(InvalidParameter):
        keys.decode_key("%2E%2E%2Fx", "f")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{ObjectPrefix}{FileName}{Count}.jpg", "a/b/c00007.jpg"),
        ("{FileName}.{ExtName}/{SnapshotTime}.jpg", "c.flv/1500.jpg"),
        ("fixed.jpg", "fixed.jpg"),
    ],
)
def test_placeholders(template: str, expected: str) -> None:
    name = parse_output_name(template, "f", OUTPUT_FILE_PLACEHOLDERS)
    assert name.render(input_key="a/b/c.flv", count=7, snapshot_time_ms=1500.7) == expected


def test_placeholders_without_folder_or_extension() -> None:
    name = parse_output_name("{ObjectPrefix}{FileName}-{ExtName}.jpg", "f", OUTPUT_FILE_PLACEHOLDERS)
    assert name.render(input_key="video") == "video-.jpg"


@pytest.mark.parametrize(
    ("text", "rgb"),
    [
        ("black", (0, 0, 0)),
        ("Black", (0, 0, 0)),
        ("WHITE", (255, 255, 255)),
        ("#1a2B3c", (26, 43, 60)),
        ("0xFF0000", (255, 0, 0)),
        ("", (0, 0, 0)),
        ("navy", (0, 0, 128)),
    ],
)
def test_colours(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["random", "rgb(1,2,3)", "notacolour", "#12"])
def test_bad_colours(text: str) -> None:
    with pytest.raises(ValueError):
        parse_color(text)


def test_mps_json_strings_flags_and_lists() -> None:
    req = mps_json.submit_request(
        {
            "Action": "SubmitSnapshotJob",
            "Input": '{"Bucket":"b-1","Location":"l","Object":"x%2Fy.mp4"}',
            "SnapshotConfig": '{"OutputFile":{"Bucket":"b-1","Location":"l","Object":"{Count}.jpg"},'
            '"Time":"5","Num":"10","Interval":"20","FrameType":"intra",'
            '"TileOut":{"IsKeepCellPic":"false","Lines":"3","Color":"Black"},'
            '"TimeArray":{"TimePointList":["10050","1.25"]},"SubOut":{"IsSptFrag":"true"}}',
            "UserData": "testid-001",
        }
    )
    cfg = req.snapshot_config
    assert (cfg.time, cfg.num, cfg.interval, cfg.frame_type) == (5, 10, 20, "intra")
    assert cfg.tile_out.HasField("is_keep_cell_pic") and cfg.tile_out.is_keep_cell_pic is False
    assert cfg.tile_out.lines == 3 and not cfg.tile_out.HasField("columns")
    assert list(cfg.time_array.time_point_list) == [10050, 1.25]
    assert cfg.sub_out.is_spt_frag is True
    assert not cfg.HasField("width")
    query = mps_json.parse({"SnapshotJobIds": "a,b , c", "MaximumPageSize": "10"}, sps.QuerySnapshotJobListRequest())
    assert list(query.snapshot_job_ids) == ["a", "b", "c"] and query.maximum_page_size == 10


def test_mps_json_rejects_typos() -> None:
    from google.protobuf.json_format import ParseError

    with pytest.raises(ParseError):
        mps_json.submit_request({"Input": {"Bucket": "b"}, "SnapshotConfg": {}})


def test_codec_round_trip() -> None:
    job = Job(
        id="a" * 32,
        request=SnapshotRequest(
            input=ObjectRef("b", "l", "o"),
            config=SnapshotConfig(
                output_file=ObjectRef("b", "", "x"), time=5, time_points=(1.5, 2.0), tile_out=TileOut(lines=3)
            ),
        ),
        state=JobState.SUCCESS,
        creation_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        request_id="r",
        pipeline_id="p",
        is_async=True,
        images=(SnapshotImage("x", 1.0, 1.0, 8, 8),),
    )
    assert codec.loads(Job, codec.dumps(job)) == job


def test_exact_argv_is_hardened_and_holds_no_user_strings() -> None:
    src = Source("file:/data/b/k.mp4", ("file",))
    argv = capture_argv("ffmpeg", src, [ExactPoint(1.5, (1.46, 1.5))], Encoding(320, None), Path("/tmp/w"))
    assert argv[:3] == ["ffmpeg", "-hide_banner", "-nostdin"]
    joined = " ".join(argv)
    assert "-protocol_whitelist file " in joined
    assert "-format_whitelist " + ",".join(FORMAT_WHITELIST) in joined
    assert "hls" not in FORMAT_WHITELIST and "concat" not in FORMAT_WHITELIST and "image2" not in FORMAT_WHITELIST
    assert "-codec_whitelist" in argv and "-max_pixels" in argv
    assert argv[argv.index("-i") + 1] == "file:/data/b/k.mp4"
    assert argv.index("-ss") < argv.index("-i")
    assert "scale=w=320:h=320/dar+0.5:flags=lanczos" in joined


def test_probe_parsing() -> None:
    info = parse_probe(
        b'{"streams":[{"codec_type":"audio"},{"codec_type":"video","width":1920,"height":1080,'
        b'"avg_frame_rate":"30000/1001","duration":"12.5","side_data_list":[{"rotation":-90}],'
        b'"codec_name":"h264"}],"format":{"format_name":"mov","start_time":"0.5"}}',
        probe_limits(),
    )
    assert info.display_size == (1080, 1920) and info.duration_s == 12.5 and info.start_time_s == 0.5
    assert round(info.frame_duration_s, 6) == 0.033367
    # The video's end counts from the presentation start: a stream starting 0.5 s after it
    # ends 0.5 s after its own duration; no duration at all is 0 (read from the packets later).
    late = parse_probe(
        b'{"streams":[{"codec_type":"video","width":8,"height":8,"start_time":"1.0","duration":"2.0"}],'
        b'"format":{"start_time":"0.5","duration":"2.5"}}',
        probe_limits(),
    )
    assert late.duration_s == 2.5 and late.start_time_s == 0.5
    unknown = parse_probe(b'{"streams":[{"codec_type":"video","width":8,"height":8}],"format":{}}', probe_limits())
    assert unknown.duration_s == 0.0
    for bad, why in [
        (b'{"streams":[{"codec_type":"audio"}]}', "no video stream"),
        (b"not json", "could not be probed"),
    ]:
        with pytest.raises(Exception, match=why):
            parse_probe(bad, probe_limits())


def test_error_table() -> None:
    assert status_for("InvalidParameter.ResourceNotFound") == grpc.StatusCode.NOT_FOUND
    assert status_for("InvalidParameter.Anything") == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for("InvalidParameter") == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for("SnapshotTimeOut") == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_for("Throttling.User") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for("Forbidden.RAM") == grpc.StatusCode.PERMISSION_DENIED
    assert status_for("SomethingNew") == grpc.StatusCode.INTERNAL


def test_every_error_code_has_its_status_in_the_table() -> None:
    """No fixed code falls through to the INTERNAL default by accident."""
    from mps_snapshot_server.domain.errors import ErrorCode
    from mps_snapshot_server.rpc.errors import _entry

    unmapped = [code.value for code in ErrorCode if _entry(code) is None]
    assert unmapped == []


def test_docs_list_every_setting() -> None:
    """docs/configuration.md names every setting (a group such as `tls_*` counts)."""
    import dataclasses

    from mps_snapshot_server.config import Settings

    named = set(re.findall(r"`([a-z_0-9*]+)`", (ROOT / "docs" / "configuration.md").read_text()))
    groups = [n[:-1] for n in named if n.endswith("*")]
    missing = [
        f.name for f in dataclasses.fields(Settings) if f.name not in named and not f.name.startswith(tuple(groups))
    ]
    assert missing == []


def test_docs_list_every_error_in_the_table() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([A-Z_]+)` \|", doc, re.MULTILINE))
    table = {pattern: status.name for pattern, status, _ in ERROR_TABLE}
    assert rows == table
