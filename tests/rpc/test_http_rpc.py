"""The MPS HTTP RPC endpoint through Alibaba Cloud's own Python SDKs, from PyPI and unchanged
but for endpoint, protocol and keys: the new ``alibabacloud-mts20140618`` with V3
(ACS3-HMAC-SHA256, its default) and V1 (``signature_algorithm='v2'``) signatures, and the
legacy ``aliyun-python-sdk-mts`` on ``aliyun-python-sdk-core`` (V1). A real server (real
ffmpeg, local storage, the gRPC listener beside it); the SDKs' synchronous calls run in a
thread so the server keeps answering on the test's event loop. Plus requests no SDK sends
(oversized, duplicated, badly encoded), sent raw."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from alibabacloud_mts20140618 import models as mts
from alibabacloud_mts20140618.client import Client as MtsClient
from alibabacloud_tea_openapi import exceptions as tea_errors
from alibabacloud_tea_openapi import utils_models as openapi_models
from alibabacloud_tea_openapi.utils import Utils as OpenApiUtils
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest
from aliyunsdkmts.request.v20140618 import (
    AddPipelineRequest,
    DeletePipelineRequest,
    QueryPipelineListRequest,
    QuerySnapshotJobListRequest,
    SearchPipelineRequest,
    SubmitSnapshotJobRequest,
    UpdatePipelineRequest,
)
from darabonba.runtime import RuntimeOptions
from PIL import Image

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.auth import signature_metadata
from mps_snapshot_server.app import App, check_exposure
from mps_snapshot_server.config import PrincipalConfig, StatementConfig, load
from mps_snapshot_server.security.authn import derive_key
from tests.conftest import put
from tests.helpers.children import ServerProcess
from tests.helpers.media import Video

SECRETS = {
    "AKHTTPADMIN": "http-admin-secret",
    "AKHTTPREADER": "http-reader-secret",
    "AKHTTPFLOOD": "http-flood-secret",
    "AKHASHONLY": "hash-only-secret",
}
LOCATION = "oss-cn-hangzhou"


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("secrets")
    files = {}
    for key, secret in SECRETS.items():
        path = folder / key
        path.write_text(secret + "\n")
        path.chmod(0o600)
        files[key] = str(path)
    return files


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory, secret_files: dict[str, str]) -> AsyncIterator[App]:
    everything = StatementConfig("Allow", ("mts:*",))
    principals = (
        PrincipalConfig(
            name="admin",
            access_key_id="AKHTTPADMIN",
            access_key_secret_file=secret_files["AKHTTPADMIN"],
            statements=(everything,),
        ),
        PrincipalConfig(
            name="reader",
            access_key_id="AKHTTPREADER",
            access_key_secret_file=secret_files["AKHTTPREADER"],
            statements=(StatementConfig("Allow", ("mts:Query*", "mts:SearchPipeline")),),
        ),
        PrincipalConfig(
            name="flood",
            access_key_id="AKHTTPFLOOD",
            access_key_secret_file=secret_files["AKHTTPFLOOD"],
            # Both given: they must agree (the hash is what gRPC checks).
            access_key_hash=derive_key(SECRETS["AKHTTPFLOOD"]),
            statements=(everything,),
        ),
        PrincipalConfig(
            name="hash-only",
            access_key_id="AKHASHONLY",
            access_key_hash=derive_key(SECRETS["AKHASHONLY"]),
            statements=(everything,),
        ),
    )
    settings = load(
        env={},
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("http-data"),
        principals=principals,
        rate_submit=1000,
        rate_query=1000,
        rate_pipeline=1000,
        shutdown_grace_s=1.0,
    )
    app = App(settings)
    await app.start()
    yield app
    await app.stop(0.5)


@pytest.fixture
def bucket(server: App) -> str:
    name = f"h-{os.urandom(6).hex()}"
    (server.settings.data_dir / name).mkdir()
    return name


# -- SDK helpers ---------------------------------------------------------------------------


def new_sdk(app: App, key: str, *, v1: bool = False, secret: str | None = None) -> MtsClient:
    config = openapi_models.Config(
        access_key_id=key,
        access_key_secret=SECRETS.get(key, "x") if secret is None else secret,
        endpoint=f"127.0.0.1:{app.http_port}",
        protocol="http",
        signature_algorithm="v2" if v1 else None,
    )
    return MtsClient(config)


def legacy_sdk(key: str, secret: str | None = None) -> AcsClient:
    return AcsClient(key, SECRETS[key] if secret is None else secret, "cn-hangzhou", auto_retry=False, timeout=30)


async def legacy_call(app: App, client: AcsClient, request: Any) -> dict[str, Any]:
    request.set_endpoint(f"127.0.0.1:{app.http_port}")
    request.set_protocol_type("http")
    raw = await asyncio.to_thread(client.do_action_with_exception, request)
    return dict(json.loads(raw))


async def legacy_error(app: App, client: AcsClient, request: Any) -> ServerException:
    with pytest.raises(ServerException) as caught:
        await legacy_call(app, client, request)
    return caught.value


async def sdk_error(call: Callable[[], Any], kind: type[Exception] = tea_errors.ClientException) -> Any:
    with pytest.raises(kind) as caught:
        await asyncio.to_thread(call)
    return caught.value


def assert_request_id(value: str) -> None:
    assert len(value) == 36 and value.count("-") == 4, value


def submit_params(bucket: str, source: str, config: dict[str, Any]) -> tuple[str, str]:
    inp = {"Bucket": bucket, "Location": LOCATION, "Object": urllib.parse.quote(source)}
    return json.dumps(inp), json.dumps(config)


def output(bucket: str, name: str) -> dict[str, str]:
    return {"Bucket": bucket, "Location": LOCATION, "Object": name}


def generic_call(client: MtsClient, action: str, query: dict[str, str]) -> dict[str, Any]:
    """An action the SDK has no method for (this service's extensions), through its own
    generic call_api, signed the same way."""
    params = openapi_models.Params(
        action=action,
        version="2014-06-18",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    request = openapi_models.OpenApiRequest(query=OpenApiUtils.query(query))
    return dict(client.call_api(params, request, RuntimeOptions()))


# -- SubmitSnapshotJob and QuerySnapshotJobList ---------------------------------------------


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_new_sdk_sync_snapshot(server: App, bucket: str, videos: dict[str, Video], v1: bool) -> None:
    put(server.settings.data_dir, bucket, "in/clip one.mp4", videos["main"].path)
    inp, config = submit_params(
        bucket,
        "in/clip one.mp4",
        {"OutputFile": output(bucket, "shots/{FileName}-{SnapshotTime}.jpg"), "Time": "2000", "Width": "320"},
    )
    sdk = new_sdk(server, "AKHTTPADMIN", v1=v1)
    response = await asyncio.to_thread(
        sdk.submit_snapshot_job, mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config, user_data="u-1")
    )
    assert response.status_code == 200
    body = response.body
    assert_request_id(body.request_id)
    job = body.snapshot_job
    assert (job.state, job.count, job.tile_count, job.code, job.user_data) == ("Success", "1", "0", "", "u-1")
    assert (job.snapshot_config.time, job.snapshot_config.width) == ("2000", "320")
    assert job.snapshot_config.output_file.object == "shots/{FileName}-{SnapshotTime}.jpg"
    assert (job.input.bucket, job.input.object) == (bucket, "in/clip%20one.mp4")
    assert len(job.id) == 32 and job.pipeline_id == server.pipelines.default.id
    assert time.strptime(job.creation_time, "%Y-%m-%dT%H:%M:%SZ")
    with Image.open(server.settings.data_dir / bucket / "shots/clip one-2000.jpg") as image:
        assert image.size == (320, 180)

    # The same job through the SDK's query, by id, with a missing id beside it.
    listed = await asyncio.to_thread(
        sdk.query_snapshot_job_list, mts.QuerySnapshotJobListRequest(snapshot_job_ids=f"{job.id},{'0' * 32}")
    )
    assert [j.id for j in listed.body.snapshot_job_list.snapshot_job] == [job.id]
    assert listed.body.non_exist_snapshot_job_ids.string == ["0" * 32]
    found = listed.body.snapshot_job_list.snapshot_job[0]
    assert (found.state, found.count, found.snapshot_config.width) == ("Success", "1", "320")


async def test_new_sdk_async_call_and_async_job(server: App, bucket: str, videos: dict[str, Video]) -> None:
    """An asynchronous job (Interval + Num) submitted with the SDK's asyncio method, then
    followed with QuerySnapshotJobList until it ends."""
    put(server.settings.data_dir, bucket, "in.mp4", videos["main"].path)
    inp, config = submit_params(
        bucket, "in.mp4", {"OutputFile": output(bucket, "seq/{Count}.jpg"), "Time": "1000", "Interval": "2", "Num": "3"}
    )
    sdk = new_sdk(server, "AKHTTPADMIN")
    submitted = await sdk.submit_snapshot_job_async(mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config))
    job = submitted.body.snapshot_job
    assert job.state in ("Submitted", "Snapshoting") and job.snapshot_config.num == "3"
    assert job.snapshot_config.interval == "2"
    deadline = time.monotonic() + 60
    while True:
        listed = await sdk.query_snapshot_job_list_async(mts.QuerySnapshotJobListRequest(snapshot_job_ids=job.id))
        current = listed.body.snapshot_job_list.snapshot_job[0]
        if current.state not in ("Submitted", "Snapshoting"):
            break
        assert time.monotonic() < deadline, "the async job did not finish within 60 s"
        await asyncio.sleep(0.2)
    assert (current.state, current.count) == ("Success", "3")
    assert sorted(p.name for p in (server.settings.data_dir / bucket / "seq").iterdir()) == [
        "00001.jpg",
        "00002.jpg",
        "00003.jpg",
    ]


async def test_query_filters_and_pages(server: App, bucket: str, videos: dict[str, Video]) -> None:
    put(server.settings.data_dir, bucket, "in.mp4", videos["tiny"].path)
    sdk = new_sdk(server, "AKHTTPADMIN", v1=True)
    pipeline = (
        await asyncio.to_thread(sdk.add_pipeline, mts.AddPipelineRequest(name=f"filters-{bucket}"))
    ).body.pipeline.id
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    ids = []
    for t in (500, 1000, 1500):
        inp, config = submit_params(bucket, "in.mp4", {"OutputFile": output(bucket, f"{t}.jpg"), "Time": str(t)})
        req = mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config, pipeline_id=pipeline)
        ids.append((await asyncio.to_thread(sdk.submit_snapshot_job, req)).body.snapshot_job.id)
    ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        req = mts.QuerySnapshotJobListRequest(
            pipeline_id=pipeline,
            state="Success",
            start_of_job_created_time_range=started,
            end_of_job_created_time_range=ended,
            maximum_page_size=2,
            next_page_token=token,
        )
        body = (await asyncio.to_thread(sdk.query_snapshot_job_list, req)).body
        pages += 1
        seen += [j.id for j in body.snapshot_job_list.snapshot_job]
        assert all(j.pipeline_id == pipeline and j.state == "Success" for j in body.snapshot_job_list.snapshot_job)
        token = body.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and pages == 2
    # A filter that matches nothing: the wrappers are still there, empty.
    none = await asyncio.to_thread(
        sdk.query_snapshot_job_list, mts.QuerySnapshotJobListRequest(pipeline_id=pipeline, state="Fail")
    )
    assert none.body.snapshot_job_list.snapshot_job == []


async def test_legacy_sdk_submit_query_and_extensions(server: App, bucket: str, videos: dict[str, Video]) -> None:
    put(server.settings.data_dir, bucket, "v.mp4", videos["main"].path)
    client = legacy_sdk("AKHTTPADMIN")
    inp, config = submit_params(
        bucket, "v.mp4", {"OutputFile": output(bucket, "legacy.jpg"), "Time": 4000, "Height": 90, "FrameType": "intra"}
    )
    request = SubmitSnapshotJobRequest.SubmitSnapshotJobRequest()
    request.set_Input(inp)
    request.set_SnapshotConfig(config)
    request.set_UserData("legacy")
    body = await legacy_call(server, client, request)
    job = body["SnapshotJob"]
    assert_request_id(body["RequestId"])
    assert (job["State"], job["Count"], job["SnapshotConfig"]["Height"], job["UserData"]) == (
        "Success",
        "1",
        "90",
        "legacy",
    )
    # Extensions ride along as extra keys, with numbers as numbers: the exact frame time.
    image = job["Images"][0]
    assert image["Object"] == "legacy.jpg" and image["Height"] == 90 and image["Width"] == 160
    assert image["Time"] == 4000 and image["RequestedTime"] == 4000  # intra: the keyframe at 4 s (GOP 2 s)
    query = QuerySnapshotJobListRequest.QuerySnapshotJobListRequest()
    query.set_SnapshotJobIds(job["Id"])
    listed = await legacy_call(server, client, query)
    assert [j["Id"] for j in listed["SnapshotJobList"]["SnapshotJob"]] == [job["Id"]]
    assert listed["NonExistSnapshotJobIds"] == {"String": []}


async def test_legacy_sdk_outputs_beyond_mps(server: App, bucket: str, videos: dict[str, Video]) -> None:
    """The fields beyond MPS ride in SnapshotConfig's JSON text through MPS's own protocol."""
    put(server.settings.data_dir, bucket, "v.mp4", videos["main"].path)
    client = legacy_sdk("AKHTTPADMIN")
    inp, config = submit_params(
        bucket,
        "v.mp4",
        {"OutputFile": output(bucket, "beyond.webp"), "TimePercent": "40", "Width": "100", "Height": "100",
         "Fit": "crop", "Quality": 75, "SmartPick": {"Window": "1000"}},
    )  # fmt: skip
    request = SubmitSnapshotJobRequest.SubmitSnapshotJobRequest()
    request.set_Input(inp)
    request.set_SnapshotConfig(config)
    job = (await legacy_call(server, client, request))["SnapshotJob"]
    assert job["State"] == "Success" and job["SnapshotConfig"]["Fit"] == "crop"
    image = job["Images"][0]
    assert (image["Width"], image["Height"], image["RequestedTime"]) == (100, 100, 4000)
    with Image.open(server.settings.data_dir / bucket / "beyond.webp") as img:
        assert img.format == "WEBP" and img.size == (100, 100)


async def test_sync_snapshot_failure_is_an_mps_error(server: App, bucket: str, videos: dict[str, Video]) -> None:
    put(server.settings.data_dir, bucket, "short.mp4", videos["tiny"].path)
    inp, config = submit_params(bucket, "short.mp4", {"OutputFile": output(bucket, "x.jpg"), "Time": "60000"})
    err = await sdk_error(
        lambda: new_sdk(server, "AKHTTPADMIN").submit_snapshot_job(
            mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config)
        )
    )
    assert (err.status_code, err.code) == (400, "InvalidParameter.ResourceContentBad")
    assert "past the end" in err.message
    assert_request_id(err.request_id)
    assert err.data["RequestId"] == err.request_id and set(err.data) >= {
        "RequestId",
        "HostId",
        "Code",
        "Message",
        "Recommend",
    }
    missing_input, _ = submit_params(bucket, "nope.mp4", {})
    err = await sdk_error(
        lambda: new_sdk(server, "AKHTTPADMIN", v1=True).submit_snapshot_job(
            mts.SubmitSnapshotJobRequest(input=missing_input, snapshot_config=config)
        )
    )
    assert (err.status_code, err.code) == (404, "InvalidParameter.ResourceNotFound")
    assert not (server.settings.data_dir / bucket / "x.jpg").exists()


# -- pipelines and cancel ------------------------------------------------------------------


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_new_sdk_pipeline_actions_and_cancel(
    server: App, bucket: str, videos: dict[str, Video], v1: bool
) -> None:
    sdk = new_sdk(server, "AKHTTPADMIN", v1=v1)
    name = f"sdk-{bucket}"
    notify = json.dumps({"Topic": "", "QueueName": "", "HttpUrl": "http://127.0.0.1:9/hook"})
    added = await asyncio.to_thread(
        sdk.add_pipeline, mts.AddPipelineRequest(name=name, speed="Standard", notify_config=notify)
    )
    pipeline = added.body.pipeline
    assert (pipeline.name, pipeline.state, pipeline.speed, pipeline.speed_level) == (name, "Active", "Standard", 0)
    assert pipeline.notify_config.topic == "" and len(pipeline.id) == 32

    updated = await asyncio.to_thread(
        sdk.update_pipeline,
        mts.UpdatePipelineRequest(
            pipeline_id=pipeline.id,
            name=name + "-paused",
            state="Paused",
            extend_config=json.dumps({"MaxConcurrentJobs": 3, "IsBoostNew": False}),
        ),
    )
    assert (updated.body.pipeline.state, updated.body.pipeline.name) == ("Paused", name + "-paused")
    assert server.pipelines.resolve(pipeline.id).max_concurrent_jobs == 3

    listed = await asyncio.to_thread(
        sdk.query_pipeline_list, mts.QueryPipelineListRequest(pipeline_ids=f"{pipeline.id},{'f' * 32}")
    )
    assert [p.id for p in listed.body.pipeline_list.pipeline] == [pipeline.id]
    assert listed.body.non_exist_pids.string == ["f" * 32]

    searched = await asyncio.to_thread(
        sdk.search_pipeline, mts.SearchPipelineRequest(state="Paused", page_number=1, page_size=100)
    )
    assert pipeline.id in [p.id for p in searched.body.pipeline_list.pipeline]
    assert isinstance(searched.body.total_count, int) and searched.body.page_size == 100

    # A job on the paused pipeline waits; CancelSnapshotJob (an extension, through the SDK's
    # generic call) ends it.
    put(server.settings.data_dir, bucket, "in.mp4", videos["tiny"].path)
    inp, config = submit_params(bucket, "in.mp4", {"OutputFile": output(bucket, "{Count}.jpg"), "Num": "2"})
    submitted = await asyncio.to_thread(
        sdk.submit_snapshot_job,
        mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config, pipeline_id=pipeline.id),
    )
    assert submitted.body.snapshot_job.state == "Submitted"
    job_id = submitted.body.snapshot_job.id
    err = await sdk_error(lambda: sdk.delete_pipeline(mts.DeletePipelineRequest(pipeline_id=pipeline.id)))
    assert (err.status_code, err.code) == (400, "IncorrectPipelineState")
    cancelled = await asyncio.to_thread(generic_call, sdk, "CancelSnapshotJob", {"SnapshotJobId": job_id})
    assert cancelled["statusCode"] == 200 and cancelled["body"]["SnapshotJob"]["State"] == "Cancelled"
    err = await sdk_error(lambda: generic_call(sdk, "CancelSnapshotJob", {"SnapshotJobId": job_id}))
    assert (err.status_code, err.code) == (400, "IncorrectJobState")

    deleted = await asyncio.to_thread(sdk.delete_pipeline, mts.DeletePipelineRequest(pipeline_id=pipeline.id))
    assert deleted.body.pipeline_id == pipeline.id
    err = await sdk_error(lambda: sdk.delete_pipeline(mts.DeletePipelineRequest(pipeline_id=pipeline.id)))
    assert (err.status_code, err.code) == (404, "InvalidParameter.ResourceNotFound")
    assert_request_id(err.request_id)
    assert list((server.settings.data_dir / bucket).glob("*.jpg")) == []


async def test_legacy_sdk_pipeline_actions_and_cancel(server: App, bucket: str, videos: dict[str, Video]) -> None:
    client = legacy_sdk("AKHTTPADMIN")
    add = AddPipelineRequest.AddPipelineRequest()
    add.set_Name(f"legacy-{bucket}")
    add.set_SpeedLevel(2)
    pipeline = (await legacy_call(server, client, add))["Pipeline"]
    assert (pipeline["State"], pipeline["SpeedLevel"]) == ("Active", 2)

    update = UpdatePipelineRequest.UpdatePipelineRequest()
    update.set_PipelineId(pipeline["Id"])
    update.set_Name(pipeline["Name"])
    update.set_State("Paused")
    assert (await legacy_call(server, client, update))["Pipeline"]["State"] == "Paused"

    query = QueryPipelineListRequest.QueryPipelineListRequest()
    query.set_PipelineIds(pipeline["Id"])
    listed = await legacy_call(server, client, query)
    assert listed["PipelineList"]["Pipeline"][0]["State"] == "Paused" and listed["NonExistPids"] == {"String": []}

    search = SearchPipelineRequest.SearchPipelineRequest()
    search.set_State("Paused")
    found = await legacy_call(server, client, search)
    assert pipeline["Id"] in [p["Id"] for p in found["PipelineList"]["Pipeline"]]
    assert isinstance(found["TotalCount"], int)

    put(server.settings.data_dir, bucket, "in.mp4", videos["tiny"].path)
    inp, config = submit_params(bucket, "in.mp4", {"OutputFile": output(bucket, "{Count}.jpg"), "Num": "2"})
    submit = SubmitSnapshotJobRequest.SubmitSnapshotJobRequest()
    submit.set_Input(inp)
    submit.set_SnapshotConfig(config)
    submit.set_PipelineId(pipeline["Id"])
    job = (await legacy_call(server, client, submit))["SnapshotJob"]
    assert job["State"] == "Submitted"
    cancel = CommonRequest(domain="mts.aliyuncs.com", version="2014-06-18", action_name="CancelSnapshotJob")
    cancel.add_query_param("SnapshotJobId", job["Id"])
    assert (await legacy_call(server, client, cancel))["SnapshotJob"]["State"] == "Cancelled"

    delete = DeletePipelineRequest.DeletePipelineRequest()
    delete.set_PipelineId(pipeline["Id"])
    assert (await legacy_call(server, client, delete))["PipelineId"] == pipeline["Id"]
    err = await legacy_error(server, client, delete)
    assert (err.get_http_status(), err.get_error_code()) == (404, "InvalidParameter.ResourceNotFound")
    assert_request_id(err.get_request_id())


# -- authentication, authorization, throttling ---------------------------------------------


async def test_wrong_secret_and_unknown_keys(server: App) -> None:
    search = mts.SearchPipelineRequest()
    for v1 in (False, True):
        err = await sdk_error(
            lambda v1=v1: new_sdk(server, "AKHTTPADMIN", v1=v1, secret="wrong").search_pipeline(search)
        )
        assert (err.status_code, err.code) == (400, "SignatureDoesNotMatch")
        assert_request_id(err.request_id)
        err = await sdk_error(lambda v1=v1: new_sdk(server, "AKNOSUCHKEY", v1=v1).search_pipeline(search))
        assert (err.status_code, err.code) == (404, "InvalidAccessKeyId.NotFound")
    # A principal with only the hash (gRPC keys) cannot sign Alibaba Cloud requests...
    err = await sdk_error(lambda: new_sdk(server, "AKHASHONLY").search_pipeline(search))
    assert (err.status_code, err.code) == (400, "InvalidAccessKeyId.Inactive")
    assert "access_key_secret_file" in err.message
    legacy = await legacy_error(
        server, legacy_sdk("AKHTTPADMIN", "wrong"), SearchPipelineRequest.SearchPipelineRequest()
    )
    assert (legacy.get_http_status(), legacy.get_error_code()) == (400, "SignatureDoesNotMatch")
    # ... while gRPC keeps working for every principal: hash only, and secret file only.
    for key in ("AKHASHONLY", "AKHTTPADMIN"):
        for mode in ("hmac", "bearer"):
            async with SnapshotClient(
                f"127.0.0.1:{server.port}", access_key_id=key, access_key_secret=SECRETS[key], auth_mode=mode
            ) as c:
                assert (await c.search_pipelines()).total_count >= 1


async def test_unsigned_call_is_refused(server: App) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.http_port}/?Action=SearchPipeline&Version=2014-06-18"
        async with session.get(url) as resp:
            body = await resp.json()
    assert (resp.status, body["Code"]) == (400, "MissingAccessKeyId")


@pytest.fixture
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    nonce = f"replayed-{os.urandom(4).hex()}"
    monkeypatch.setattr(OpenApiUtils, "get_nonce", staticmethod(lambda: nonce))
    yield nonce


async def test_replayed_nonce(server: App, fixed_nonce: str) -> None:
    for v1 in (False, True):
        sdk = new_sdk(server, "AKHTTPADMIN", v1=v1)
        await asyncio.to_thread(sdk.search_pipeline, mts.SearchPipelineRequest())
        err = await sdk_error(lambda sdk=sdk: sdk.search_pipeline(mts.SearchPipelineRequest()))
        assert (err.status_code, err.code) == (400, "SignatureNonceUsed")
        # The V1 and V3 paths share the store: the next round needs a fresh nonce.
        OpenApiUtils.get_nonce = staticmethod(lambda: "second-" + fixed_nonce)  # type: ignore[method-assign]


async def test_nonces_are_shared_with_grpc(server: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nonce a gRPC call used is spent for HTTP calls too (one replay store per server)."""
    nonce = f"shared-{os.urandom(4).hex()}"
    metadata = signature_metadata(
        "AKHTTPADMIN", SECRETS["AKHTTPADMIN"], "/mps.snapshot.v1.PipelineService/SearchPipeline", nonce=nonce
    )
    async with SnapshotClient(f"127.0.0.1:{server.port}") as c:
        await c.pipelines.SearchPipeline(pps.SearchPipelineRequest(), metadata=metadata, timeout=5)
    monkeypatch.setattr(OpenApiUtils, "get_nonce", staticmethod(lambda: nonce))
    err = await sdk_error(lambda: new_sdk(server, "AKHTTPADMIN").search_pipeline(mts.SearchPipelineRequest()))
    assert err.code == "SignatureNonceUsed"


async def test_skewed_clock(server: App) -> None:
    authenticator = server.guard.authenticator
    real = authenticator.clock
    try:
        for skew in (16 * 60, -16 * 60):
            authenticator.clock = lambda skew=skew: time.time() + skew  # type: ignore[misc]
            for v1 in (False, True):
                err = await sdk_error(
                    lambda v1=v1: new_sdk(server, "AKHTTPADMIN", v1=v1).search_pipeline(mts.SearchPipelineRequest())
                )
                assert (err.status_code, err.code) == (400, "InvalidTimeStamp.Expired")
            legacy = await legacy_error(
                server, legacy_sdk("AKHTTPADMIN"), SearchPipelineRequest.SearchPipelineRequest()
            )
            assert legacy.get_error_code() == "InvalidTimeStamp.Expired"
        authenticator.clock = lambda: time.time() + 14 * 60  # type: ignore[misc]
        await asyncio.to_thread(new_sdk(server, "AKHTTPADMIN").search_pipeline, mts.SearchPipelineRequest())
    finally:
        authenticator.clock = real  # type: ignore[misc]


async def test_denied_action(server: App, bucket: str) -> None:
    reader = new_sdk(server, "AKHTTPREADER")
    assert (await asyncio.to_thread(reader.search_pipeline, mts.SearchPipelineRequest())).body.total_count >= 1
    err = await sdk_error(lambda: reader.add_pipeline(mts.AddPipelineRequest(name="nope")))
    assert (err.status_code, err.code) == (403, "Forbidden.RAM")
    assert "mts:AddPipeline" in err.message
    assert_request_id(err.request_id)
    inp, config = submit_params(bucket, "x.mp4", {"OutputFile": output(bucket, "x.jpg")})
    err = await sdk_error(
        lambda: new_sdk(server, "AKHTTPREADER", v1=True).submit_snapshot_job(
            mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config)
        )
    )
    assert (err.status_code, err.code) == (403, "Forbidden.RAM")
    add = AddPipelineRequest.AddPipelineRequest()
    add.set_Name("nope")
    legacy = await legacy_error(server, legacy_sdk("AKHTTPREADER"), add)
    assert (legacy.get_http_status(), legacy.get_error_code()) == (403, "Forbidden.RAM")


