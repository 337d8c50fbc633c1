"""Errors of the snapshot domain, each carrying its MPS error code.

The transport maps ``code`` to a gRPC status in one table (server/mps_snapshot_server/rpc/errors.py); the
same codes end up in a failed job's Code/Message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    """Every fixed MPS error code the service answers with, once (rpc/errors.py maps each
    to a gRPC status; docs/errors.md lists them). Codes made per parameter, such as
    ``MissingParameter.<Name>`` of the HTTP endpoint, belong to a family the table maps by
    its prefix."""

    FORBIDDEN_RAM = "Forbidden.RAM"
    IDEMPOTENT_PARAMETER_MISMATCH = "IdempotentParameterMismatch"
    INCOMPLETE_SIGNATURE = "IncompleteSignature"
    INCORRECT_JOB_STATE = "IncorrectJobState"
    INCORRECT_PIPELINE_STATE = "IncorrectPipelineState"
    INTERNAL_ERROR = "InternalError"
    INTERNAL_ERROR_PROCESS_KILLED = "InternalError.ProcessKilled"
    INVALID_ACCESS_KEY_ID_INACTIVE = "InvalidAccessKeyId.Inactive"
    INVALID_ACCESS_KEY_ID_NOT_FOUND = "InvalidAccessKeyId.NotFound"
    INVALID_ACTION_NOT_FOUND = "InvalidAction.NotFound"
    INVALID_PARAMETER = "InvalidParameter"
    INVALID_PARAMETER_BUCKET_NAME_INVALID = "InvalidParameter.BucketNameInvalid"
    INVALID_PARAMETER_CONTENT_TYPE = "InvalidParameter.ContentType"
    INVALID_PARAMETER_DUPLICATE = "InvalidParameter.Duplicate"
    INVALID_PARAMETER_ENCODING = "InvalidParameter.Encoding"
    INVALID_PARAMETER_FORMAT = "InvalidParameter.Format"
    INVALID_PARAMETER_JSON_FORMAT_INVALID = "InvalidParameter.JsonFormatInvalid"
    INVALID_PARAMETER_LOCATION_INVALID = "InvalidParameter.LocationInvalid"
    INVALID_PARAMETER_NULL_VALUE = "InvalidParameter.NullValue"
    INVALID_PARAMETER_OBJECT_KEY_INVALID = "InvalidParameter.ObjectKeyInvalid"
    INVALID_PARAMETER_OUT_OF_RANGE = "InvalidParameter.OutOfRange"
    INVALID_PARAMETER_RESOURCE_CONTENT_BAD = "InvalidParameter.ResourceContentBad"
    INVALID_PARAMETER_RESOURCE_NOT_FOUND = "InvalidParameter.ResourceNotFound"
    INVALID_PARAMETER_TIME_ARRAY = "InvalidParameter.TimeArray"
    INVALID_PARAMETER_TOO_LARGE = "InvalidParameter.TooLarge"
    INVALID_PARAMETER_TOO_MANY = "InvalidParameter.TooMany"
    INVALID_PARAMETER_UNKNOWN_PARAMETER = "InvalidParameter.UnknownParameter"
    INVALID_PARAMETER_VALUE = "InvalidParameter.Value"
    INVALID_TIME_STAMP_EXPIRED = "InvalidTimeStamp.Expired"
    INVALID_TIME_STAMP_FORMAT = "InvalidTimeStamp.Format"
    INVALID_VERSION = "InvalidVersion"
    MISSING_ACCESS_KEY_ID = "MissingAccessKeyId"
    PERMISSION_DENIED_RESOURCE_ACCESS = "PermissionDenied.ResourceAccess"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    SERVICE_UNAVAILABLE_DISK_FULL = "ServiceUnavailable.DiskFull"
    SERVICE_UNAVAILABLE_JOB_STORE = "ServiceUnavailable.JobStore"
    SIGNATURE_DOES_NOT_MATCH = "SignatureDoesNotMatch"
    SIGNATURE_NONCE_USED = "SignatureNonceUsed"
    SNAPSHOT_TIME_OUT = "SnapshotTimeOut"
    THROTTLING_CONCURRENCY = "Throttling.Concurrency"
    THROTTLING_PIPELINE_QUEUE_FULL = "Throttling.PipelineQueueFull"
    THROTTLING_USER = "Throttling.User"
    THROTTLING_WATCH_STREAMS = "Throttling.WatchStreams"
    TRANSIENT_NET_WORK_ERROR = "TransientNetWorkError"
    UNSUPPORTED_HTTP_METHOD = "UnsupportedHTTPMethod"


@dataclass(frozen=True)
class FieldViolation:
    """A request field at fault, named by its proto path (``snapshot_config.width``)."""

    field: str
    description: str


class MpsError(Exception):
    """An error with an MPS code and a message that tells the caller what to fix."""

    code: str = ErrorCode.INTERNAL_ERROR

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
    code: str = ErrorCode.INVALID_PARAMETER

    @classmethod
    def field(cls, field: str, description: str, *, code: str | None = None) -> InvalidParameter:
        return cls(description, code=code, violations=(FieldViolation(field, description),))


class ResourceNotFound(MpsError):
    code: str = ErrorCode.INVALID_PARAMETER_RESOURCE_NOT_FOUND


class ResourceContentBad(MpsError):
    code: str = ErrorCode.INVALID_PARAMETER_RESOURCE_CONTENT_BAD


class SnapshotTimeOut(MpsError):
    code: str = ErrorCode.SNAPSHOT_TIME_OUT


class InvalidState(MpsError):
    """The resource is in a state that does not allow the call (e.g. cancelling a finished job)."""

    code: str = ErrorCode.INCORRECT_JOB_STATE


class QueueFull(MpsError):
    code: str = ErrorCode.THROTTLING_PIPELINE_QUEUE_FULL


class ServiceFault(MpsError):
    """The service's own fault, not the request's: retrying later can succeed. Async jobs
    that hit one are retried with backoff (up to max_attempts); sync calls return it."""

    code: str = ErrorCode.INTERNAL_ERROR


class ServiceUnavailable(ServiceFault):
    code: str = ErrorCode.SERVICE_UNAVAILABLE


class DiskFull(ServiceFault):
    """The server's own disk (work folders, embedded storage, job store) is full."""

    code: str = ErrorCode.SERVICE_UNAVAILABLE_DISK_FULL


