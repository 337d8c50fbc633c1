"""S3-compatible storage end to end: a real moto S3 server (its own process), the real
gRPC server and real ffmpeg reading presigned URLs, a byte-counting proxy for the range-read
budget, and a fault-injecting proxy for 5xx/SlowDown answers, resets and stalls."""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import subprocess
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import boto3
import grpc
import pytest
import pytest_asyncio
from aiobotocore.config import AioConfig
from botocore.config import Config
from PIL import Image

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.app import App
from mps_snapshot_server.config import Settings, StorageRoute, load
from mps_snapshot_server.domain.errors import PermissionDenied, ResourceNotFound, TransientError
from mps_snapshot_server.media import probe as probe_mod
from mps_snapshot_server.storage.s3 import S3Options, S3Store
from tests.helpers.media import Video, closest_frame, ffmpeg
from tests.helpers.s3util import CountingProxy, FaultProxy, MotoServer

ACCESS_KEY = "AKIAMPSSNAPSHOTTEST1"
SECRET = "s3cr3t-must-never-be-logged-7f3a"
S3_LOC = "s3-cn-test"  # through the fault proxy
BIG_LOC = "big-cn-test"  # through the counting proxy
TINY_LOC = "tiny-cn-test"  # max_input_bytes = 1000
LOCAL_LOC = "oss-cn-hangzhou"  # the embedded storage


def _s3_options(label: str = "", **fields: Any) -> S3Options:
    """A store's options as a configured route would give them."""
    return S3Options.from_route(StorageRoute(location=label, kind="s3", **fields), Settings().max_input_bytes)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


def _config() -> AioConfig:
    return AioConfig(signature_version="s3v4", s3={"addressing_style": "path"})