async def test_throttling(server: App) -> None:
    """Over the rate: Throttling.User with x-acs-retry-after, which the new SDK raises as its
    ThrottlingException; another principal is not slowed."""
    limiter = server.guard.limiter
    real = dict(limiter.limits)
    limiter.limits["pipeline"] = 0.5  # one call, then one every 2 s (a fresh principal's bucket)
    try:
        flood = new_sdk(server, "AKHTTPFLOOD")
        await asyncio.to_thread(flood.search_pipeline, mts.SearchPipelineRequest())
        err = await sdk_error(
            lambda: flood.search_pipeline(mts.SearchPipelineRequest()), tea_errors.ThrottlingException
        )
        assert (err.status_code, err.code) == (400, "Throttling.User")
        assert 1000 <= err.retry_after <= 2000  # milliseconds until the next token
        assert_request_id(err.request_id)
        legacy = await legacy_error(server, legacy_sdk("AKHTTPFLOOD"), SearchPipelineRequest.SearchPipelineRequest())
        assert (legacy.get_http_status(), legacy.get_error_code()) == (400, "Throttling.User")
        # The same budget as gRPC: the flooding principal is throttled there too.
        async with SnapshotClient(
            f"127.0.0.1:{server.port}", access_key_id="AKHTTPFLOOD", access_key_secret=SECRETS["AKHTTPFLOOD"]
        ) as c:
            with pytest.raises(MpsApiError) as caught:
                await c.search_pipelines()
            assert caught.value.code == "Throttling.User"
    finally:
        limiter.limits.clear()
        limiter.limits.update(real)


