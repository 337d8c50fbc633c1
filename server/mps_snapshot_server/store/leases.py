"""Leases on claimed jobs (PostgreSQL mode).

A replica that claims a job holds a lease: an owner id, an attempt number (the fencing
token, raised by every claim) and an expiry kept in the database. The replica renews it
while the job runs. Every write of the job's state is conditional on owner + attempt + an
unexpired lease, so once the lease has passed to another replica the old owner's writes
match no row. Object puts are checked against the lease's local deadline, which is set
conservatively (measured from before the claim or renewal was sent, minus a margin), so
a replica frozen past its lease publishes nothing once it runs again.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

#: Part of the lease a replica trusts itself with: the rest absorbs clock drift and the
#: time between a check and the write it guards.
_TRUSTED_FRACTION = 0.8


class LeaseLost(BaseException):
    """This replica no longer owns the job: stop without writing or removing anything.

    A BaseException so the runner's "any failure" handling (which fails the job and
    removes its outputs) does not treat it as the job's failure: those outputs may by now
    belong to the job's new owner."""


@dataclass
class Lease:
    job_id: str
    owner: str
    attempt: int
    ttl_s: float
    valid_until: float = field(default=0.0)
    lost: bool = False

    def extend(self, sent_at: float) -> None:
        """Record a successful claim or renewal sent at monotonic time ``sent_at``."""
        self.valid_until = sent_at + self.ttl_s * _TRUSTED_FRACTION

    def check(self) -> None:
        if not self.lost and time.monotonic() >= self.valid_until:
            self.lost = True
        if self.lost:
            raise LeaseLost(f"lease on job {self.job_id} (attempt {self.attempt}) is lost")


#: The lease of the job the current task runs (set by the cluster scheduler in the job's
#: task, inherited by the tasks it starts); None outside a leased job.
current_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("current_lease", default=None)


def check_current() -> None:
    """Raise LeaseLost if the current task runs a leased job whose lease is gone."""
    lease = current_lease.get()
    if lease is not None:
        lease.check()
