"""The job ledger: every job change is committed to the job store, then published to its
watchers, in that order, so a watcher never sees a change the store could lose."""

from __future__ import annotations

from collections.abc import Callable

from mps_snapshot_server.domain.models import Job, JobEventKind
from mps_snapshot_server.store.base import Store
from mps_snapshot_server.store.events import JobEvents


class JobLedger:
    def __init__(self, store: Store, events: JobEvents | None = None) -> None:
        self.store = store
        self.events = events or JobEvents()
        #: Told of every committed change (metrics count final states here).
        self.saved_listeners: list[Callable[[Job], None]] = []

    async def save(self, job: Job, kind: JobEventKind = JobEventKind.STATE) -> Job:
        """Commit a job change, then tell its watchers."""
        await self.store.put_job(job)
        self.events.publish(kind, job)
        for listener in self.saved_listeners:
            listener(job)
        return job

    def publish(self, kind: JobEventKind, job: Job) -> None:
        """Tell watchers of progress not committed yet (committed at most once a second)."""
        self.events.publish(kind, job)

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get_job(job_id)