async def test_calls_in_progress_are_capped(server: App) -> None:
    rpc = server.mps_rpc
    assert rpc is not None
    real = rpc.max_in_flight
    rpc.max_in_flight = rpc.in_flight  # as if the server were full
    try:
        err = await sdk_error(
            lambda: new_sdk(server, "AKHTTPADMIN").search_pipeline(mts.SearchPipelineRequest()),
            tea_errors.ThrottlingException,
        )
        assert (err.code, err.retry_after) == ("Throttling.Concurrency", 1000)
    finally:
        rpc.max_in_flight = real
    assert await asyncio.to_thread(new_sdk(server, "AKHTTPADMIN").search_pipeline, mts.SearchPipelineRequest())


# -- bad requests: what MPS answers --------------------------------------------------------


async def test_malformed_json_missing_parameter_unknown_action(server: App, bucket: str) -> None:
    sdk = new_sdk(server, "AKHTTPADMIN")
    err = await sdk_error(
        lambda: sdk.submit_snapshot_job(mts.SubmitSnapshotJobRequest(input='{"Bucket": ', snapshot_config="{}"))
    )
    assert (err.status_code, err.code) == (400, "InvalidParameter.JsonFormatInvalid")
    assert "Input is not valid JSON" in err.message
    err = await sdk_error(
        lambda: sdk.submit_snapshot_job(
            mts.SubmitSnapshotJobRequest(input='{"Bucket":"a","Bucket":"b"}', snapshot_config="{}")
        )
    )
    assert (err.status_code, err.code) == (400, "InvalidParameter.JsonFormatInvalid")
    err = await sdk_error(lambda: sdk.submit_snapshot_job(mts.SubmitSnapshotJobRequest(snapshot_config="{}")))
    assert (err.status_code, err.code) == (400, "MissingParameter.Input")
    assert err.data["Recommend"] == "Input: Input is required for SubmitSnapshotJob."
    err = await sdk_error(lambda: sdk.delete_pipeline(mts.DeletePipelineRequest()))
    assert (err.status_code, err.code) == (400, "MissingParameter.PipelineId")
    err = await sdk_error(lambda: generic_call(sdk, "SubmitJobs", {}))
    assert (err.status_code, err.code) == (404, "InvalidAction.NotFound")
    inp, _ = submit_params(bucket, "x.mp4", {})
    err = await sdk_error(
        lambda: sdk.submit_snapshot_job(
            mts.SubmitSnapshotJobRequest(input=inp, snapshot_config='{"Time": "soon", "OutputFile": {}}')
        )
    )
    assert (err.status_code, err.code) == (400, "InvalidParameter.Value")
    err = await sdk_error(lambda: generic_call(sdk, "SearchPipeline", {"Colour": "red"}))
    assert (err.status_code, err.code) == (400, "InvalidParameter.UnknownParameter")
    assert "Colour" in err.message


