"""Pure logic of the HTTP RPC endpoint: signatures checked against the official SDK's own
signing code and published vectors, the MPS wire encoder read back by the SDK's models, and
the HTTP column of the error table."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from alibabacloud_mts20140618 import models as mts
from alibabacloud_tea_openapi.utils import Utils as OpenApiUtils
from google.protobuf import timestamp_pb2

from mps_snapshot_client import mps_json
from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.domain.errors import FieldViolation, InvalidParameter
from mps_snapshot_server.http import signing, wire
from mps_snapshot_server.http.listener import split_address
from mps_snapshot_server.rpc.errors import ERROR_TABLE, http_status_for

ROOT = Path(__file__).resolve().parents[2]

PARAMS = [
    ("Action", "SubmitSnapshotJob"),
    ("Input", '{"Bucket":"b","Object":"a b/c*d~e+f%.mp4"}'),
    ("UserData", "日本 ünïcode & = ?"),
    ("Timestamp", "2026-11-29T12:00:00Z"),
    ("SignatureNonce", "n-1"),
    ("AccessKeyId", "AK"),
    ("SignatureMethod", "HMAC-SHA1"),
    ("SignatureVersion", "1.0"),
]


def test_v1_matches_the_sdk_signer() -> None:
    for method in ("GET", "POST"):
        expected = OpenApiUtils.get_rpcsignature(dict(PARAMS), method, "secret")
        assert signing.v1_sign("secret", method, PARAMS) == expected
        assert signing.v1_matches("secret", method, [*PARAMS, ("Signature", expected)], expected)
        assert not signing.v1_matches("other", method, PARAMS, expected)
        assert not signing.v1_matches("secret", method, [*PARAMS[:-1], ("SignatureVersion", "2.0")], expected)


def test_v1_published_example() -> None:
    """Alibaba Cloud's documented V1 example (ECS DescribeRegions, secret 'testsecret')."""
    params = [
        ("AccessKeyId", "testid"),
        ("Action", "DescribeRegions"),
        ("Format", "XML"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("SignatureVersion", "1.0"),
        ("Timestamp", "2016-02-23T12:46:24Z"),
        ("Version", "2014-05-26"),
    ]
    assert signing.v1_string_to_sign("GET", params) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1"
        "%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0"
        "%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
    )
    assert signing.v1_sign("testsecret", "GET", params) == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_pct_is_rfc3986() -> None:
    assert signing.pct("a b*c~d/e+f") == "a%20b%2Ac~d%2Fe%2Bf"
    assert signing.pct("é") == "%C3%A9"


def test_v3_matches_the_sdk_signer() -> None:
    body = b"Name=x&Speed=Standard"
    payload = hashlib.sha256(body).hexdigest()
    headers = {
        "host": "127.0.0.1:8080",
        "x-acs-action": "AddPipeline",
        "x-acs-version": "2014-06-18",
        "x-acs-date": "2026-11-29T12:00:00Z",
        "x-acs-signature-nonce": "abc",
        "x-acs-content-sha256": payload,
        "user-agent": "AlibabaCloud (Linux) Python/3.11",
        "accept": "application/json",
    }
    query = {"UserData": "日本 a*b", "PipelineId": "p1"}
    request = SimpleNamespace(method="POST", pathname="/", query=query, headers=headers)
    authorization = OpenApiUtils.get_authorization(request, "ACS3-HMAC-SHA256", payload, "AK", "secret")
    auth = signing.parse_v3_authorization(authorization)
    assert auth is not None and auth.access_key_id == "AK"
    assert set(auth.signed_headers) == set(headers)
    canonical = signing.v3_canonical_request("POST", "/", list(query.items()), headers, auth.signed_headers, payload)
    assert signing.v3_matches("secret", canonical, auth.signature)
    assert not signing.v3_matches("wrong", canonical, auth.signature)
    tampered = signing.v3_canonical_request(
        "POST", "/", [("UserData", "other"), ("PipelineId", "p1")], headers, auth.signed_headers, payload
    )
    assert not signing.v3_matches("secret", tampered, auth.signature)


@pytest.mark.parametrize(
    "header",
    [
        "ACS3-HMAC-SHA256",
        "ACS3-HMAC-SHA256 Credential=AK",
        "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host",
        "ACS3-HMAC-SM3 Credential=AK,SignedHeaders=host,Signature=00",
        "Bearer AK:secret",
    ],
)
def test_v3_authorization_must_be_complete(header: str) -> None:
    assert signing.parse_v3_authorization(header) is None


def job() -> res.SnapshotJob:
    msg = res.SnapshotJob(id="j" * 32, state="Success", count=2, user_data="u", pipeline_id="p" * 32)
    msg.input.CopyFrom(res.OSSFile(bucket="b", location="oss-cn-hangzhou", object="a.mp4"))
    cfg = msg.snapshot_config
    cfg.output_file.CopyFrom(res.OSSFile(bucket="b", location="oss-cn-hangzhou", object="{Count}.jpg"))
    cfg.time = 5000
    cfg.width = 8
    cfg.frame_type = "intra"
    cfg.time_array.time_point_list.extend([1000.0, 2500.5])
    cfg.tile_out.is_keep_cell_pic = False
    cfg.tile_out.lines = 2
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString("2026-11-29T12:00:00Z")
    msg.creation_time.CopyFrom(ts)
    msg.images.add(object="1.jpg", time=1000.0, requested_time=1000.0, width=8, height=6)
    return msg