@pytest_asyncio.fixture(scope="session")
async def admin(moto: MotoServer) -> AsyncIterator[Any]:
    """A client straight to moto (no proxy) for setting up and checking buckets."""
    session = aioboto3.Session(aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1")
    async with session.client("s3", endpoint_url=moto.endpoint, config=_config()) as client:
        yield client


@pytest_asyncio.fixture(scope="session")
async def faulty(moto: MotoServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(moto.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest_asyncio.fixture(scope="session")
async def counting(moto: MotoServer) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(moto.port)
    await proxy.start()
    yield proxy
    await proxy.close()


def s3_route(location: str, endpoint: str, **options: Any) -> StorageRoute:
    return StorageRoute(
        location=location,
        kind="s3",
        endpoint_url=endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET,
        **options,
    )


# Small timeouts and a tiny multipart threshold so faults and multipart uploads show quickly.
FAULTY_OPTIONS: dict[str, Any] = {
    "read_timeout_s": 2.0,
    "connect_timeout_s": 2.0,
    "max_attempts": 3,
    "multipart_threshold_bytes": 16 * 1024,
    "multipart_part_bytes": 5 * 1024 * 1024,
}


@pytest_asyncio.fixture(scope="session")
async def s3_app(
    tmp_path_factory: pytest.TempPathFactory, faulty: FaultProxy, counting: CountingProxy
) -> AsyncIterator[App]:
    settings = load(
        env={},
        listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("s3data"),
        shutdown_grace_s=1.0,
        sync_timeout_s=20.0,
        ffmpeg_timeout_s=60.0,
        storage=(
            s3_route("s3-*", faulty.endpoint, **FAULTY_OPTIONS),
            s3_route("big-*", counting.endpoint),
            s3_route("tiny-*", faulty.endpoint, max_input_bytes=1000),
            StorageRoute(location="*", kind="local"),
        ),
    )
    application = App(settings)
    await application.start()
    yield application
    await application.stop(0.5)


@pytest_asyncio.fixture(scope="session")
async def s3_client(s3_app: App) -> AsyncIterator[SnapshotClient]:
    async with SnapshotClient(f"127.0.0.1:{s3_app.port}", timeout=60) as c:
        yield c


@pytest_asyncio.fixture
async def s3_bucket(admin: Any, faulty: FaultProxy) -> AsyncIterator[str]:
    name = f"s3t-{uuid.uuid4().hex[:12]}"
    await admin.create_bucket(Bucket=name)
    yield name
    faulty.clear()


@pytest_asyncio.fixture(scope="session")
async def main_in_s3(admin: Any, videos: dict[str, Video]) -> tuple[str, str]:
    """The 10-s test video in a bucket of its own, under a key that needs URL-encoding."""
    bucket, key = "s3t-inputs", "in/my clip ü.mp4"
    await admin.create_bucket(Bucket=bucket)
    data = await asyncio.to_thread(videos["main"].path.read_bytes)
    await admin.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket, key


def ref(bucket: str, key: str, location: str) -> res.OSSFile:
    """An MPS object reference: Object is URL-encoded once."""
    return res.OSSFile(bucket=bucket, location=location, object=urllib.parse.quote(key, safe=""))


def submit(inp: res.OSSFile, out: res.OSSFile, **config: Any) -> sps.SubmitSnapshotJobRequest:
    return sps.SubmitSnapshotJobRequest(input=inp, snapshot_config=res.SnapshotConfig(output_file=out, **config))


async def keys(admin: Any, bucket: str) -> list[str]:
    listing = await admin.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def s3_stores(app: App) -> list[S3Store]:
    stores = {id(r.store): r.store for r in app.router.routes if isinstance(r.store, S3Store)}
    return list(stores.values())


async def open_uploads(admin: Any, app: App, bucket: str) -> list[str]:
    """Multipart uploads still open, once background aborts have finished."""
    for store in s3_stores(app):
        await store.idle()
    listing = await admin.list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


async def object_image(admin: Any, bucket: str, key: str) -> tuple[Image.Image, str]:
    got = await admin.get_object(Bucket=bucket, Key=key)
    img = Image.open(io.BytesIO(await got["Body"].read()))
    img.load()
    return img, got["ContentType"]


def no_secrets(text: str, *extra: str) -> None:
    for needle in ("X-Amz", "Signature=", "127.0.0.1", SECRET, ACCESS_KEY, *extra):
        assert needle not in text, f"{needle!r} leaked into: {text[:300]}"


# -- end to end ------------------------------------------------------------------------------


async def test_sync_snapshot_input_and_output_in_s3(
    s3_app: App, s3_client: SnapshotClient, admin: Any, s3_bucket: str, main_in_s3: tuple[str, str], videos: dict
) -> None:
    bucket, key = main_in_s3
    response = await s3_client.submit(
        submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "out/{FileName}-{Count}.jpg", S3_LOC), time=4000)
    )
    job = response.snapshot_job
    assert job.state == "Success", job.message
    assert job.images[0].object == "out/my clip ü-00001.jpg"
    assert await keys(admin, s3_bucket) == ["out/my clip ü-00001.jpg"]
    img, content_type = await object_image(admin, s3_bucket, job.images[0].object)
    assert content_type == "image/jpeg" and img.format == "JPEG" and img.size == (640, 360)
    best, diffs = await asyncio.to_thread(closest_frame, img, videos["main"].path, [99, 100, 101])
    assert best == 100, diffs
    assert await open_uploads(admin, s3_app, s3_bucket) == []


async def test_formats_beyond_mps_have_their_content_type_in_s3(
    s3_client: SnapshotClient, admin: Any, s3_bucket: str, main_in_s3: tuple[str, str]
) -> None:
    bucket, key = main_in_s3
    sync = await s3_client.submit(
        submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "f/a.webp", S3_LOC), time=1000, width=160)
    )
    img, content_type = await object_image(admin, s3_bucket, sync.snapshot_job.images[0].object)
    assert content_type == "image/webp" and img.format == "WEBP" and img.size == (160, 90)
    request = submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "f/{Count}.png", S3_LOC), interval=4, num=2, width=64)
    request.snapshot_config.animated_out.CopyFrom(res.AnimatedOut(duration=1000, fps=4, width=64))
    request.snapshot_config.animated_output_file.CopyFrom(ref(s3_bucket, "f/anim.gif", S3_LOC))
    final = await s3_client.wait((await s3_client.submit(request)).snapshot_job.id, timeout=60)
    assert final.state == "Success", final.message
    for image in final.images:
        img, content_type = await object_image(admin, s3_bucket, image.object)
        assert content_type == "image/png" and img.format == "PNG"
    img, content_type = await object_image(admin, s3_bucket, "f/anim.gif")
    assert content_type == "image/gif" and img.format == "GIF" and getattr(img, "n_frames", 1) == 4


