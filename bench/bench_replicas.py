"""Scale-out benchmark (PostgreSQL mode), standalone:

    .venv/bin/python -m bench.bench_replicas [--jobs 24] [--rounds 2] [--claims 3000] [--write-doc]

1. Throughput of one fixed batch of small async jobs (a 320x240 clip, 3 images each) run by
   1 replica and by 2 replicas (each one ffmpeg slot, one job at a time), in the same run,
   rounds alternating (1, 2, 1, 2, ...) so machine load hits both alike. Replicas are real
   server processes sharing one PostgreSQL database and one moto S3 server; the batch is
   submitted round-robin over the replicas and timed from the first Submit to the last
   final state.
2. Claim throughput of one PostgreSQL: 8 workers (asyncio tasks, one connection each), and 1,
   claim Submitted jobs and write each one's fenced final state, with no media work at
   all (the engine is left out here only), jobs in 1 pipeline and spread over 8.

PostgreSQL: --database-url, else MPS_TEST_DATABASE_URL, else postgres@127.0.0.1:5432
(scripts/pg-test-cluster.sh start gives one). Each part uses a database of its own,
dropped afterwards. Everything listens on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import boto3
from botocore.config import Config

from mps_snapshot_client import SnapshotClient
from mps_snapshot_client.api import resources_pb2 as res
from mps_snapshot_client.api import snapshot_service_pb2 as sps
from mps_snapshot_server.domain.models import (
    Job,
    JobState,
    NotifyConfig,
    ObjectRef,
    Pipeline,
    PipelineState,
    SnapshotRequest,
)
from mps_snapshot_server.store.leases import current_lease
from mps_snapshot_server.store.postgres import PostgresStore

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:replicas -->", "<!-- /bench:replicas -->"
BUCKET = "bench"
TIMEOUT_S = 600


def base_dsn(given: str) -> str:
    return given or os.environ.get("MPS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.asynccontextmanager
async def database(dsn: str) -> AsyncIterator[str]:
    name = "mps_bench_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(dsn, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(dsn)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(dsn, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Moto:
    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "moto.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if m := re.search(r"Running on http://127\.0\.0\.1:(\d+)", self.log.read_text(errors="replace")):
                self.endpoint = f"http://127.0.0.1:{m.group(1)}"
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("moto did not start")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


class Replica:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "MPS_SNAPSHOT_DATA_DIR": str(self.data_dir),
            "MPS_SNAPSHOT_LISTEN": "127.0.0.1:0",
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mps_snapshot_server",
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("replica exited before listening")
                if m := re.search(r"\(port (\d+)\)", line):
                    self.port = int(m.group(1))
                    break
        self._drain = asyncio.create_task(self._drain_log())

    async def _drain_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


def make_clip(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4",
         "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip


def request(n: int) -> sps.SubmitSnapshotJobRequest:
    return sps.SubmitSnapshotJobRequest(
        input=res.OSSFile(bucket=BUCKET, location="oss-cn-hangzhou", object="clip.mp4"),
        snapshot_config=res.SnapshotConfig(
            output_file=res.OSSFile(bucket=BUCKET, location="oss-cn-hangzhou", object=f"b{n}/{{Count}}.jpg"),
            time=500,
            interval=1,
            num=3,
        ),
    )


async def batch_round(replica_count: int, jobs: int, dsn: str, work: Path, config: Path, rnd: int) -> float:
    """Seconds for the batch with ``replica_count`` replicas."""
    async with database(dsn) as url:
        env = {
            "MPS_SNAPSHOT_DATABASE_URL": url,
            "MPS_SNAPSHOT_CONFIG": str(config),
            "MPS_SNAPSHOT_MAX_FFMPEG_PROCESSES": "1",
            "MPS_SNAPSHOT_REPLICA_JOBS": "1",
            "MPS_SNAPSHOT_PIPELINE_MAX_CONCURRENT_JOBS": "64",
            "MPS_SNAPSHOT_RATE_SUBMIT": "0",
            "MPS_SNAPSHOT_SHUTDOWN_GRACE_S": "1",
        }
        replicas = [Replica(work / f"r{rnd}-{replica_count}-{n}", env) for n in range(replica_count)]
        await asyncio.gather(*(r.start() for r in replicas))
        clients = [SnapshotClient(f"127.0.0.1:{r.port}", timeout=60) for r in replicas]
        try:
            started = time.monotonic()
            ids = [(await clients[n % len(clients)].submit(request(n))).snapshot_job.id for n in range(jobs)]
            finals = await asyncio.gather(
                *(clients[n % len(clients)].wait(i, timeout=TIMEOUT_S) for n, i in enumerate(ids))
            )
            took = time.monotonic() - started
            bad = [f.state for f in finals if f.state != "Success"]
            if bad:
                raise RuntimeError(f"{len(bad)} jobs did not succeed: {bad[:3]}")
            return took
        finally:
            for c in clients:
                await c.close()
            await asyncio.gather(*(r.stop() for r in replicas))


def bench_job(n: int, pipeline_id: str) -> Job:
    return Job(
        id=f"claim{n:06d}",
        request=SnapshotRequest(input=ObjectRef(bucket="b", object="x.mp4")),
        state=JobState.SUBMITTED,
        creation_time=datetime.now(UTC),
        request_id="bench",
        pipeline_id=pipeline_id,
        is_async=True,
    )


async def claim_round(dsn: str, total: int, pipelines: int, workers: int = 8) -> float:
    """Claims per second (claim + fenced final write, no media work)."""
    async with database(dsn) as url:
        store = await PostgresStore.open(url, origin="bench", pool_size=workers + 2)
        try:
            ids = [f"p{k}" for k in range(pipelines)]
            for pid in ids:
                await store.put_pipeline(
                    Pipeline(
                        id=pid,
                        name=pid,
                        state=PipelineState.ACTIVE,
                        speed="Standard",
                        speed_level=0,
                        role="",
                        notify_config=NotifyConfig(),
                        max_concurrent_jobs=64,
                        queue_capacity=100_000,
                        creation_time=datetime.now(UTC),
                    )
                )
            for n in range(total):
                await store.insert_if_room(bench_job(n, ids[n % pipelines]), 100_000)
            done = 0

            async def worker() -> None:
                nonlocal done
                while True:
                    claim = await store.claim("bench", 30.0, 3)
                    if claim is None:
                        return
                    token = current_lease.set(claim.lease)
                    try:
                        await store.put_job(dataclasses.replace(claim.job, state=JobState.SUCCESS))
                    finally:
                        current_lease.reset(token)
                    done += 1

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(workers)))
            took = time.monotonic() - started
            if done != total:
                raise RuntimeError(f"claimed {done} of {total}")
            return total / took
        finally:
            await store.close()


@dataclasses.dataclass
class Result:
    jobs: int
    rounds: int
    one_s: float
    two_s: float
    claims: dict[int, float]
    claim_jobs: int
    bare: float
    single: float


async def bare_round(dsn: str, total: int, workers: int = 8) -> float:
    """The same PostgreSQL's rate of bare round trips (SELECT 1), 8 workers: the yardstick."""
    async with database(dsn) as url:
        store = await PostgresStore.open(url, origin="bench", pool_size=workers + 2)
        try:
            left = total

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await store.ping()

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(workers)))
            return total / (time.monotonic() - started)
        finally:
            await store.close()


