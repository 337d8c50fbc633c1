"""Errors of the snapshot domain, each carrying its MPS error code.

The transport maps ``code`` to a gRPC status in one table (server/mps_snapshot_server/rpc/errors.py); the
same codes end up in a failed job's Code/Message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """A request field at fault, named by its proto path (``snapshot_config.width``)."""

    field: str
    description: str


class MpsError(Exception):
    """An error with an MPS code and a message that tells the caller what to fix."""

    code = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        violations: tuple[FieldViolation, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.violations = violations
        self.retry_after = retry_after
        #: The job the error was recorded on, when one was (a failed sync snapshot).
        self.job_id = ""


class InvalidParameter(MpsError):
    code = "InvalidParameter"

    @classmethod
    def field(cls, field: str, description: str, *, code: str | None = None) -> InvalidParameter:
        return cls(description, code=code, violations=(FieldViolation(field, description),))


class ResourceNotFound(MpsError):
    code = "InvalidParameter.ResourceNotFound"


class ResourceContentBad(MpsError):
    code = "InvalidParameter.ResourceContentBad"


class SnapshotTimeOut(MpsError):
    code = "SnapshotTimeOut"


class InvalidState(MpsError):
    """The resource is in a state that does not allow the call (e.g. cancelling a finished job)."""

    code = "IncorrectJobState"


class QueueFull(MpsError):
    code = "Throttling.PipelineQueueFull"


class ServiceFault(MpsError):
    """The service's own fault, not the request's: retrying later can succeed. Async jobs
    that hit one are retried with backoff (up to max_attempts); sync calls return it."""

    code = "InternalError"


class ServiceUnavailable(ServiceFault):
    code = "ServiceUnavailable"


class DiskFull(ServiceFault):
    """The server's own disk (work folders, embedded storage, job store) is full."""

    code = "ServiceUnavailable.DiskFull"


class StoreUnavailable(ServiceFault):
    """The job store cannot be written (disk full, I/O error, locked)."""

    code = "ServiceUnavailable.JobStore"


class ProcessKilled(ServiceFault):
    """ffmpeg/ffprobe was killed by a resource limit (CPU time) or the kernel (out of memory)."""

    code = "InternalError.ProcessKilled"


class PermissionDenied(MpsError):
    code = "PermissionDenied.ResourceAccess"


class TransientError(ServiceFault):
    code = "TransientNetWorkError"


class InternalError(MpsError):
    code = "InternalError"


class IdempotentParameterMismatch(MpsError):
    """A ClientToken reused with a different request."""

    code = "IdempotentParameterMismatch"


class Unauthenticated(MpsError):
    """The caller could not be identified (UNAUTHENTICATED)."""

    code = "InvalidAccessKeyId.NotFound"


class Forbidden(MpsError):
    """The caller's policies do not allow the action (PERMISSION_DENIED)."""

    code = "Forbidden.RAM"


class Throttled(MpsError):
    code = "Throttling.User"