class StoreUnavailable(ServiceFault):
    """The job store cannot be written (disk full, I/O error, locked)."""

    code: str = ErrorCode.SERVICE_UNAVAILABLE_JOB_STORE


class ProcessKilled(ServiceFault):
    """ffmpeg/ffprobe was killed by a resource limit (CPU time) or the kernel (out of memory)."""

    code: str = ErrorCode.INTERNAL_ERROR_PROCESS_KILLED


class PermissionDenied(MpsError):
    code: str = ErrorCode.PERMISSION_DENIED_RESOURCE_ACCESS


class TransientError(ServiceFault):
    code: str = ErrorCode.TRANSIENT_NET_WORK_ERROR


class InternalError(MpsError):
    code: str = ErrorCode.INTERNAL_ERROR


class IdempotentParameterMismatch(MpsError):
    """A ClientToken reused with a different request."""

    code: str = ErrorCode.IDEMPOTENT_PARAMETER_MISMATCH


class Unauthenticated(MpsError):
    """The caller could not be identified (UNAUTHENTICATED)."""

    code: str = ErrorCode.INVALID_ACCESS_KEY_ID_NOT_FOUND


class Forbidden(MpsError):
    """The caller's policies do not allow the action (PERMISSION_DENIED)."""

    code: str = ErrorCode.FORBIDDEN_RAM


class Throttled(MpsError):
    code: str = ErrorCode.THROTTLING_USER