async def run(args: argparse.Namespace) -> Result:
    dsn = base_dsn(args.database_url)
    with tempfile.TemporaryDirectory(prefix="mps-bench-replicas-") as tmp:
        work = Path(tmp)
        clip = work / "clip.mp4"
        make_clip(clip)
        moto = Moto(work)
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=moto.endpoint,
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}),
            )
            s3.create_bucket(Bucket=BUCKET)
            s3.upload_file(str(clip), BUCKET, "clip.mp4")
            config = work / "replica.toml"
            config.write_text(
                f'[[storage]]\nlocation = "*"\nkind = "s3"\nendpoint_url = "{moto.endpoint}"\n'
                'access_key_id = "bench"\nsecret_access_key = "bench"\n'
            )
            times: dict[int, list[float]] = {1: [], 2: []}
            for rnd in range(args.rounds):
                for count in (1, 2):
                    took = await batch_round(count, args.jobs, dsn, work, config, rnd)
                    times[count].append(took)
                    print(f"round {rnd + 1}: {count} replica(s): {args.jobs} jobs in {took:.2f} s", flush=True)
        finally:
            moto.stop()
    claims: dict[int, float] = {}
    for pipelines in (1, 8):
        rates = [await claim_round(dsn, args.claims, pipelines) for _ in range(args.rounds)]
        claims[pipelines] = statistics.median(rates)
        print(f"claims/s, 8 workers, {pipelines} pipeline(s): {', '.join(f'{r:.0f}' for r in rates)}", flush=True)
    single = statistics.median([await claim_round(dsn, args.claims // 2, 1, workers=1) for _ in range(args.rounds)])
    print(f"claims/s, 1 worker: {single:.0f}", flush=True)
    bare = statistics.median([await bare_round(dsn, args.claims) for _ in range(args.rounds)])
    print(f"bare round trips/s, 8 workers: {bare:.0f}", flush=True)
    return Result(
        args.jobs,
        args.rounds,
        statistics.median(times[1]),
        statistics.median(times[2]),
        claims,
        args.claims,
        bare,
        single,
    )


def doc_section(r: Result) -> str:
    claims, jobs, one, two = r.claims, r.jobs, r.one_s, r.two_s
    return "\n".join(
        [
            BEGIN,
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores (load average "
            f"{os.getloadavg()[0]:.1f} at the end), medians of {r.rounds} alternating rounds; "
            "`python -m bench.bench_replicas`.",
            "",
            "| Setup | Batch time | Jobs/s | vs 1 replica |",
            "|---|---|---|---|",
            f"| 1 replica, 1 ffmpeg slot | {one:.2f} s | {jobs / one:.2f} | 1.00x |",
            f"| 2 replicas, 1 slot each | {two:.2f} s | {jobs / two:.2f} | {one / two:.2f}x |",
            "",
            f"Claim throughput of one PostgreSQL, {r.claim_jobs} no-op jobs (claim + fenced final write):",
            "",
            "| Workers, jobs spread over | Claims/s |",
            "|---|---|",
            f"| 8 workers, 1 pipeline | {claims[1]:.0f} |",
            f"| 8 workers, 8 pipelines | {claims[8]:.0f} |",
            f"| 1 worker, 1 pipeline | {r.single:.0f} |",
            f"| (yardstick: bare `SELECT 1` round trips) | {r.bare:.0f} |",
            END,
        ]
    )


def write_doc(section: str) -> None:
    text = DOC.read_text()
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Several replicas (PostgreSQL mode)\n\n" + section + "\n"
    DOC.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--jobs", type=int, default=24, help="jobs in the batch (default 24)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each setup (default 2)")
    p.add_argument("--claims", type=int, default=3000, help="no-op jobs in the claim benchmark (default 3000)")
    p.add_argument("--database-url", default="", help="PostgreSQL DSN of a database that may create databases")
    p.add_argument("--write-doc", action="store_true", help="write the figures into docs/performance.md")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    section = doc_section(result)
    print(section)
    if args.write_doc:
        write_doc(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
