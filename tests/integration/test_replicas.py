"""Several replicas on one PostgreSQL and one S3-compatible server (moto), as real
processes: jobs spread over replicas; kill -9 mid-job loses nothing and runs nothing to
completion twice; a replica frozen past its lease writes nothing once resumed; pipeline
limits, pauses and rate limits hold cluster-wide; watch and cancel work across replicas.
Plus the start-up refusals: a second server on one data folder, local storage with
several replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from botocore.config import Config

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_client.auth import derive_key, signature_metadata
from mps_snapshot_client.errors import MpsApiError, ThrottlingError
from tests.helpers.children import ServerProcess, run_child
from tests.helpers.media import Video
from tests.helpers.pgutil import temp_database
from tests.helpers.s3util import MotoServer
from tests.integration.test_async_jobs import live_ffmpeg, submit_request

BUCKET = "shared"
pytestmark = pytest.mark.timeout(240)


class Replica(ServerProcess):
    """A server process whose log is kept (to count what each replica did)."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        super().__init__(data_dir, **settings)
        self.log: list[str] = []

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ended(self, job_id: str) -> int:
        return sum(1 for line in self.log if f"job {job_id} ended " in line)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto-replicas"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(moto: MotoServer, slow_video: Video, videos: dict[str, Video]) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(slow_video.path), BUCKET, "in/slow.mp4")
    client.upload_file(str(videos["tiny"].path), BUCKET, "in/tiny.mp4")
    return client


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Path:
    path = tmp_path_factory.mktemp("replica-config") / "replica.toml"
    path.write_text(
        "[[storage]]\n"
        'location = "*"\n'
        'kind = "s3"\n'
        f'endpoint_url = "{moto.endpoint}"\n'
        'access_key_id = "test"\n'
        'secret_access_key = "test"\n'
    )
    return path


@pytest_asyncio.fixture
async def dsn() -> AsyncIterator[str]:
    async with temp_database() as url:
        yield url


class Cluster:
    def __init__(self, tmp_path: Path, dsn: str, config_file: Path) -> None:
        self.tmp_path = tmp_path
        self.dsn = dsn
        self.config_file = config_file
        self.replicas: list[Replica] = []

    async def start(self, count: int, **settings: str) -> list[Replica]:
        base = {
            "database_url": self.dsn,
            "config": str(self.config_file),
            "lease_s": "2",
            "replica_jobs": "1",
            "max_ffmpeg_processes": "1",
            "shutdown_grace_s": "1",
        }
        new = [
            Replica(self.tmp_path / f"replica{len(self.replicas) + n}", **{**base, **settings}) for n in range(count)
        ]
        await asyncio.gather(*(r.start() for r in new))
        self.replicas += new
        return new

    async def stop(self) -> None:
        for n, replica in enumerate(self.replicas):  # shown by pytest when the test fails
            print(f"--- replica {n} (pid {replica.proc.pid if replica.proc else '-'}) log tail")
            print("".join(replica.log[-40:]))
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(replica.pid, signal.SIGCONT)
                await replica.kill(signal.SIGKILL)

    def owner_of(self, lease_owner: str) -> Replica:
        pid = int(lease_owner.split("-")[-2])
        return next(r for r in self.replicas if r.pid == pid)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path, dsn: str, config_file: Path, s3: Any) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, dsn, config_file)
    try:
        yield c
    finally:
        await c.stop()


async def rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def listing(s3: Any, prefix: str) -> dict[str, tuple[str, Any]]:
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in found}


def job_request(prefix: str, num: int, pipeline_id: str = "") -> sps.SubmitSnapshotJobRequest:
    # Exact frames 2 s apart in a 300-frame GOP: every image costs a real decode.
    return submit_request(BUCKET, "in/slow.mp4", f"{prefix}/{{Count}}.jpg", pipeline_id, time=500, interval=2, num=num)