@pytest.mark.parametrize("nested_as_text", [False, True], ids=["object", "object-in-text"])
async def test_deep_json_in_a_signed_parameter(server: App, bucket: str, nested_as_text: bool) -> None:
    """JSON nested 5,000 deep (past Python's recursion limit; the SDK's GET must stay under the
    64 KiB query limit) inside a signed SnapshotConfig is the caller's mistake (400), never a
    RecursionError answered as InternalError; the server goes on serving."""
    deep = "[" * 5_000 + "]" * 5_000
    inner = json.dumps(deep) if nested_as_text else deep  # OutputFile as JSON text, as MPS sends objects
    inp, _ = submit_params(bucket, "x.mp4", {})
    sdk = new_sdk(server, "AKHTTPADMIN")
    err = await sdk_error(
        lambda: sdk.submit_snapshot_job(
            mts.SubmitSnapshotJobRequest(input=inp, snapshot_config='{"Time": "0", "OutputFile": ' + inner + "}")
        )
    )
    assert (err.status_code, err.code) == (400, "InvalidParameter.JsonFormatInvalid"), err.message
    assert "nest" in err.message
    assert (await asyncio.to_thread(sdk.search_pipeline, mts.SearchPipelineRequest())).body.total_count >= 1


async def raw(
    app: App, method: str, target: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"http://127.0.0.1:{app.http_port}{target}",
            data=data,
            headers=headers,
            skip_auto_headers=("Content-Type",) if data is None else (),
        ) as resp,
    ):
        text = await resp.text(errors="replace")
        if resp.content_type == "application/json":
            return resp.status, dict(json.loads(text))
        return resp.status, text