async def test_async_job_from_s3_into_local_storage(
    s3_app: App, s3_client: SnapshotClient, main_in_s3: tuple[str, str]
) -> None:
    bucket, key = main_in_s3
    out_bucket = f"loc-{uuid.uuid4().hex[:10]}"
    response = await s3_client.submit(
        submit(ref(bucket, key, S3_LOC), ref(out_bucket, "seq/{Count}.jpg", LOCAL_LOC), time=1000, interval=3, num=3)
    )
    final = await s3_client.wait(response.snapshot_job.id, timeout=60)
    assert final.state == "Success", final.message
    assert [i.time for i in final.images] == pytest.approx([1000, 4000, 7000], abs=0.05)
    written = sorted(p.name for p in (s3_app.settings.data_dir / out_bucket / "seq").iterdir())
    assert written == ["00001.jpg", "00002.jpg", "00003.jpg"]


async def test_async_job_from_local_storage_into_s3(
    s3_app: App, s3_client: SnapshotClient, admin: Any, s3_bucket: str, videos: dict[str, Video]
) -> None:
    in_bucket = f"loc-{uuid.uuid4().hex[:10]}"
    dest = s3_app.settings.data_dir / in_bucket / "clip.mp4"
    dest.parent.mkdir(parents=True)
    await asyncio.to_thread(dest.write_bytes, videos["main"].path.read_bytes())
    response = await s3_client.submit(
        submit(ref(in_bucket, "clip.mp4", LOCAL_LOC), ref(s3_bucket, "seq/{Count}.jpg", S3_LOC), interval=0, num=4)
    )
    final = await s3_client.wait(response.snapshot_job.id, timeout=60)
    assert final.state == "Success", final.message
    assert await keys(admin, s3_bucket) == [f"seq/{n:05d}.jpg" for n in range(1, 5)]
    assert await open_uploads(admin, s3_app, s3_bucket) == []


async def test_missing_object_and_bucket_are_not_found(
    s3_client: SnapshotClient, s3_bucket: str, main_in_s3: tuple[str, str]
) -> None:
    for inp, says in (
        (ref(s3_bucket, "nothing/here.mp4", S3_LOC), "does not exist in bucket"),
        (ref("s3t-no-such-bucket", "a.mp4", S3_LOC), "Bucket 's3t-no-such-bucket' does not exist"),
    ):
        with pytest.raises(MpsApiError) as caught:
            await s3_client.submit(submit(inp, ref(s3_bucket, "x.jpg", S3_LOC), time=1000))
        assert caught.value.status == grpc.StatusCode.NOT_FOUND
        assert caught.value.code == "InvalidParameter.ResourceNotFound"
        assert says in caught.value.message
        no_secrets(caught.value.message)


async def test_output_bucket_missing_fails_the_job_and_leaves_nothing(
    s3_client: SnapshotClient, main_in_s3: tuple[str, str]
) -> None:
    bucket, key = main_in_s3
    with pytest.raises(MpsApiError) as caught:
        await s3_client.submit(submit(ref(bucket, key, S3_LOC), ref("s3t-missing-out", "x.jpg", S3_LOC), time=1000))
    assert caught.value.code == "InvalidParameter.ResourceNotFound"
    assert "Output bucket 's3t-missing-out' does not exist" in caught.value.message


async def test_oversize_input_is_invalid_argument(
    s3_app: App, s3_client: SnapshotClient, main_in_s3: tuple[str, str]
) -> None:
    bucket, key = main_in_s3
    started = s3_app.engine.started
    with pytest.raises(MpsApiError) as caught:
        await s3_client.submit(submit(ref(bucket, key, TINY_LOC), ref(bucket, "x.jpg", TINY_LOC), time=1000))
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.code == "InvalidParameter"
    assert "max_input_bytes" in caught.value.message and "1000 bytes" in caught.value.message
    assert [v.field for v in caught.value.violations] == ["input.object"]
    assert s3_app.engine.started == started  # refused before any ffmpeg


