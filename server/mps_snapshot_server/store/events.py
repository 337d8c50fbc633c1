"""In-process fan-out of job changes to WatchSnapshotJob streams."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from mps_snapshot_server.domain.models import Job, JobEventKind

# A watcher that falls this far behind is dropped rather than letting memory grow.
_QUEUE_LIMIT = 1000

#: What a watcher receives: a change, or None when it fell behind (it then reads the job).
Event = tuple[JobEventKind, Job] | None


class JobEvents:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)

    def subscribe(self, job_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(_QUEUE_LIMIT)
        self._watchers[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[Event]) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(queue)
            if not watchers:
                del self._watchers[job_id]

    def watching(self, job_id: str) -> bool:
        return job_id in self._watchers

    def watched(self) -> list[str]:
        return list(self._watchers)

    def publish(self, kind: JobEventKind, job: Job) -> None:
        for queue in list(self._watchers.get(job.id, ())):
            try:
                queue.put_nowait((kind, job))
            except asyncio.QueueFull:
                # The slow watcher gets a None: its stream ends with the job as stored.
                queue.get_nowait()
                queue.put_nowait(None)