BASE = "Action=SearchPipeline&Version=2014-06-18"


@pytest.mark.parametrize(
    ("method", "target", "data", "headers", "status", "code"),
    [
        ("GET", "/?" + BASE + "&UserData=" + "a" * 70_000, None, None, 400, "InvalidParameter.TooLarge"),
        (
            "POST",
            "/?" + BASE,
            b"x=" + b"a" * 1_100_000,
            {"Content-Type": "application/x-www-form-urlencoded"},
            400,
            "InvalidParameter.TooLarge",
        ),
        ("GET", "/?" + BASE + "&Action=DeletePipeline", None, None, 400, "InvalidParameter.Duplicate"),
        (
            "POST",
            "/?" + BASE,
            b"Version=2014-06-18",
            {"Content-Type": "application/x-www-form-urlencoded"},
            400,
            "InvalidParameter.Duplicate",
        ),
        ("GET", "/?" + BASE + "&State=%FF%FE", None, None, 400, "InvalidParameter.Encoding"),
        (
            "POST",
            "/?" + BASE,
            b"State=%C3%28",
            {"Content-Type": "application/x-www-form-urlencoded"},
            400,
            "InvalidParameter.Encoding",
        ),
        (
            "POST",
            "/?" + BASE,
            "State=Actívé".encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
            400,
            "InvalidParameter.Encoding",
        ),
        (
            "POST",
            "/",
            b'{"Action": "SearchPipeline", ',
            {"Content-Type": "application/json"},
            400,
            "InvalidParameter.JsonFormatInvalid",
        ),
        (
            "POST",
            "/",
            b'{"Action": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
            {"Content-Type": "application/json"},
            400,
            "InvalidParameter.JsonFormatInvalid",
        ),
        ("POST", "/", b"<xml/>", {"Content-Type": "text/xml"}, 400, "InvalidParameter.ContentType"),
        ("GET", "/?" + "&".join(f"K{i}=1" for i in range(100)), None, None, 400, "InvalidParameter.TooMany"),
        ("GET", "/?Action=SearchPipeline&Version=2017-01-01", None, None, 400, "InvalidVersion"),
        ("GET", "/?Version=2014-06-18", None, None, 400, "MissingParameter.Action"),
        ("GET", "/?" + BASE + "&Format=XML", None, None, 400, "InvalidParameter.Format"),
        ("GET", "/?" + BASE, None, {"x-acs-action": "AddPipeline"}, 400, "InvalidParameter.Action"),
        ("PUT", "/?" + BASE, None, None, 405, "UnsupportedHTTPMethod"),
        ("GET", "/admin/../etc/passwd", None, None, 404, "InvalidAction.NotFound"),
        (
            "GET",
            "/?" + BASE,
            None,
            {"Authorization": "ACS3-HMAC-SHA256 Credential=AKHTTPADMIN"},
            400,
            "IncompleteSignature",
        ),
        (
            "GET",
            "/?" + BASE,
            None,
            {"Authorization": "ACS3-HMAC-SHA256 Credential=AKHTTPADMIN,SignedHeaders=host,Signature=00"},
            400,
            "IncompleteSignature",
        ),
        ("GET", "/?" + BASE + "&Signature=abc&AccessKeyId=AKHTTPADMIN", None, None, 400, "IncompleteSignature"),
        ("GET", "/?" + BASE + "&SignatureType=BEARERTOKEN&BearerToken=t", None, None, 400, "IncompleteSignature"),
    ],
    ids=[
        "long-query",
        "big-body",
        "dup-query",
        "dup-query-and-body",
        "bad-utf8-query",
        "bad-utf8-form",
        "raw-bytes-form",
        "bad-json-body",
        "deep-json-body",
        "xml-body",
        "too-many",
        "version",
        "no-action",
        "format-xml",
        "action-mismatch",
        "put",
        "other-path",
        "v3-incomplete",
        "v3-unsigned-headers",
        "v1-incomplete",
        "bearer-token",
    ],
)
async def test_hostile_requests_get_clean_4xx(
    server: App,
    method: str,
    target: str,
    data: bytes | None,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    got, body = await raw(server, method, target, data=data, headers=headers)
    assert isinstance(body, dict), body
    assert (got, body["Code"]) == (status, code), body
    assert_request_id(body["RequestId"])
    assert body["Message"] and set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}


