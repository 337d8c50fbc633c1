"""Jobs, pipelines and the cluster's shared state in PostgreSQL (several replicas).

Besides the JobStore/PipelineStore ports this store offers what replicas coordinate
through: claims with leases (``FOR UPDATE SKIP LOCKED``), fenced writes (see
server/mps_snapshot_server/store/leases.py), cluster-wide cancel requests, ClientToken locks, replay nonces,
rate-limit buckets and a NOTIFY channel that carries job, cancel and pipeline events.

The schema is created by numbered migrations run at start under an advisory lock, so
replicas starting together apply each migration once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import asyncpg

from mps_snapshot_server.domain.models import Job, JobState, Pipeline
from mps_snapshot_server.store import codec
from mps_snapshot_server.store.base import JobQuery, decode_page_token, encode_page_token, us
from mps_snapshot_server.store.leases import Lease, LeaseLost, current_lease

log = logging.getLogger(__name__)

CHANNEL = "mps_snapshot"
# Advisory lock keys (any constant unique to this application).
_MIGRATION_LOCK = 0x6D70_7373_6D69_6701
_STARTUP_LOCK = 0x6D70_7373_7374_6172

#: (version, SQL). Append only: a deployed migration is never edited.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            pipeline_id TEXT NOT NULL,
            state TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            doc TEXT NOT NULL,
            lease_owner TEXT,
            lease_expires TIMESTAMPTZ,
            attempt INTEGER NOT NULL DEFAULT 0,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE INDEX jobs_by_created ON jobs (created_us DESC, id DESC);
        CREATE INDEX jobs_by_state ON jobs (state, created_us DESC);
        CREATE INDEX jobs_by_pipeline ON jobs (pipeline_id, created_us DESC);
        CREATE INDEX jobs_open ON jobs (pipeline_id, created_us, id) WHERE state IN ('Submitted', 'Snapshoting');
        CREATE TABLE client_tokens (
            principal TEXT NOT NULL,
            token TEXT NOT NULL,
            digest TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_us BIGINT NOT NULL,
            PRIMARY KEY (principal, token)
        );
        CREATE TABLE pipelines (id TEXT PRIMARY KEY, created_us BIGINT NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE nonces (
            key_id TEXT NOT NULL, nonce TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL, PRIMARY KEY (key_id, nonce)
        );
        CREATE TABLE rate_buckets (
            principal TEXT NOT NULL,
            limit_class TEXT NOT NULL,
            tokens DOUBLE PRECISION NOT NULL,
            updated TIMESTAMPTZ NOT NULL,
            granted BOOLEAN NOT NULL,
            PRIMARY KEY (principal, limit_class)
        );
        """,
    ),
    (
        2,
        # The claim as one server-side statement. Per candidate pipeline (random order, so
        # none starves another): lock its row, which serialises claims of one pipeline so
        # two replicas never both take its last slot; skip it when Paused or already running
        # MaxConcurrentJobs jobs under a live lease anywhere; else take its oldest runnable
        # job with SKIP LOCKED, reset its progress, count the attempt (unless it is
        # exhausted: interrupted on each of its allowed attempts) and lease it.
        """
        CREATE FUNCTION mps_claim(p_owner TEXT, p_ttl DOUBLE PRECISION, p_max_attempts INTEGER,
                                  p_channel TEXT, p_origin TEXT)
        RETURNS TABLE (job_doc TEXT, job_attempt INTEGER, job_cancel BOOLEAN, job_exhausted BOOLEAN)
        LANGUAGE plpgsql AS $fn$
        DECLARE
            v_pid TEXT;
            v_pdoc JSONB;
            v_running BIGINT;
            v_id TEXT;
            v_doc JSONB;
            v_attempt INTEGER;
            v_cancel BOOLEAN;
            v_state TEXT;
            v_exhausted BOOLEAN;
        BEGIN
            FOR v_pid IN
                SELECT p.id FROM pipelines p
                WHERE EXISTS (
                    SELECT 1 FROM jobs j WHERE j.pipeline_id = p.id
                    AND (j.state = 'Submitted' OR (j.state = 'Snapshoting' AND j.lease_expires < now()))
                )
                ORDER BY random()
            LOOP
                SELECT p.doc::jsonb INTO v_pdoc FROM pipelines p WHERE p.id = v_pid FOR UPDATE;
                IF v_pdoc IS NOT NULL AND v_pdoc->>'state' <> 'Active' THEN
                    CONTINUE;
                END IF;
                SELECT count(*) INTO v_running FROM jobs j
                WHERE j.pipeline_id = v_pid AND j.state = 'Snapshoting' AND j.lease_expires >= now();
                IF v_running >= COALESCE((v_pdoc->>'max_concurrent_jobs')::INTEGER, 1) THEN
                    CONTINUE;
                END IF;
                SELECT j.id, j.doc::jsonb, j.attempt, j.cancel_requested, j.state
                INTO v_id, v_doc, v_attempt, v_cancel, v_state
                FROM jobs j
                WHERE j.pipeline_id = v_pid
                  AND (j.state = 'Submitted' OR (j.state = 'Snapshoting' AND j.lease_expires < now()))
                ORDER BY j.created_us, j.id LIMIT 1 FOR UPDATE SKIP LOCKED;
                IF v_id IS NULL THEN
                    CONTINUE;
                END IF;
                v_exhausted := v_state = 'Snapshoting' AND (v_doc->>'attempts')::INTEGER >= p_max_attempts;
                v_doc := v_doc || jsonb_build_object(
                    'state', 'Snapshoting',
                    'attempts', (v_doc->>'attempts')::INTEGER + CASE WHEN v_exhausted THEN 0 ELSE 1 END,
                    'images', '[]'::jsonb, 'sprites', '[]'::jsonb, 'count', 0, 'tile_count', 0);
                UPDATE jobs SET state = 'Snapshoting', doc = v_doc::text, lease_owner = p_owner,
                    attempt = v_attempt + 1, lease_expires = now() + make_interval(secs => p_ttl)
                WHERE id = v_id;
                PERFORM pg_notify(p_channel, 'job|' || p_origin || '|' || v_id);
                job_doc := v_doc::text;
                job_attempt := v_attempt + 1;
                job_cancel := v_cancel;
                job_exhausted := v_exhausted;
                RETURN NEXT;
                RETURN;
            END LOOP;
        END
        $fn$;
        """,
    ),
    (
        3,
        # Final jobs held for their notification (see claim_notifications): the sweep every
        # replica runs reads only these rows, however many finished jobs the table keeps.
        """
        CREATE INDEX jobs_notify_hold ON jobs (lease_expires)
        WHERE state IN ('Success', 'Fail') AND lease_expires IS NOT NULL;
        """,
    ),
]

