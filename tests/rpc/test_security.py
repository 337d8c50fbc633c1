"""Authentication, RAM-style authorization, rate limits and gRPC limits through a real
server: every refusal has its MPS code and status, and the server stays SERVING."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mps_snapshot_client import MpsApiError, SnapshotClient
from mps_snapshot_client.api import pipeline_service_pb2 as pps
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_client.api import snapshot_service_pb2_grpc as sps_grpc
from mps_snapshot_client.auth import derive_key, signature_metadata
from mps_snapshot_server.app import App
from mps_snapshot_server.config import PrincipalConfig, StatementConfig, load
from mps_snapshot_server.security.authn import Authenticator, Principal
from mps_snapshot_server.security.policy import ALLOW_ALL, Effect, Statement, is_allowed
from mps_snapshot_server.security.ratelimit import RateLimiter
from tests.conftest import put
from tests.helpers.media import Video

SECRETS = {
    "AKADMIN": "admin-secret",
    "AKNOBODY": "nobody-secret",
    "AKDENIER": "denier-secret",
    "AKREADER": "reader-secret",
    "AKSCOPED": "scoped-secret",
    "AKFLOOD": "flood-secret",
    "AKCALM": "calm-secret",
}


def principal(name: str, key: str, *statements: StatementConfig) -> PrincipalConfig:
    return PrincipalConfig(
        name=name, access_key_id=key, access_key_hash=derive_key(SECRETS[key]), statements=statements
    )


PRINCIPALS = (
    principal("admin", "AKADMIN", StatementConfig("Allow", ("mts:*",))),
    principal("nobody", "AKNOBODY"),
    principal("denier", "AKDENIER", StatementConfig("Allow", ("mts:*",)), StatementConfig("Deny", ("mts:*",))),
    principal("reader", "AKREADER", StatementConfig("Allow", ("mts:Query*", "mts:SearchPipeline"))),
    principal(
        "scoped",
        "AKSCOPED",
        StatementConfig("Allow", ("mts:SubmitSnapshotJob",), ("bucket/allowed-*", "pipeline/*")),
        StatementConfig("Deny", ("mts:*",), ("bucket/allowed-secret",)),
    ),
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    data = tmp_path_factory.mktemp("secured")
    settings = load(
        env={},
        listen="127.0.0.1:0",
        data_dir=data,
        principals=PRINCIPALS,
        rate_submit=1000,
        rate_query=1000,
        rate_pipeline=1000,
        max_watch_streams=2,
    )
    app = App(settings)
    await app.start()
    yield app
    await app.stop(0)


def client_for(app: App, key: str, mode: str = "hmac") -> SnapshotClient:
    return SnapshotClient(f"127.0.0.1:{app.port}", access_key_id=key, access_key_secret=SECRETS[key], auth_mode=mode)


async def expect(coro: Any, status: grpc.StatusCode, code: str) -> MpsApiError:
    with pytest.raises(MpsApiError) as caught:
        await coro
    assert (caught.value.status, caught.value.code) == (status, code), caught.value.message
    return caught.value


UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def test_access_keys(secured: App) -> None:
    for mode in ("hmac", "bearer"):
        async with client_for(secured, "AKADMIN", mode) as c:
            assert (await c.search_pipelines()).total_count >= 1
    async with SnapshotClient(f"127.0.0.1:{secured.port}") as anonymous:
        await expect(anonymous.search_pipelines(), UNAUTH, "MissingAccessKeyId")
        assert await anonymous.health() == "SERVING"  # health stays open
    async with SnapshotClient(f"127.0.0.1:{secured.port}", access_key_id="AKNOPE", access_key_secret="x") as c:
        await expect(c.search_pipelines(), UNAUTH, "InvalidAccessKeyId.NotFound")
    for mode in ("hmac", "bearer"):
        async with SnapshotClient(
            f"127.0.0.1:{secured.port}", access_key_id="AKADMIN", access_key_secret="wrong", auth_mode=mode
        ) as c:
            await expect(c.search_pipelines(), UNAUTH, "SignatureDoesNotMatch")


async def raw_search(app: App, metadata: list[tuple[str, str]]) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        from mps_snapshot_client.api import pipeline_service_pb2_grpc as pps_grpc

        stub = pps_grpc.PipelineServiceStub(channel)
        try:
            await stub.SearchPipeline(pps.SearchPipelineRequest(), metadata=metadata, timeout=5)
        except aio.AioRpcError as err:
            from mps_snapshot_client.errors import from_rpc_error

            raise from_rpc_error(err) from None


async def test_signatures_timestamps_and_nonces(secured: App) -> None:
    method = "/mps.snapshot.v1.PipelineService/SearchPipeline"
    good = signature_metadata("AKADMIN", SECRETS["AKADMIN"], method, nonce="n-1")
    await raw_search(secured, good)
    await expect(raw_search(secured, good), UNAUTH, "SignatureNonceUsed")  # replayed
    stale = signature_metadata(
        "AKADMIN", SECRETS["AKADMIN"], method, now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=16)
    )
    await expect(raw_search(secured, stale), UNAUTH, "InvalidTimeStamp.Expired")
    future = signature_metadata(
        "AKADMIN", SECRETS["AKADMIN"], method, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16)
    )
    await expect(raw_search(secured, future), UNAUTH, "InvalidTimeStamp.Expired")
    other_method = signature_metadata("AKADMIN", SECRETS["AKADMIN"], "/mps.snapshot.v1.PipelineService/AddPipeline")
    await expect(raw_search(secured, other_method), UNAUTH, "SignatureDoesNotMatch")  # bound to the method
    # One character changed (a signature that already starts with "A" gets a "B").
    tampered = [
        (k, v if k != "x-mps-signature" else ("B" if v.startswith("A") else "A") + v[1:])
        for k, v in signature_metadata("AKADMIN", SECRETS["AKADMIN"], method)
    ]
    await expect(raw_search(secured, tampered), UNAUTH, "SignatureDoesNotMatch")
    await expect(raw_search(secured, [("x-mps-signature", "abc")]), UNAUTH, "IncompleteSignature")


def test_authenticator_unit() -> None:
    clock = [1_800_000_000.0]
    principals = [Principal("p", "AK", derive_key("s"), statements=ALLOW_ALL)]
    auth = Authenticator(principals, clock=lambda: clock[0])
    now = dt.datetime.fromtimestamp(clock[0], dt.UTC)
    md = dict(signature_metadata("AK", "s", "/m", now=now, nonce="x"))
    assert auth.authenticate(md, "/m").name == "p"
    clock[0] += 14 * 60
    md2 = dict(signature_metadata("AK", "s", "/m", now=now, nonce="y"))
    assert auth.authenticate(md2, "/m").name == "p"  # 14 minutes off: still fine
    assert Authenticator([]).authenticate({}, "/m").name == "anonymous"


def test_policy_evaluation() -> None:
    allow_query = Statement(Effect.ALLOW, ("mts:Query*",))
    deny_bucket = Statement(Effect.DENY, ("mts:*",), ("bucket/secret",))
    allow_all = Statement(Effect.ALLOW, ("mts:*",))
    assert is_allowed((allow_query,), "mts:QuerySnapshotJobList", ("*",))
    assert not is_allowed((allow_query,), "mts:SubmitSnapshotJob", ("*",))
    assert not is_allowed((), "mts:QuerySnapshotJobList", ("*",))  # deny by default
    assert is_allowed((allow_all, deny_bucket), "mts:SubmitSnapshotJob", ("bucket/public",))
    assert not is_allowed((allow_all, deny_bucket), "mts:SubmitSnapshotJob", ("bucket/public", "bucket/secret"))


RPCS = [
    "SubmitSnapshotJob",
    "QuerySnapshotJobList",
    "WatchSnapshotJob",
    "CancelSnapshotJob",
    "AddPipeline",
    "UpdatePipeline",
    "QueryPipelineList",
    "SearchPipeline",
    "DeletePipeline",
]


async def call_rpc(c: SnapshotClient, rpc: str, app: App) -> None:
    default = app.pipelines.default.id
    missing_job = "f" * 32
    if rpc == "SubmitSnapshotJob":
        await c.submit(
            sps.SubmitSnapshotJobRequest(
                input=res.OSSFile(bucket="allowed-in", object="none.mp4"),
                snapshot_config=res.SnapshotConfig(output_file=res.OSSFile(bucket="allowed-out", object="o.jpg")),
            )
        )
    elif rpc == "QuerySnapshotJobList":
        await c.query(pipeline_id=default)
    elif rpc == "WatchSnapshotJob":
        _ = [e async for e in c.watch(missing_job)]
    elif rpc == "CancelSnapshotJob":
        await c.cancel(missing_job)
    elif rpc == "AddPipeline":
        await c.add_pipeline("")
    elif rpc == "UpdatePipeline":
        await c.update_pipeline(default, name="", state="Active")
    elif rpc == "QueryPipelineList":
        await c.query_pipelines([default])
    elif rpc == "SearchPipeline":
        await c.search_pipelines()
    elif rpc == "DeletePipeline":
        await c.delete_pipeline(default)


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(("key", "allowed"), [("AKADMIN", True), ("AKNOBODY", False), ("AKDENIER", False)])
async def test_policy_table(secured: App, rpc: str, key: str, allowed: bool) -> None:
    async with client_for(secured, key) as c:
        try:
            await call_rpc(c, rpc, secured)
        except MpsApiError as err:
            if allowed:
                # Past authorization the call fails on its (deliberately bad) content.
                assert err.status != grpc.StatusCode.PERMISSION_DENIED, err.message
            else:
                assert (err.status, err.code) == (grpc.StatusCode.PERMISSION_DENIED, "Forbidden.RAM"), err.message
        else:
            assert allowed


async def test_wildcard_actions_and_resources(secured: App, data_dir: Path, videos: dict[str, Video]) -> None:
    async with client_for(secured, "AKREADER") as c:
        await c.query_pipelines([secured.pipelines.default.id])
        await expect(c.add_pipeline("x"), grpc.StatusCode.PERMISSION_DENIED, "Forbidden.RAM")
    put(secured.settings.data_dir, "allowed-in", "v.mp4", videos["tiny"].path)
    async with client_for(secured, "AKSCOPED") as c:

        def req(out_bucket: str) -> sps.SubmitSnapshotJobRequest:
            return sps.SubmitSnapshotJobRequest(
                input=res.OSSFile(bucket="allowed-in", object="v.mp4"),
                snapshot_config=res.SnapshotConfig(output_file=res.OSSFile(bucket=out_bucket, object="o.jpg")),
            )

        assert (await c.submit(req("allowed-out"))).snapshot_job.state == "Success"
        await expect(c.submit(req("other-out")), grpc.StatusCode.PERMISSION_DENIED, "Forbidden.RAM")
        await expect(c.submit(req("allowed-secret")), grpc.StatusCode.PERMISSION_DENIED, "Forbidden.RAM")
    assert not (secured.settings.data_dir / "other-out").exists()


async def test_reflection_requires_authentication(secured: App) -> None:
    async def services(metadata: list[tuple[str, str]]) -> set[str]:
        async with aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names: set[str] = set()
            async for response in stub.ServerReflectionInfo(requests(), metadata=metadata, timeout=5):
                names |= {s.name for s in response.list_services_response.service}
            return names

    with pytest.raises(aio.AioRpcError) as caught:
        await services([])
    assert caught.value.code() == UNAUTH
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert "mps.snapshot.v1.SnapshotService" in await services(
        signature_metadata("AKREADER", SECRETS["AKREADER"], method)
    )


async def test_watch_streams_are_capped_per_principal(secured: App, videos: dict[str, Video]) -> None:
    put(secured.settings.data_dir, "allowed-in", "slow.mp4", videos["hd"].path)
    async with client_for(secured, "AKADMIN") as c:
        pipeline = await c.add_pipeline("held")
        await c.update_pipeline(pipeline.id, name="held", state="Paused")
        job = (
            await c.submit(
                sps.SubmitSnapshotJobRequest(
                    input=res.OSSFile(bucket="allowed-in", object="slow.mp4"),
                    pipeline_id=pipeline.id,
                    snapshot_config=res.SnapshotConfig(
                        output_file=res.OSSFile(bucket="allowed-out", object="w.jpg"), num=1
                    ),
                )
            )
        ).snapshot_job
        streams = [c.snapshots.WatchSnapshotJob(sps.WatchSnapshotJobRequest(snapshot_job_id=job.id)) for _ in range(2)]
        for s in streams:
            await s.read()  # the initial event: both streams are open
        await expect(c.wait(job.id, timeout=5), grpc.StatusCode.RESOURCE_EXHAUSTED, "Throttling.WatchStreams")
        for s in streams:
            s.cancel()
        await asyncio.sleep(0.2)
        await c.cancel(job.id)
        assert (await c.wait(job.id, timeout=5)).state == "Cancelled"  # a slot is free again
        await c.delete_pipeline(pipeline.id)


async def test_oversized_and_undecodable_requests(secured: App) -> None:
    async with client_for(secured, "AKADMIN") as c:
        big = sps.SubmitSnapshotJobRequest(user_data="x" * (2 * 1024 * 1024))
        with pytest.raises(MpsApiError) as caught:
            await c.submit(big)
        assert caught.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
            call = channel.unary_unary(
                "/mps.snapshot.v1.SnapshotService/QuerySnapshotJobList",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            metadata = signature_metadata(
                "AKADMIN", SECRETS["AKADMIN"], "/mps.snapshot.v1.SnapshotService/QuerySnapshotJobList"
            )
            with pytest.raises(aio.AioRpcError) as raw:
                await call(b"\xff\xff\xff\xff garbage", metadata=metadata, timeout=5)
            assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "could not be decoded" in (raw.value.details() or "")
            assert "Traceback" not in (raw.value.details() or "")
        assert await c.health() == "SERVING"


def test_non_loopback_needs_auth_or_an_explicit_flag(tmp_path: Path) -> None:
    from mps_snapshot_server.app import check_exposure

    with pytest.raises(SystemExit, match="without authentication"):
        check_exposure(load(env={}, listen="0.0.0.0:50051", data_dir=tmp_path))
    check_exposure(load(env={}, listen="0.0.0.0:50051", data_dir=tmp_path, allow_insecure=True))
    check_exposure(load(env={}, listen="0.0.0.0:50051", data_dir=tmp_path, principals=PRINCIPALS))
    check_exposure(load(env={}, listen="127.0.0.1:50051", data_dir=tmp_path))
    check_exposure(load(env={}, listen="[::1]:50051", data_dir=tmp_path))


def test_token_bucket_with_a_fake_clock() -> None:
    now = [0.0]
    limiter = RateLimiter({"submit": 50}, clock=lambda: now[0])
    granted = sum(limiter.check("a", "submit") == 0 for _ in range(100))
    assert granted == 50  # the burst: one second's worth
    wait = limiter.check("a", "submit")
    assert wait == pytest.approx(0.02)
    now[0] += 1.0
    assert sum(limiter.check("a", "submit") == 0 for _ in range(100)) == 50
    assert limiter.check("b", "submit") == 0  # another principal has its own bucket


async def test_load_one_principal_floods_another_is_unaffected(tmp_path: Path) -> None:
    """100 Submits/s for 10 s from one principal, 40/s from another, on loopback."""
    principals = (
        principal("flood", "AKFLOOD", StatementConfig("Allow", ("mts:*",))),
        principal("calm", "AKCALM", StatementConfig("Allow", ("mts:*",))),
    )
    app = App(load(env={}, listen="127.0.0.1:0", data_dir=tmp_path, principals=principals))
    await app.start()
    invalid = sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(bucket="b-1", object="v.mp4"),
        snapshot_config=res.SnapshotConfig(output_file=res.OSSFile(bucket="b-1", object="o.jpg"), width=1),
    )
    results: dict[str, list[tuple[bool, float]]] = {"flood": [], "calm": []}

    async def one(stub: sps_grpc.SnapshotServiceStub, key: str, name: str) -> None:
        method = "/mps.snapshot.v1.SnapshotService/SubmitSnapshotJob"
        started = time.perf_counter()
        try:
            await stub.SubmitSnapshotJob(invalid, metadata=signature_metadata(key, SECRETS[key], method), timeout=5)
            throttled = False
        except aio.AioRpcError as err:
            throttled = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        results[name].append((throttled, time.perf_counter() - started))

    async def sender(key: str, name: str, rate: float, seconds: float) -> None:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = sps_grpc.SnapshotServiceStub(channel)
            start = time.perf_counter()
            tasks = []
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(stub, key, name)))
            await asyncio.gather(*tasks)

    try:
        await asyncio.gather(sender("AKFLOOD", "flood", 100, 10), sender("AKCALM", "calm", 40, 10))
    finally:
        await app.stop(0)
    accepted = sum(not t for t, _ in results["flood"])
    assert 550 * 0.95 <= accepted <= 550 * 1.05, accepted  # 50/s for 10 s, plus the 50-call burst
    assert all(not t for t, _ in results["calm"])  # the calm caller never throttled
    for name, rows in results.items():
        latencies = sorted(lat for _, lat in rows)
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        print(f"{name}: {len(rows)} calls, accepted {sum(not t for t, _ in rows)}, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        assert p99 < 500