async def test_request_line_beyond_the_parser_limit(server: App) -> None:
    """Past aiohttp's own line limit the answer is its plain 400, and the server goes on."""
    got, _ = await raw(server, "GET", "/?" + BASE + "&UserData=" + "a" * 200_000)
    assert 400 <= got < 500
    sdk = new_sdk(server, "AKHTTPADMIN")
    assert (await asyncio.to_thread(sdk.search_pipeline, mts.SearchPipelineRequest())).body.total_count >= 1


# -- without principals, configuration -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_principals_cli_flag_and_placeholder_keys(tmp_path: Path, videos: dict[str, Video]) -> None:
    """``mps-snapshot serve --http-listen``: without principals the loopback listener needs no
    real keys, so a local trial uses the SDK with placeholders."""
    port = free_port()
    put(tmp_path, "vids", "a.mp4", videos["tiny"].path)
    proc = ServerProcess(tmp_path, "--http-listen", f"127.0.0.1:{port}")
    await proc.start()
    try:

        class Local:
            http_port = port

        sdk = new_sdk(Local(), "placeholder", secret="placeholder")  # type: ignore[arg-type]
        inp, config = submit_params("vids", "a.mp4", {"OutputFile": output("vids", "a.jpg"), "Time": "1000"})
        job = (
            await asyncio.to_thread(
                sdk.submit_snapshot_job, mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config)
            )
        ).body.snapshot_job
        assert (job.state, job.count) == ("Success", "1")
        assert (tmp_path / "vids" / "a.jpg").stat().st_size > 1000
    finally:
        assert await proc.kill(signal.SIGTERM) == 0