_OPEN = ("Submitted", "Snapshoting")


@dataclasses.dataclass(frozen=True)
class Claim:
    """A job this replica now holds. ``exhausted``: it was interrupted on each of its
    allowed attempts (fail it); ``cancel_requested``: a Cancel arrived for it."""

    job: Job
    lease: Lease
    exhausted: bool
    cancel_requested: bool


class PostgresUnavailable(Exception):
    pass


class PostgresStore:
    def __init__(self, dsn: str, *, origin: str, pool: Any, lock_pool: Any) -> None:
        self.dsn = dsn
        #: How long the replica that ends a job holds the notification it owes before another
        #: replica may send it (set from the notification settings; see claim_notifications).
        self.notify_hold_s = 120.0
        #: This replica's id: NOTIFY payloads carry it so a replica skips its own events.
        self.origin = origin
        self._pool = pool
        self._lock_pool = lock_pool
        # Failed writes raise to the caller; losing PostgreSQL shows in ping (health).
        self.fault_listeners: list[Callable[[str], None]] = []

    @classmethod
    async def open(cls, dsn: str, *, origin: str, pool_size: int = 10, timeout_s: float = 10.0) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size, timeout=timeout_s)
            lock_pool = await asyncpg.create_pool(dsn, min_size=0, max_size=pool_size, timeout=timeout_s)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise PostgresUnavailable(f"cannot connect to PostgreSQL ({type(exc).__name__}: {exc})") from None
        store = cls(dsn, origin=origin, pool=pool, lock_pool=lock_pool)
        await store.migrate()
        return store

    async def migrate(self) -> None:
        async with self._pool.acquire() as c:
            await c.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await c.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                applied = {r[0] for r in await c.fetch("SELECT version FROM schema_migrations")}
                for version, sql in MIGRATIONS:
                    if version in applied:
                        continue
                    async with c.transaction():
                        await c.execute(sql)
                        await c.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    log.info("database schema migrated to version %d", version)
            finally:
                await c.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    @contextlib.asynccontextmanager
    async def startup_lock(self) -> AsyncIterator[None]:
        """Held while a replica seeds shared data (the default pipeline) at start."""
        async with self._lock_pool.acquire() as c:
            await c.execute("SELECT pg_advisory_lock($1)", _STARTUP_LOCK)
            try:
                yield
            finally:
                await c.execute("SELECT pg_advisory_unlock($1)", _STARTUP_LOCK)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(3):
                await self._pool.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def close(self) -> None:
        for pool in (self._pool, self._lock_pool):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await pool.close()

    def _payload(self, kind: str, ident: str) -> str:
        return f"{kind}|{self.origin}|{ident}"

    # Jobs

    async def put_job(self, job: Job) -> None:
        lease = current_lease.get()
        if lease is not None and lease.job_id == job.id:
            await self._put_fenced(job, lease)
            return
        # Unleased writes (submit, sync snapshots, notification results) never touch a job
        # a replica holds: that owner's fenced writes decide its state. Written final, a job
        # is held no longer (its notification's result is recorded).
        done = await self._pool.fetchval(
            "WITH w AS (INSERT INTO jobs (id, pipeline_id, state, created_us, doc) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, doc = excluded.doc, "
            "lease_expires = CASE WHEN excluded.state = ANY($8::text[]) THEN jobs.lease_expires ELSE NULL END "
            "WHERE NOT (jobs.state = 'Snapshoting' AND jobs.lease_expires IS NOT NULL) RETURNING id) "
            "SELECT pg_notify($6, $7) FROM w",
            job.id,
            job.pipeline_id,
            job.state.value,
            us(job.creation_time),
            codec.dumps(job),
            CHANNEL,
            self._payload("job", job.id),
            list(_OPEN),
        )
        if done is None:
            log.warning("job %s is held by a replica; an unleased write of it was dropped", job.id)

    async def _put_fenced(self, job: Job, lease: Lease) -> None:
        lease.check()
        # A final state ends the lease; when it owes a notification, the owner keeps holding
        # the row for the delivery window, after which another replica may send it
        # (claim_notifications): a replica that dies between its final commit and the
        # delivery does not lose the notification.
        row = await self._pool.fetchrow(
            "WITH w AS (UPDATE jobs SET state = $4, doc = $5, "
            "lease_expires = CASE WHEN $4 = ANY($6::text[]) THEN lease_expires "
            "WHEN $9 THEN now() + make_interval(secs => $10) ELSE NULL END "
            "WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND lease_expires > now() RETURNING id) "
            "SELECT pg_notify($7, $8) FROM w",
            job.id,
            lease.owner,
            lease.attempt,
            job.state.value,
            codec.dumps(job),
            list(_OPEN),
            CHANNEL,
            self._payload("job", job.id),
            job.notify_pending,
            self.notify_hold_s,
        )
        if row is None:
            lease.lost = True
            raise LeaseLost(f"job {job.id}: attempt {lease.attempt} no longer holds the lease; write refused")

    async def claim_notifications(self, owner: str, limit: int = 20) -> list[Job]:
        """Final jobs still owed a notification whose holder's window has passed (the replica
        that ended them died before delivering): this replica now holds them for a window
        of its own and sends them. A receiver may see a message twice (its MessageId is
        stable, so it can drop the repeat), never not at all."""
        rows = await self._pool.fetch(
            "UPDATE jobs SET lease_owner = $1, lease_expires = now() + make_interval(secs => $2) "
            "WHERE id IN (SELECT id FROM jobs WHERE state IN ('Success', 'Fail') "
            "AND lease_expires IS NOT NULL AND lease_expires < now() "
            "AND (doc::jsonb->>'notify_pending')::boolean "
            "ORDER BY created_us LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING doc",
            owner,
            self.notify_hold_s,
            limit,
        )
        return [codec.loads(Job, r[0]) for r in rows]

    async def get_jobs(self, ids: list[str]) -> dict[str, Job]:
        rows = await self._pool.fetch("SELECT doc FROM jobs WHERE id = ANY($1::text[])", ids)
        jobs = [codec.loads(Job, r[0]) for r in rows]
        return {j.id: j for j in jobs}

    async def get_job(self, job_id: str) -> Job | None:
        return (await self.get_jobs([job_id])).get(job_id)

    async def list_jobs(self, flt: JobQuery, page_size: int, token: str) -> tuple[list[Job], str]:
        where: list[str] = ["TRUE"]
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if flt.state:
            where.append(f"state = {arg(flt.state)}")
        if flt.pipeline_id:
            where.append(f"pipeline_id = {arg(flt.pipeline_id)}")
        if flt.created_from:
            where.append(f"created_us >= {arg(us(flt.created_from))}")
        if flt.created_to:
            where.append(f"created_us <= {arg(us(flt.created_to))}")
        if token:
            created, last_id = decode_page_token(token)
            where.append(f"(created_us, id) < ({arg(created)}, {arg(last_id)})")
        sql = (
            f"SELECT id, created_us, doc FROM jobs WHERE {' AND '.join(where)} "
            f"ORDER BY created_us DESC, id DESC LIMIT {arg(page_size + 1)}"
        )
        rows = await self._pool.fetch(sql, *args)
        more = len(rows) > page_size
        rows = rows[:page_size]
        next_token = encode_page_token(rows[-1][1], rows[-1][0]) if more and rows else ""
        return [codec.loads(Job, r[2]) for r in rows], next_token

    async def jobs_in_states(self, states: tuple[JobState, ...]) -> list[Job]:
        rows = await self._pool.fetch(
            "SELECT doc FROM jobs WHERE state = ANY($1::text[]) ORDER BY created_us, id", [s.value for s in states]
        )
        return [codec.loads(Job, r[0]) for r in rows]

    async def count_unfinished(self, pipeline_id: str) -> int:
        n = await self._pool.fetchval(
            "SELECT count(*) FROM jobs WHERE pipeline_id = $1 AND state = ANY($2::text[])", pipeline_id, list(_OPEN)
        )
        return int(n)

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        rows = await self._pool.fetch("SELECT state, pipeline_id, count(*) AS n FROM jobs GROUP BY state, pipeline_id")
        return {(str(r["state"]), str(r["pipeline_id"])): int(r["n"]) for r in rows}

    # Idempotency tokens

    async def get_token(self, principal: str, token: str, since: datetime) -> tuple[str, str] | None:
        row = await self._pool.fetchrow(
            "SELECT digest, job_id FROM client_tokens WHERE principal = $1 AND token = $2 AND created_us >= $3",
            principal,
            token,
            us(since),
        )
        return (str(row[0]), str(row[1])) if row else None

    async def put_token(
        self, principal: str, token: str, digest: str, job_id: str, now: datetime, expired_before: datetime
    ) -> None:
        async with self._pool.acquire() as c, c.transaction():
            await c.execute("DELETE FROM client_tokens WHERE created_us < $1", us(expired_before))
            await c.execute(
                "INSERT INTO client_tokens VALUES ($1, $2, $3, $4, $5) ON CONFLICT (principal, token) "
                "DO UPDATE SET digest = excluded.digest, job_id = excluded.job_id, created_us = excluded.created_us",
                principal,
                token,
                digest,
                job_id,
                us(now),
            )

    @contextlib.asynccontextmanager
    async def token_lock(self, principal: str, token: str) -> AsyncIterator[None]:
        # A session advisory lock on a connection of its own pool: held across the
        # check-then-submit, which uses the main pool, so the two never starve each other.
        key = f"client-token\n{principal}\n{token}"
        async with self._lock_pool.acquire() as c:
            await c.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            try:
                yield
            finally:
                await c.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)

    # Pipelines

    async def put_pipeline(self, pipeline: Pipeline) -> None:
        await self._pool.execute(
            "WITH w AS (INSERT INTO pipelines (id, created_us, doc) VALUES ($1, $2, $3) "
            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc RETURNING id) SELECT pg_notify($4, $5) FROM w",
            pipeline.id,
            us(pipeline.creation_time),
            codec.dumps(pipeline),
            CHANNEL,
            self._payload("pipeline", pipeline.id),
        )

    async def delete_pipeline(self, pipeline_id: str) -> None:
        await self._pool.execute(
            "WITH w AS (DELETE FROM pipelines WHERE id = $1 RETURNING id) SELECT pg_notify($2, $3) FROM w",
            pipeline_id,
            CHANNEL,
            self._payload("pipeline", pipeline_id),
        )

    async def list_pipelines(self) -> list[Pipeline]:
        rows = await self._pool.fetch("SELECT doc FROM pipelines ORDER BY created_us, id")
        return [codec.loads(Pipeline, r[0]) for r in rows]

    # Cluster coordination

    async def insert_if_room(self, job: Job, capacity: int) -> int | None:
        """Insert a Submitted job unless its pipeline already has ``capacity`` waiting;
        None when inserted, else the number waiting. The pipeline's row lock makes the
        count and the insert one step across replicas."""
        async with self._pool.acquire() as c, c.transaction():
            await c.execute("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE", job.pipeline_id)
            waiting = await c.fetchval(
                "SELECT count(*) FROM jobs WHERE pipeline_id = $1 AND state = 'Submitted'", job.pipeline_id
            )
            if waiting >= capacity:
                return int(waiting)
            await c.execute(
                "INSERT INTO jobs (id, pipeline_id, state, created_us, doc) VALUES ($1, $2, $3, $4, $5)",
                job.id,
                job.pipeline_id,
                job.state.value,
                us(job.creation_time),
                codec.dumps(job),
            )
            await c.execute("SELECT pg_notify($1, $2)", CHANNEL, self._payload("job", job.id))
        return None

    async def claim(self, owner: str, ttl_s: float, max_attempts: int) -> Claim | None:
        """Take the oldest runnable job of an Active pipeline below its MaxConcurrentJobs:
        a Submitted job, or a Snapshoting one whose lease expired (its replica died).
        One round trip: mps_claim (migration 2) holds the pipeline's row lock only for the
        statement's own time."""
        sent = time.monotonic()
        row = await self._pool.fetchrow(
            "SELECT * FROM mps_claim($1, $2, $3, $4, $5)", owner, ttl_s, max_attempts, CHANNEL, self.origin
        )
        if row is None:
            return None
        job = codec.loads(Job, row["job_doc"])
        lease = Lease(job_id=job.id, owner=owner, attempt=int(row["job_attempt"]), ttl_s=ttl_s)
        lease.extend(sent)
        return Claim(job, lease, bool(row["job_exhausted"]), bool(row["job_cancel"]))

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; returns whether a cancel was requested. Marks the lease lost
        when another attempt holds the job or it expired."""
        sent = time.monotonic()
        row = await self._pool.fetchrow(
            "UPDATE jobs SET lease_expires = now() + make_interval(secs => $4) WHERE id = $1 AND lease_owner = $2 "
            "AND attempt = $3 AND state = 'Snapshoting' AND lease_expires > now() RETURNING cancel_requested",
            lease.job_id,
            lease.owner,
            lease.attempt,
            lease.ttl_s,
        )
        if row is None:
            lease.lost = True
            return False
        lease.extend(sent)
        return bool(row[0])

    async def release(self, job: Job, lease: Lease) -> None:
        """Give a held job back as Submitted (shutdown), fenced like every owner write."""
        lease.check()
        await self._pool.execute(
            "WITH w AS (UPDATE jobs SET state = 'Submitted', doc = $4, lease_owner = NULL, lease_expires = NULL "
            "WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND lease_expires > now() RETURNING id) "
            "SELECT pg_notify($5, $6) FROM w",
            job.id,
            lease.owner,
            lease.attempt,
            codec.dumps(job),
            CHANNEL,
            self._payload("job", job.id),
        )

    async def request_cancel(self, job_id: str, cancelled: Callable[[Job], Job]) -> tuple[str, Job | None]:
        """Cancel a job wherever it is: ("cancelled", job) when done here (it was queued,
        or its owner's lease expired), ("requested", job) when a live owner was asked,
        ("sync", job) for a synchronous snapshot, ("finished", job), or ("missing", None)."""
        async with self._pool.acquire() as c, c.transaction():
            row = await c.fetchrow(
                "SELECT doc, lease_expires IS NULL AS unleased, lease_expires > now() AS live "
                "FROM jobs WHERE id = $1 FOR UPDATE",
                job_id,
            )
            if row is None:
                return "missing", None
            job = codec.loads(Job, row["doc"])
            if job.state.finished:
                return "finished", job
            if job.state is JobState.SNAPSHOTING and row["unleased"]:
                return "sync", job
            if job.state is JobState.SNAPSHOTING and row["live"]:
                await c.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1", job_id)
                await c.execute("SELECT pg_notify($1, $2)", CHANNEL, self._payload("cancel", job_id))
                return "requested", job
            final = cancelled(job)
            await c.execute(
                "UPDATE jobs SET state = $2, doc = $3, lease_expires = NULL WHERE id = $1",
                job_id,
                final.state.value,
                codec.dumps(final),
            )
            await c.execute("SELECT pg_notify($1, $2)", CHANNEL, self._payload("job", job_id))
            return "cancelled", final

    async def use_nonce(self, key_id: str, nonce: str, ttl_s: float) -> bool:
        """Record a signature nonce for ``ttl_s``; False if it is already in use."""
        if random.random() < 0.01:  # sweep now and then; expired rows are ignored anyway
            await self._pool.execute("DELETE FROM nonces WHERE expires < now()")
        row = await self._pool.fetchval(
            "INSERT INTO nonces (key_id, nonce, expires) VALUES ($1, $2, now() + make_interval(secs => $3)) "
            "ON CONFLICT (key_id, nonce) DO UPDATE SET expires = excluded.expires WHERE nonces.expires < now() "
            "RETURNING 1",
            key_id,
            nonce,
            ttl_s,
        )
        return row is not None

    async def take_token(self, principal: str, limit_class: str, rate: float, burst: float) -> float:
        """Take one token from the shared bucket; 0 if granted, else seconds to wait."""
        row = await self._pool.fetchrow(
            "INSERT INTO rate_buckets AS b (principal, limit_class, tokens, updated, granted) "
            "VALUES ($1, $2, $4 - 1, now(), TRUE) ON CONFLICT (principal, limit_class) DO UPDATE SET "
            "tokens = LEAST($4, b.tokens + EXTRACT(EPOCH FROM now() - b.updated) * $3) "
            "- CASE WHEN LEAST($4, b.tokens + EXTRACT(EPOCH FROM now() - b.updated) * $3) >= 1 THEN 1 ELSE 0 END, "
            "granted = LEAST($4, b.tokens + EXTRACT(EPOCH FROM now() - b.updated) * $3) >= 1, "
            "updated = now() RETURNING granted, tokens",
            principal,
            limit_class,
            rate,
            burst,
        )
        if row["granted"]:
            return 0.0
        return max(0.001, (1 - float(row["tokens"])) / rate)

    async def listen(self, on_event: Callable[[str, str], None], on_reconnect: Callable[[], None]) -> None:
        """Deliver other replicas' NOTIFY events as on_event(kind, id) until cancelled,
        reconnecting after a lost connection (then on_reconnect: events may be missed)."""
        delay = 0.5
        first = True
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)

                def handler(_c: object, _pid: int, _channel: str, payload: str) -> None:
                    kind, origin, ident = [*payload.split("|", 2), "", ""][:3]
                    if origin != self.origin:
                        on_event(kind, ident)

                await conn.add_listener(CHANNEL, handler)
                if not first:
                    on_reconnect()
                first = False
                delay = 0.5
                while not conn.is_closed():
                    await asyncio.sleep(1)
                    await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("PostgreSQL event listener lost its connection (%s); retrying", type(exc).__name__)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