async def until(predicate: Any, timeout: float, step: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls processes and the database
            await asyncio.sleep(step)


async def test_jobs_spread_and_kill_9_loses_nothing_and_runs_nothing_twice(cluster: Cluster, s3: Any) -> None:
    replicas = await cluster.start(3)
    clients = [SnapshotClient(f"127.0.0.1:{r.port}", timeout=30) for r in replicas]
    try:
        ids = []
        for n in range(9):
            job = (await clients[n % 3].submit(job_request(f"spread{n}", 4))).snapshot_job
            ids.append(job.id)

        async def victim_busy() -> bool:
            return bool(live_ffmpeg(str(replicas[0].data_dir)))

        await until(victim_busy, 60, 0.01)
        held = await rows(
            cluster.dsn,
            "SELECT id FROM jobs WHERE state = 'Snapshoting' AND lease_owner LIKE $1",
            f"%-{replicas[0].pid}-%",
        )
        assert len(held) == 1
        killed_job = held[0]["id"]
        await replicas[0].kill(signal.SIGKILL)
        finals = [await clients[1 + n % 2].wait(job_id, timeout=180) for n, job_id in enumerate(ids)]
        assert [f.state for f in finals] == ["Success"] * 9, [f.message for f in finals]
        for n, final in enumerate(finals):
            assert final.count == 4
            assert sorted(listing(s3, f"spread{n}/")) == [f"spread{n}/{i:05d}.jpg" for i in range(1, 5)]
        assert [f.attempts for f in finals if f.id == killed_job] == [2]
        # Ran to completion once: exactly one replica logged each job's end.
        assert [sum(r.ended(job_id) for r in replicas) for job_id in ids] == [1] * 9
        finishers = {
            cluster.owner_of(r["lease_owner"]).pid for r in await rows(cluster.dsn, "SELECT lease_owner FROM jobs")
        }
        assert len(finishers) == 2  # the two survivors shared the work
    finally:
        for c in clients:
            await c.close()


async def test_a_notification_owed_by_a_dead_replica_is_sent_by_another(cluster: Cluster, s3: Any) -> None:
    """The replica that ended a job dies while delivering its notification (the endpoint
    hangs on the first request): once the delivery window has passed, another replica sends
    the same message, and the job records it as delivered."""
    requests: list[tuple[str, str]] = []
    first = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        requests.append((body["JobId"], request.headers.get("X-Mps-Message-Id", "")))
        if len(requests) == 1:
            first.set()
            await asyncio.sleep(3600)  # never answers: its sender is killed meanwhile
        return web.Response(status=204)

    application = web.Application()
    application.router.add_post("/mns", handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/mns"
    replicas = await cluster.start(2, notify_attempts="1", notify_backoff_s="0.1")
    clients = [SnapshotClient(f"127.0.0.1:{r.port}", timeout=30) for r in replicas]
    try:
        pipeline = await clients[0].add_pipeline("notified", notify_config=res.NotifyConfig(http_url=url))
        job = (await clients[0].submit(job_request("owed", 1, pipeline.id))).snapshot_job
        async with asyncio.timeout(60):
            await first.wait()
        (held,) = await rows(cluster.dsn, "SELECT lease_owner, state FROM jobs WHERE id = $1", job.id)
        assert held["state"] == "Success"
        sender = cluster.owner_of(held["lease_owner"])
        survivor = next(r for r in replicas if r is not sender)
        await sender.kill(signal.SIGKILL)
        started = time.monotonic()
        client = clients[replicas.index(survivor)]

        async def delivered() -> bool:
            return (await client.get(job.id)).mns_message_result.message_id != ""

        await until(delivered, 60, 0.2)
        # One delivery window (1 attempt of 10 s, plus the lease) passed before the resend.
        assert time.monotonic() - started < 40
        assert [j for j, _ in requests] == [job.id, job.id]
        assert requests[0][1] == requests[1][1] == (await client.get(job.id)).mns_message_result.message_id
        assert any("sending the notification another replica owed" in line for line in survivor.log)
    finally:
        for c in clients:
            await c.close()
        await runner.cleanup()


async def test_a_replica_frozen_past_its_lease_writes_nothing(cluster: Cluster, s3: Any) -> None:
    replicas = await cluster.start(2)
    async with SnapshotClient(f"127.0.0.1:{replicas[0].port}", timeout=30) as c:
        job = (await c.submit(job_request("frozen", 12))).snapshot_job

        async def claimed() -> bool:
            (r,) = await rows(cluster.dsn, "SELECT lease_owner FROM jobs WHERE id = $1", job.id)
            return r["lease_owner"] is not None

        await until(claimed, 60)
        (row,) = await rows(cluster.dsn, "SELECT lease_owner FROM jobs WHERE id = $1", job.id)
        frozen = cluster.owner_of(row["lease_owner"])

        async def decoding() -> bool:
            return bool(live_ffmpeg(str(frozen.data_dir)))

        await until(decoding, 60, 0.01)
        other = next(r for r in replicas if r is not frozen)
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            (state,) = await rows(cluster.dsn, "SELECT state FROM jobs WHERE id = $1", job.id)
            assert state["state"] == "Snapshoting"  # frozen mid-job
            async with SnapshotClient(f"127.0.0.1:{other.port}", timeout=30) as c2:
                final = await c2.wait(job.id, timeout=120)
            assert final.state == "Success" and final.attempts == 2
            before_objects = listing(s3, "frozen/")
            (before_row,) = await rows(cluster.dsn, "SELECT doc, lease_owner, attempt FROM jobs WHERE id = $1", job.id)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        await asyncio.sleep(4)  # its renewals fail, its writes match no row, its puts are refused
        assert listing(s3, "frozen/") == before_objects
        assert sorted(before_objects) == [f"frozen/{i:05d}.jpg" for i in range(1, 13)]
        (after_row,) = await rows(cluster.dsn, "SELECT doc, lease_owner, attempt FROM jobs WHERE id = $1", job.id)
        assert after_row == before_row and after_row["attempt"] == 2
        assert any("lease" in line and job.id in line for line in frozen.log)
        assert frozen.ended(job.id) == 0 and other.ended(job.id) == 1
        assert frozen.proc is not None and frozen.proc.returncode is None  # still serving
        async with SnapshotClient(f"127.0.0.1:{frozen.port}", timeout=10) as c3:
            assert await c3.health() == "SERVING"


async def test_pipeline_limits_pause_and_rate_limits_hold_cluster_wide(cluster: Cluster, s3: Any) -> None:
    replicas = await cluster.start(3, replica_jobs="2", max_ffmpeg_processes="2", rate_submit="50")
    clients = [SnapshotClient(f"127.0.0.1:{r.port}", timeout=30) for r in replicas]
    try:
        pipeline = await clients[0].add_pipeline("limited", max_concurrent_jobs=2)
        ids = [(await clients[n % 3].submit(job_request(f"lim{n}", 2, pipeline.id))).snapshot_job.id for n in range(8)]
        peak = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                (r,) = await rows(
                    cluster.dsn,
                    "SELECT count(*) AS n FROM jobs WHERE pipeline_id = $1 AND state = 'Snapshoting'",
                    pipeline.id,
                )
                peak = max(peak, r["n"])
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        await clients[1].wait(ids[0], timeout=120)
        await clients[1].update_pipeline(pipeline.id, name="limited", state="Paused")

        async def drained() -> bool:
            (r,) = await rows(
                cluster.dsn,
                "SELECT count(*) AS n FROM jobs WHERE pipeline_id = $1 AND state = 'Snapshoting'",
                pipeline.id,
            )
            return bool(r["n"] == 0)

        await until(drained, 60)
        (waiting,) = await rows(cluster.dsn, "SELECT count(*) AS n FROM jobs WHERE state = 'Submitted'")
        await asyncio.sleep(2.5)  # paused on replica 1: no replica claims
        (still,) = await rows(cluster.dsn, "SELECT count(*) AS n FROM jobs WHERE state = 'Submitted'")
        assert still["n"] == waiting["n"] > 0
        await clients[2].update_pipeline(pipeline.id, name="limited", state="Active")
        finals = [await clients[0].wait(i, timeout=180) for i in ids]
        done.set()
        await sampler
        assert [f.state for f in finals] == ["Success"] * 8
        assert peak == 2  # MaxConcurrentJobs 2 across 3 replicas x 2 slots

        # Submit 50/s per principal for the whole cluster: hammer all three replicas with
        # invalid submits (admission counts them before validation) for 2 s.
        bad = sps.SubmitSnapshotJobRequest()
        admitted = throttled = 0
        start = time.monotonic()

        async def hammer(c: SnapshotClient) -> None:
            nonlocal admitted, throttled
            while time.monotonic() - start < 2.0:
                try:
                    await c.submit(bad)
                except ThrottlingError:
                    throttled += 1
                except MpsApiError:
                    admitted += 1

        await asyncio.sleep(1.1)  # the bucket refills after the submits above
        start = time.monotonic()
        await asyncio.gather(*(hammer(c) for c in clients for _ in range(2)))
        elapsed = time.monotonic() - start
        expected = 50 + 50 * elapsed
        print(f"rate limit: {admitted} admitted, {throttled} throttled in {elapsed:.2f} s; expected {expected:.0f}")
        assert throttled > 0
        assert abs(admitted - expected) <= 0.1 * expected
    finally:
        for c in clients:
            await c.close()


async def test_watch_and_cancel_across_replicas(cluster: Cluster, s3: Any) -> None:
    replicas = await cluster.start(2)
    async with (
        SnapshotClient(f"127.0.0.1:{replicas[0].port}", timeout=30) as a,
        SnapshotClient(f"127.0.0.1:{replicas[1].port}", timeout=30) as b,
    ):
        clients = {replicas[0].pid: a, replicas[1].pid: b}
        watched = (await a.submit(job_request("watched", 5))).snapshot_job

        async def owner_of(job_id: str) -> Replica:
            async def claimed() -> bool:
                (r,) = await rows(cluster.dsn, "SELECT lease_owner FROM jobs WHERE id = $1", job_id)
                return r["lease_owner"] is not None

            await until(claimed, 30)
            (r,) = await rows(cluster.dsn, "SELECT lease_owner FROM jobs WHERE id = $1", job_id)
            return cluster.owner_of(r["lease_owner"])

        runner = await owner_of(watched.id)
        observer = clients[next(r.pid for r in replicas if r is not runner)]
        events = [e async for e in observer.watch(watched.id, timeout=120)]
        states = [e.snapshot_job.state for e in events]
        assert states[-1] == "Success" and events[-1].snapshot_job.count == 5
        assert "Snapshoting" in states
        assert any(e.kind == sps.SnapshotJobEvent.KIND_IMAGE_WRITTEN for e in events)

        doomed = (await a.submit(job_request("doomed", 12))).snapshot_job
        runner = await owner_of(doomed.id)
        other = clients[next(r.pid for r in replicas if r is not runner)]

        async def decoding() -> bool:
            return bool(live_ffmpeg(str(runner.data_dir)))

        await until(decoding, 60, 0.01)
        started = time.monotonic()
        cancelled = await other.cancel(doomed.id)
        assert cancelled.state == "Cancelled"

        async def quiet() -> bool:
            return not live_ffmpeg(str(runner.data_dir))

        await until(quiet, 5, 0.01)
        took = time.monotonic() - started
        print(f"cancel across replicas: ffmpeg gone {took:.2f} s after the call")
        assert took < 2.0
        await asyncio.sleep(0.5)
        assert listing(s3, "doomed/") == {}  # what it had published is taken back


async def test_postgresql_lost_means_not_serving_and_nothing_claimed(cluster: Cluster) -> None:
    (replica,) = await cluster.start(1)
    async with SnapshotClient(f"127.0.0.1:{replica.port}", timeout=10) as c:
        assert await c.health() == "SERVING"
        admin = await asyncpg.connect(cluster.dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'DROP DATABASE "{cluster.dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()

        async def not_serving() -> bool:
            return await c.health() == "NOT_SERVING"

        await until(not_serving, 15, 0.5)
        assert replica.proc is not None and replica.proc.returncode is None


async def test_a_second_server_on_one_data_folder_refuses_to_start(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path)
    await first.start()
    try:
        env = {**os.environ, "MPS_SNAPSHOT_DATA_DIR": str(tmp_path), "MPS_SNAPSHOT_LISTEN": "127.0.0.1:0"}
        code, out = await run_child([sys.executable, "-m", "mps_snapshot_server"], env, 30)
        assert code == 1
        assert re.search(rf"another mps-snapshot server \(pid {first.proc.pid if first.proc else 0}\) is using", out)
    finally:
        await first.kill(signal.SIGTERM)
    await first.start()  # the lock went with the first process
    await first.kill(signal.SIGTERM)


async def test_several_replicas_refuse_local_storage(tmp_path: Path, dsn: str, config_file: Path) -> None:
    env = {
        **os.environ,
        "MPS_SNAPSHOT_DATA_DIR": str(tmp_path),
        "MPS_SNAPSHOT_LISTEN": "127.0.0.1:0",
        "MPS_SNAPSHOT_DATABASE_URL": dsn,
    }
    code, out = await run_child([sys.executable, "-m", "mps_snapshot_server"], env, 30)
    assert code == 1
    assert "route every Location to S3-compatible storage" in out.replace("Route", "route")
    env["MPS_SNAPSHOT_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none"
    code, out = await run_child([sys.executable, "-m", "mps_snapshot_server", "--config", str(config_file)], env, 30)
    assert code == 1 and "cannot connect to PostgreSQL" in out


async def test_client_tokens_and_nonces_hold_across_replicas(
    tmp_path: Path, dsn: str, config_file: Path, s3: Any
) -> None:
    key_id, secret = "AKIDREPLICATEST", "replica-secret"
    config = tmp_path / "signed.toml"
    base = config_file.read_text()  # noqa: ASYNC240 - a small file, once
    config.write_text(
        base
        + f'\n[[principals]]\nname = "alice"\naccess_key_id = "{key_id}"\naccess_key_hash = "{derive_key(secret)}"\n'
        + '[[principals.statements]]\neffect = "Allow"\nactions = ["*"]\nresources = ["*"]\n'
    )
    cluster = Cluster(tmp_path, dsn, config)
    try:
        replicas = await cluster.start(3)
        clients = [
            SnapshotClient(f"127.0.0.1:{r.port}", timeout=30, access_key_id=key_id, access_key_secret=secret)
            for r in replicas
        ]
        try:
            # The same ClientToken sent to three replicas at once: one job.
            same = job_request("token", 1)
            same.client_token = "retry-me-7"
            answers = await asyncio.gather(*(c.submit(same) for c in clients))
            assert len({a.snapshot_job.id for a in answers}) == 1
            (count,) = await rows(dsn, "SELECT count(*) AS n FROM jobs")
            assert count["n"] == 1
            # A signed call replayed to another replica (same nonce): refused.
            method = "/mps.snapshot.v1.SnapshotService/QuerySnapshotJobList"
            signed = signature_metadata(key_id, secret, method, nonce="once-only-nonce")
            bare = [SnapshotClient(f"127.0.0.1:{r.port}", timeout=10) for r in replicas[:2]]
            try:
                await bare[0].snapshots.QuerySnapshotJobList(sps.QuerySnapshotJobListRequest(), metadata=signed)
                with pytest.raises(grpc.aio.AioRpcError) as replay:
                    await bare[1].snapshots.QuerySnapshotJobList(sps.QuerySnapshotJobListRequest(), metadata=signed)
                assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "nonce was used before" in (replay.value.details() or "")
            finally:
                for c in bare:
                    await c.close()
        finally:
            for c in clients:
                await c.close()
    finally:
        await cluster.stop()