async def test_relative_data_dir(tmp_path: Path, videos: dict[str, Video], monkeypatch: pytest.MonkeyPatch) -> None:
    """`mps-snapshot serve` from a folder with the default relative ``data`` (the README's
    walkthrough): ffmpeg runs in its work folder, so every path it gets must be absolute."""
    monkeypatch.chdir(tmp_path)
    put(tmp_path / "data", "vids", "a.mp4", videos["tiny"].path)
    app = App(load(env={}, listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=Path("data")))
    await app.start()
    try:
        inp, config = submit_params("vids", "a.mp4", {"OutputFile": output("vids", "a.jpg"), "Time": "1000"})
        sdk = new_sdk(app, "placeholder", secret="placeholder")
        job = (
            await asyncio.to_thread(
                sdk.submit_snapshot_job, mts.SubmitSnapshotJobRequest(input=inp, snapshot_config=config)
            )
        ).body.snapshot_job
        assert (job.state, job.count) == ("Success", "1")
        with Image.open(tmp_path / "data" / "vids" / "a.jpg") as image:
            assert image.size == (176, 144)
    finally:
        await app.stop(0.5)


async def test_https_with_the_grpc_certificate(tmp_path: Path) -> None:
    """With tls_cert_file the HTTP listener serves HTTPS with the same certificate; with a
    client CA it requires client certificates like the gRPC listener."""
    from cryptography.hazmat.primitives import serialization

    from tests.rpc.test_tls_and_fuzz import _cert, _key, _pem, _write

    ca_key = _key()
    ca = _cert("test-ca", ca_key, None, ca=True)
    server_key = _key()
    server_cert = _cert("mps-snapshot", server_key, (ca.subject, ca_key), ip="127.0.0.1")
    client_key = _key()
    client_cert = _cert("media-svc", client_key, (ca.subject, ca_key))
    pem = serialization.Encoding.PEM
    ca_file = _write(tmp_path / "ca.pem", ca.public_bytes(pem))
    for client_ca in ("", ca_file):
        app = App(
            load(
                env={},
                listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",
                data_dir=tmp_path / "data",
                tls_cert_file=_write(tmp_path / "server.pem", server_cert.public_bytes(pem)),
                tls_key_file=_write(tmp_path / "server.key", _pem(server_key)),
                tls_client_ca_file=client_ca,
            )
        )
        await app.start()
        try:
            trust = ssl.create_default_context(cafile=ca_file)
            url = f"https://127.0.0.1:{app.http_port}/?{BASE}"
            async with aiohttp.ClientSession() as session:
                if client_ca:
                    with pytest.raises(aiohttp.ClientError):
                        async with session.get(url, ssl=trust) as resp:
                            await resp.read()
                    trust.load_cert_chain(
                        _write(tmp_path / "client.pem", client_cert.public_bytes(pem)),
                        _write(tmp_path / "client.key", _pem(client_key)),
                    )
                async with session.get(url, ssl=trust) as resp:
                    body = await resp.json()
                assert resp.status == 200 and body["TotalCount"] == 1
        finally:
            await app.stop(0.5)