def test_wire_scalars_are_strings_and_extensions_numbers() -> None:
    body = wire.encode(job())
    assert body["Count"] == "2" and body["TileCount"] == "0" and body["Code"] == "" and body["Message"] == ""
    cfg = body["SnapshotConfig"]
    assert (cfg["Time"], cfg["Width"], cfg["FrameType"]) == ("5000", "8", "intra")
    assert cfg["TileOut"] == {"Lines": "2", "IsKeepCellPic": "false"}
    assert cfg["TimeArray"] == {"TimePointList": [1000, 2500.5]}
    assert "Height" not in cfg and "Interval" not in cfg  # unset optional elements are left out
    assert body["CreationTime"] == "2026-11-29T12:00:00Z"
    assert body["Images"] == [{"Object": "1.jpg", "Time": 1000, "RequestedTime": 1000, "Width": 8, "Height": 6}]
    assert "WebVttObject" not in body and "Attempts" not in body and "FinishTime" not in body


def test_wire_lists_are_wrapped_and_read_by_the_sdk_models() -> None:
    response = sps.QuerySnapshotJobListResponse(
        request_id="R", snapshot_job_list=[job()], non_exist_snapshot_job_ids=["x"], next_page_token="t"
    )
    body = wire.encode(response)
    assert list(body["SnapshotJobList"]) == ["SnapshotJob"] and body["NonExistSnapshotJobIds"] == {"String": ["x"]}
    model = mts.QuerySnapshotJobListResponseBody().from_map(body)
    parsed = model.snapshot_job_list.snapshot_job[0]
    assert (parsed.count, parsed.snapshot_config.time, parsed.snapshot_config.tile_out.is_keep_cell_pic) == (
        "2",
        "5000",
        "false",
    )
    assert parsed.snapshot_config.time_array.time_point_list == [1000, 2500.5]
    assert model.non_exist_snapshot_job_ids.string == ["x"] and model.next_page_token == "t"
    empty = wire.encode(sps.QuerySnapshotJobListResponse(request_id="R"))
    assert empty == {
        "RequestId": "R",
        "SnapshotJobList": {"SnapshotJob": []},
        "NonExistSnapshotJobIds": {"String": []},
        "NextPageToken": "",
    }


def test_wire_pipelines() -> None:
    pipeline = res.Pipeline(id="p", name="n", state="Active", speed="Standard", speed_level=2, max_concurrent_jobs=3)
    body = wire.encode(
        pps.SearchPipelineResponse(request_id="R", total_count=1, page_number=1, page_size=10, pipeline_list=[pipeline])
    )
    assert (body["TotalCount"], body["PageNumber"], body["PageSize"]) == (1, 1, 10)
    item = body["PipelineList"]["Pipeline"][0]
    assert (item["SpeedLevel"], item["QuotaAllocate"], item["MaxConcurrentJobs"], item["Role"]) == (2, 0, 3, "")
    assert item["NotifyConfig"] == {"Topic": "", "QueueName": "", "MqTopic": "", "MqTag": "", "HttpUrl": ""}
    model = mts.SearchPipelineResponseBody().from_map(body)
    assert model.pipeline_list.pipeline[0].speed_level == 2 and model.total_count == 1


def test_error_envelope() -> None:
    error = InvalidParameter("bad", code="InvalidParameter.Value", violations=(FieldViolation("input", "fix it"),))
    assert wire.error_body(error, "R", "h") == {
        "RequestId": "R",
        "HostId": "h",
        "Code": "InvalidParameter.Value",
        "Message": "bad",
        "Recommend": "input: fix it",
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("InvalidParameter.JsonFormatInvalid", 400),
        ("InvalidParameter.ResourceNotFound", 404),
        ("MissingParameter.Input", 400),
        ("SignatureDoesNotMatch", 400),
        ("InvalidTimeStamp.Expired", 400),
        ("SignatureNonceUsed", 400),
        ("InvalidAccessKeyId.NotFound", 404),
        ("InvalidAccessKeyId.Inactive", 400),
        ("Forbidden.RAM", 403),
        ("Throttling.User", 400),
        ("SnapshotTimeOut", 400),
        ("IncorrectPipelineState", 400),
        ("InvalidAction.NotFound", 404),
        ("UnsupportedHTTPMethod", 405),
        ("ServiceUnavailable", 503),
        ("InternalError", 500),
        ("SomethingNew", 500),
    ],
)
def test_http_status_column(code: str, status: int) -> None:
    assert http_status_for(code) == status


def test_docs_show_the_http_column() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `[A-Z_]+` \| (\d{3}) \|", doc, re.MULTILINE))
    assert rows == {pattern: str(http_status_for(pattern.removesuffix(".*"))) for pattern, _, _ in ERROR_TABLE}


def test_mps_json_takes_timestamps_as_text() -> None:
    request = mps_json.parse(
        {"StartOfJobCreatedTimeRange": "2026-11-29T12:00:00Z", "SnapshotJobIds": "a, b", "MaximumPageSize": "5"},
        sps.QuerySnapshotJobListRequest(),
    )
    assert request.start_of_job_created_time_range.seconds == 1795953600
    assert list(request.snapshot_job_ids) == ["a", "b"] and request.maximum_page_size == 5


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), (":9000", ("0.0.0.0", 9000))],
)
def test_split_address(address: str, expected: Any) -> None:
    assert split_address(address) == expected


def test_split_address_needs_a_port() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_address("localhost")