async def test_access_denied_is_permission_denied(
    s3_client: SnapshotClient, faulty: FaultProxy, s3_bucket: str, main_in_s3: tuple[str, str]
) -> None:
    bucket, key = main_in_s3
    faulty.inject("403", 1, methods={"HEAD"})
    with pytest.raises(MpsApiError) as caught:
        await s3_client.submit(submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "x.jpg", S3_LOC), time=1000))
    assert caught.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.code == "PermissionDenied.ResourceAccess"
    no_secrets(caught.value.message)


async def test_failing_presigned_reads_leak_no_url(
    s3_app: App,
    s3_client: SnapshotClient,
    faulty: FaultProxy,
    admin: Any,
    s3_bucket: str,
    videos: dict[str, Video],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ffprobe and ffmpeg name the URL in their errors; none of it may reach the caller,
    the job record or the log."""
    caplog.set_level(logging.DEBUG)
    data = await asyncio.to_thread(videos["tiny"].path.read_bytes)
    await admin.put_object(Bucket=s3_bucket, Key="leak.mp4", Body=data)
    inp, out = ref(s3_bucket, "leak.mp4", S3_LOC), ref(s3_bucket, "o/{Count}.jpg", S3_LOC)
    port = str(faulty.port)
    messages = []
    # 1. The probe's reads are refused (HEAD passes, every GET gets 403 AccessDenied).
    faulty.inject("403", 50, methods={"GET"})
    with pytest.raises(MpsApiError) as caught:
        await s3_client.submit(submit(inp, out, time=1000))
    messages.append(caught.value.message)
    assert caught.value.code == "InvalidParameter.ResourceContentBad"
    faulty.clear()
    # 2. The probe succeeds (and is cached), then the snapshot's reads meet reset connections.
    assert (await s3_client.submit(submit(inp, out, time=1000))).snapshot_job.state == "Success"
    faulty.inject("reset", 50, methods={"GET"})
    with pytest.raises(MpsApiError) as caught:
        await s3_client.submit(submit(inp, out, time=2000))
    messages.append(caught.value.message)
    faulty.clear()
    jobs = (await s3_client.query([caught.value.job_id])).snapshot_job_list
    messages += [j.message for j in jobs]
    for message in messages:
        no_secrets(message, port)
        assert "Server returned" in message or "reset" in message.lower() or "Invalid data" in message, message
    no_secrets(caplog.text)


# -- faults --------------------------------------------------------------------------------

# (fault kind, how many, methods it hits, stall length): every one is within the retries.
RECOVERABLE = [
    ("503", 2, {"PUT", "POST"}, 0.0),
    ("500", 2, {"PUT", "POST"}, 0.0),
    ("reset", 2, {"PUT", "POST"}, 0.0),
    ("stall", 1, {"PUT"}, 30.0),  # read_timeout_s = 2: the client gives up and retries
    ("drop_response", 1, {"POST"}, 0.0),  # CreateMultipartUpload or Complete done, answer lost
    ("503", 1, {"GET"}, 0.0),  # ffmpeg reconnects on 5xx
    ("reset", 2, {"GET"}, 0.0),  # ... and on resets
    ("stall", 1, {"GET"}, 1.0),  # ... and when a read stalls, then drops
    ("503", 2, {"HEAD"}, 0.0),
]


@pytest.mark.parametrize(("kind", "times", "methods", "stall_s"), RECOVERABLE)
async def test_recoverable_faults_end_in_success_with_whole_objects(
    s3_app: App,
    s3_client: SnapshotClient,
    faulty: FaultProxy,
    admin: Any,
    s3_bucket: str,
    main_in_s3: tuple[str, str],
    kind: str,
    times: int,
    methods: set[str],
    stall_s: float,
) -> None:
    bucket, key = main_in_s3
    faulty.log.clear()
    faulty.inject(kind, times, methods=methods, stall_s=stall_s)
    # Width 1280: a JPEG above the 16 KiB multipart threshold, so it goes up in parts.
    response = await s3_client.submit(
        submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "f/{Count}.jpg", S3_LOC), time=5000, width=1280),
        timeout=60,
    )
    assert response.snapshot_job.state == "Success", response.snapshot_job.message
    assert faulty.faults_left() == 0, "the fault was never hit"
    assert any(action == kind for _, _, action in faulty.log)
    assert await keys(admin, s3_bucket) == ["f/00001.jpg"]
    img, _ = await object_image(admin, s3_bucket, "f/00001.jpg")
    assert img.size == (1280, 720)
    assert await open_uploads(admin, s3_app, s3_bucket) == []


async def test_persistent_write_faults_fail_sync_and_async_jobs_cleanly(
    s3_app: App,
    s3_client: SnapshotClient,
    faulty: FaultProxy,
    admin: Any,
    s3_bucket: str,
    main_in_s3: tuple[str, str],
) -> None:
    bucket, key = main_in_s3
    # Every upload answers 503 SlowDown; aborts (DELETE) get through.
    faulty.inject("503", 10_000, methods={"PUT"})
    with pytest.raises(MpsApiError) as caught:
        await s3_client.submit(
            submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "sync.jpg", S3_LOC), time=1000, width=1280), timeout=60
        )
    assert caught.value.code == "TransientNetWorkError"
    assert caught.value.status == grpc.StatusCode.UNAVAILABLE
    assert "SlowDown" in caught.value.message
    no_secrets(caught.value.message)
    # An async job whose second image meets reset connections only: the first one is removed again.
    faulty.clear()
    faulty.inject("reset", 10_000, methods={"PUT"}, after=1)
    response = await s3_client.submit(
        submit(ref(bucket, key, S3_LOC), ref(s3_bucket, "seq/{Count}.jpg", S3_LOC), time=1000, interval=2, num=3)
    )
    final = await s3_client.wait(response.snapshot_job.id, timeout=90)
    assert final.state == "Fail" and final.code == "TransientNetWorkError", final.message
    no_secrets(final.message)
    faulty.clear()
    assert await keys(admin, s3_bucket) == []
    assert await open_uploads(admin, s3_app, s3_bucket) == []


async def test_async_job_through_mixed_faults_succeeds_whole(
    s3_app: App,
    s3_client: SnapshotClient,
    faulty: FaultProxy,
    admin: Any,
    s3_bucket: str,
    main_in_s3: tuple[str, str],
) -> None:
    bucket, key = main_in_s3
    faulty.inject("503", 1, methods={"PUT", "POST"})
    faulty.inject("reset", 1, methods={"PUT"}, after=2)
    faulty.inject("500", 1, methods={"GET"}, after=3)
    response = await s3_client.submit(
        submit(
            ref(bucket, key, S3_LOC),
            ref(s3_bucket, "mix/{Count}.jpg", S3_LOC),
            time=500,
            interval=2,
            num=4,
            width=1280,
        )
    )
    final = await s3_client.wait(response.snapshot_job.id, timeout=90)
    assert final.state == "Success", final.message
    assert faulty.faults_left() == 0
    assert await keys(admin, s3_bucket) == [f"mix/{n:05d}.jpg" for n in range(1, 5)]
    assert await open_uploads(admin, s3_app, s3_bucket) == []


# -- the store itself ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def store(faulty: FaultProxy) -> AsyncIterator[S3Store]:
    s = S3Store(
        _s3_options(
            endpoint_url=faulty.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET,
            read_timeout_s=2.0,
            connect_timeout_s=2.0,
            max_attempts=3,
            multipart_threshold_bytes=5 * 1024 * 1024,
            multipart_part_bytes=5 * 1024 * 1024,
            label="s3-*",
        )
    )
    await s.open()
    yield s
    await s.close()


@pytest.fixture(scope="session")
def twelve_mib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blob") / "blob.bin"
    path.write_bytes(uuid.uuid4().bytes * (12 * 1024 * 1024 // 16))
    return path


async def test_multipart_upload_survives_faults_on_its_parts(
    store: S3Store, faulty: FaultProxy, admin: Any, s3_bucket: str, twelve_mib: Path, s3_app: App
) -> None:
    faulty.inject("503", 1, methods={"PUT"}, after=1)  # part 2 ...
    faulty.inject("reset", 1, methods={"PUT"}, after=1)  # ... and its first retry
    faulty.inject("drop_response", 1, methods={"POST"}, query_contains="uploadId=")  # Complete's answer lost
    await store.put_file(s3_bucket, "big/blob.bin", twelve_mib, "application/octet-stream")
    assert faulty.faults_left() == 0
    got = await admin.get_object(Bucket=s3_bucket, Key="big/blob.bin")
    assert await got["Body"].read() == await asyncio.to_thread(twelve_mib.read_bytes)
    assert got["ETag"].endswith('-3"')  # three parts
    assert got["ContentType"] == "application/octet-stream"
    assert (await admin.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads", []) == []


async def test_failed_or_cancelled_multipart_upload_is_aborted(
    store: S3Store, faulty: FaultProxy, admin: Any, s3_bucket: str, twelve_mib: Path
) -> None:
    faulty.inject("503", 10_000, methods={"PUT"}, after=1)  # part 1 goes up, then nothing
    with pytest.raises(TransientError) as caught:
        await store.put_file(s3_bucket, "big/failed.bin", twelve_mib, "application/octet-stream")
    no_secrets(caught.value.message, str(faulty.port))
    faulty.clear()
    assert (await admin.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads", []) == []
    # Cancelled while part 2 stalls: the abort runs in the background, without holding the caller.
    faulty.log.clear()
    faulty.inject("stall", 1, methods={"PUT"}, after=1, stall_s=30)
    task = asyncio.create_task(store.put_file(s3_bucket, "big/cancelled.bin", twelve_mib, "video/mp4"))
    async with asyncio.timeout(30):
        while not any(action == "stall" for _, _, action in faulty.log):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.idle()
    assert (await admin.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads", []) == []
    assert await keys(admin, s3_bucket) == []


async def test_head_input_handle_and_delete(store: S3Store, admin: Any, s3_bucket: str) -> None:
    await admin.put_object(Bucket=s3_bucket, Key="a/b.mp4", Body=b"x" * 100)
    info = await store.head(s3_bucket, "a/b.mp4")
    assert info.size == 100 and info.version
    await admin.put_object(Bucket=s3_bucket, Key="a/b.mp4", Body=b"y" * 101)
    assert (await store.head(s3_bucket, "a/b.mp4")).version != info.version
    handle = await store.input_handle(s3_bucket, "a/b.mp4")
    assert handle.protocols == ("http", "tcp")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handle.url).query)
    assert query["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in query
    await store.delete(s3_bucket, "a/b.mp4")
    await store.delete(s3_bucket, "a/b.mp4")  # idempotent
    await store.delete("s3t-no-such-bucket", "a/b.mp4")
    with pytest.raises(ResourceNotFound):
        await store.head(s3_bucket, "a/b.mp4")
    https = _s3_options(endpoint_url="https://s3.example.com", presign_expiry_s=60)
    assert https.protocols == ("https", "tls", "tcp")


async def test_credentials_from_environment_and_profiles_by_role(
    faulty: FaultProxy, admin: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[reader]\naws_access_key_id = AKIAREADER\naws_secret_access_key = reader-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    await admin.put_object(Bucket=s3_bucket, Key="k.mp4", Body=b"z" * 10)
    store = S3Store(
        _s3_options(
            endpoint_url=faulty.endpoint,
            profiles_by_role=(("acs:ram::1:role/reader", "reader"),),
            label="s3-*",
        )
    )
    await store.open()
    try:
        faulty.log.clear()
        assert (await store.head(s3_bucket, "k.mp4")).size == 10  # environment credentials
        reader = store.for_role("acs:ram::1:role/reader")
        assert store.for_role("acs:ram::1:role/reader") is reader
        assert (await reader.head(s3_bucket, "k.mp4")).size == 10
        url = (await reader.input_handle(s3_bucket, "k.mp4")).url
        assert "AKIAREADER" in urllib.parse.unquote(url)
        assert "AKIAFROMENV" in urllib.parse.unquote((await store.input_handle(s3_bucket, "k.mp4")).url)
        assert store.for_role("") is store
        with pytest.raises(PermissionDenied):
            store.for_role("acs:ram::1:role/other")
    finally:
        await store.close()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    nothing = S3Store(_s3_options(endpoint_url=faulty.endpoint, label="s3-*"))
    with pytest.raises(ValueError, match="no S3 credentials found"):
        await nothing.open()


# -- bytes read from storage -------------------------------------------------------------------


@dataclass(frozen=True)
class BigVideo:
    path: Path
    size: int
    moov_size: int
    keyframe_s: float  # a keyframe near the end


def _top_level_boxes(path: Path) -> list[tuple[bytes, int, int]]:
    boxes, pos, size = [], 0, path.stat().st_size
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            header = f.read(16)
            length, kind = struct.unpack(">I4s", header[:8])
            if length == 1:
                length = struct.unpack(">Q", header[8:16])[0]
            boxes.append((kind, pos, length))
            pos += length
    return boxes


@pytest.fixture(scope="session")
def big_video(media_dir: Path) -> BigVideo:
    """A 316 MB, 400-s 1080p30 MP4 (6 Mbit/s, 2-s GOP, AAC) with its moov at the end.

    A 4-s clip is encoded once and repeated by stream copy, so this takes about a second.
    """
    clip, big = media_dir / "big-clip.mp4", media_dir / "big-moov-at-end.mp4"
    ffmpeg(
        *("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30,noise=alls=8:allf=t+u"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "4", "-map", "0:v", "-map", "1:a"),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-sc_threshold", "0"),
        *("-b:v", "6M", "-maxrate", "8M", "-bufsize", "12M", "-g", "60", "-keyint_min", "60"),
        *("-c:a", "aac", "-b:a", "128k", str(clip)),
    )
    ffmpeg("-stream_loop", "99", "-i", str(clip), "-c", "copy", str(big))
    boxes = _top_level_boxes(big)
    assert boxes[-1][0] == b"moov", boxes
    packets = subprocess.run(
        [
            *("ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "385%"),
            *("-show_entries", "packet=pts_time,flags", "-of", "csv=p=0", str(big)),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    keyframes = [float(p.split(",")[0]) for p in packets if ",K" in p]
    size = big.stat().st_size
    assert size >= 300_000_000
    return BigVideo(big, size, boxes[-1][2], keyframes[-2])


@pytest.fixture(scope="session")
def big_in_s3(moto: MotoServer, big_video: BigVideo) -> tuple[str, str]:
    client = boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    client.create_bucket(Bucket="s3t-big")
    client.upload_file(str(big_video.path), "s3t-big", "big.mp4")
    return "s3t-big", "big.mp4"


@pytest.mark.slow
async def test_snapshot_near_the_end_of_a_big_object_reads_under_one_percent(
    s3_app: App,
    s3_client: SnapshotClient,
    counting: CountingProxy,
    big_video: BigVideo,
    big_in_s3: tuple[str, str],
    admin: Any,
) -> None:
    bucket, key = big_in_s3
    out_bucket = f"s3t-{uuid.uuid4().hex[:12]}"
    await admin.create_bucket(Bucket=out_bucket)
    store = s3_app.router.for_location(BIG_LOC, "input.location")
    handle = await store.input_handle(bucket, key)
    # The probe alone (the job's own probe comes out of the same numbers, see below).
    counting.reset()
    info = await probe_mod.probe(
        s3_app.engine.ffprobe, handle.url, handle.protocols, s3_app.engine.limits(60.0), s3_app.engine.probe_limits
    )
    probe = counting.reset()
    assert info.duration_s > 399
    # The whole job: HEAD, probe, snapshot (one frame after a keyframe 4 s before the end), PUT.
    time_ms = int(big_video.keyframe_s * 1000) + 40
    response = await s3_client.submit(
        submit(ref(bucket, key, BIG_LOC), ref(out_bucket, "end.jpg", BIG_LOC), time=time_ms, width=640)
    )
    job = response.snapshot_job
    total = counting.reset()
    assert job.state == "Success", job.message
    gets = [r for r in total.requests if r.startswith("GET")]
    share = total.to_client / big_video.size
    print(
        f"\nbytes read: object {big_video.size:,} B (moov {big_video.moov_size:,} B at the end); "
        f"probe alone {probe.to_client:,} B in {len(probe.requests)} requests; "
        f"whole job {total.to_client:,} B ({share:.3%}) in {len(total.requests)} requests: {gets}"
    )
    assert share < 0.01, (total.to_client, total.requests)
    assert probe.to_client < total.to_client