def test_settings_and_exposure(tmp_path: Path) -> None:
    assert load(env={"MPS_SNAPSHOT_HTTP_LISTEN": "127.0.0.1:8080"}).http_listen == "127.0.0.1:8080"
    assert load(env={}).http_listen == ""
    with pytest.raises(SystemExit, match=r"0\.0\.0\.0:8080"):
        check_exposure(load(env={}, http_listen="0.0.0.0:8080"))
    check_exposure(load(env={}, http_listen="0.0.0.0:8080", allow_insecure=True))


def test_secret_file_rules(tmp_path: Path) -> None:
    from mps_snapshot_server.app import build_guard

    secret = tmp_path / "secret"
    secret.write_text("abc\n")
    secret.chmod(0o600)
    principal = PrincipalConfig(name="p", access_key_id="AKP", access_key_secret_file=str(secret))
    guard = build_guard(load(env={}, principals=(principal,)))
    found = guard.authenticator.principal("AKP")
    assert (found.secret, found.key_hash) == ("abc", derive_key("abc"))
    assert "abc" not in repr(found)
    mismatched = PrincipalConfig(
        access_key_id="AKP", access_key_hash=derive_key("other"), access_key_secret_file=str(secret)
    )
    with pytest.raises(SystemExit, match="does not match"):
        build_guard(load(env={}, principals=(mismatched,)))
    secret.write_text("two words\n")
    with pytest.raises(SystemExit, match="secret alone"):
        build_guard(load(env={}, principals=(principal,)))
    with pytest.raises(SystemExit, match="cannot read"):
        build_guard(
            load(
                env={},
                principals=(PrincipalConfig(access_key_id="AKP", access_key_secret_file=str(tmp_path / "none")),),
            )
        )
