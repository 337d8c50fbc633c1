"""The one table from MPS error codes to gRPC status codes (and, derived from them, the
HTTP statuses of the MPS HTTP RPC endpoint), and the rich error status.

Entries ending in ".*" match every code with that prefix; exact entries win over
prefixes, longer prefixes over shorter. docs/errors.md is checked against this table
by a test.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mps_snapshot_server.domain.errors import MpsError

ERROR_DOMAIN = "mps-snapshot"

#: (MPS code or prefix pattern, gRPC status, when it happens)
ERROR_TABLE: tuple[tuple[str, grpc.StatusCode, str], ...] = (
    (
        "InvalidParameter.*",
        grpc.StatusCode.INVALID_ARGUMENT,
        "A request field is invalid; BadRequest names the fields and what to fix.",
    ),
    (
        "InvalidParameter.ResourceNotFound",
        grpc.StatusCode.NOT_FOUND,
        "The input object, its bucket, a pipeline or a job does not exist.",
    ),
    (
        "InvalidParameter.ResourceContentBad",
        grpc.StatusCode.INVALID_ARGUMENT,
        "The input is not a usable video, or the time is past its end (sync jobs; async jobs end Fail).",
    ),
    ("MissingParameter.*", grpc.StatusCode.INVALID_ARGUMENT, "A required field is missing."),
    (
        "SnapshotTimeOut",
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "A synchronous snapshot did not finish within the server limit or the caller's deadline.",
    ),
    (
        "IncorrectJobState",
        grpc.StatusCode.FAILED_PRECONDITION,
        "The job is in a state that does not allow the call (e.g. cancelling a finished job).",
    ),
    (
        "IncorrectPipelineState",
        grpc.StatusCode.FAILED_PRECONDITION,
        "The pipeline cannot be deleted: it is the default one or still has unfinished jobs.",
    ),
    (
        "IdempotentParameterMismatch",
        grpc.StatusCode.ALREADY_EXISTS,
        "A ClientToken was used before with a different request.",
    ),
    (
        "Throttling.*",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "A rate limit or a queue capacity was reached; RetryInfo says when to retry.",
    ),
    ("PermissionDenied.*", grpc.StatusCode.PERMISSION_DENIED, "Storage refused access to a bucket or object."),
    ("Forbidden.*", grpc.StatusCode.PERMISSION_DENIED, "The caller's policy does not allow the action."),
    ("InvalidAccessKeyId.*", grpc.StatusCode.UNAUTHENTICATED, "The access key is unknown."),
    (
        "InvalidAccessKeyId.Inactive",
        grpc.StatusCode.UNAUTHENTICATED,
        "HTTP RPC: the access key has no access_key_secret_file, which Alibaba Cloud signatures need.",
    ),
    (
        "MissingAccessKeyId",
        grpc.StatusCode.UNAUTHENTICATED,
        "Authentication is configured and the call has no credentials.",
    ),
    ("IncompleteSignature", grpc.StatusCode.UNAUTHENTICATED, "The credentials are malformed or incomplete."),
    ("SignatureDoesNotMatch", grpc.StatusCode.UNAUTHENTICATED, "The request signature or bearer secret is wrong."),
    ("InvalidTimeStamp.*", grpc.StatusCode.UNAUTHENTICATED, "The request timestamp is too far off."),
    ("SignatureNonceUsed", grpc.StatusCode.UNAUTHENTICATED, "The request nonce was used before."),
    ("ServiceUnavailable", grpc.StatusCode.UNAVAILABLE, "The server is shutting down; retry on another instance."),
    ("TransientNetWorkError", grpc.StatusCode.UNAVAILABLE, "Storage could not be reached; retry."),
    (
        "ServiceUnavailable.DiskFull",
        grpc.StatusCode.UNAVAILABLE,
        "The server's own disk is full (a service fault, not the input's); retry later or elsewhere.",
    ),
    (
        "ServiceUnavailable.JobStore",
        grpc.StatusCode.UNAVAILABLE,
        "The job store cannot record the job (disk full, I/O error); nothing was done; retry later.",
    ),
    ("InternalError", grpc.StatusCode.INTERNAL, "An unexpected error; the message carries only the request id."),
    (
        "InternalError.ProcessKilled",
        grpc.StatusCode.INTERNAL,
        "ffmpeg was killed by a resource limit (CPU time) or the kernel (out of memory); async jobs are retried.",
    ),
    (
        "InvalidAction.NotFound",
        grpc.StatusCode.UNIMPLEMENTED,
        "HTTP RPC: the Action (or the path) is not one this service implements.",
    ),
    ("InvalidVersion", grpc.StatusCode.INVALID_ARGUMENT, "HTTP RPC: Version is not 2014-06-18."),
    ("UnsupportedHTTPMethod", grpc.StatusCode.UNIMPLEMENTED, "HTTP RPC: a method other than GET or POST."),
)

#: The HTTP status of an error on the HTTP RPC endpoint follows its gRPC status, as MPS's
#: SDKs expect (they only tell 4xx from 5xx; a retry-after header makes throttling its own).
HTTP_BY_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ALREADY_EXISTS: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 400,
    grpc.StatusCode.UNIMPLEMENTED: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
}
#: Entries of ERROR_TABLE whose HTTP status differs from their gRPC status's (Alibaba Cloud's
#: common errors: an unknown AccessKeyId is 404).
HTTP_EXCEPTIONS: dict[str, int] = {"InvalidAccessKeyId.*": 404, "UnsupportedHTTPMethod": 405}


def _entry(code: str) -> tuple[str, grpc.StatusCode] | None:
    """The table entry (pattern, status) that governs ``code``."""
    best: tuple[int, str, grpc.StatusCode] | None = None
    for pattern, status, _ in ERROR_TABLE:
        if pattern == code:
            return pattern, status
        if pattern.endswith(".*"):
            prefix = pattern[:-2]
            if (code == prefix or code.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), pattern, status)
    return (best[1], best[2]) if best else None


def status_for(code: str) -> grpc.StatusCode:
    entry = _entry(code)
    return entry[1] if entry else grpc.StatusCode.INTERNAL


def http_status_for(code: str) -> int:
    """The HTTP status of ``code`` on the MPS HTTP RPC endpoint."""
    entry = _entry(code)
    if entry is None:
        return 500
    return HTTP_EXCEPTIONS.get(entry[0], HTTP_BY_GRPC.get(entry[1], 500))


def rich_status(error: MpsError, request_id: str) -> tuple[grpc.StatusCode, str, bytes]:
    """The status code, message and serialized google.rpc.Status for ``error``."""
    code = status_for(error.code)
    message = f"{error.message} (RequestId: {request_id})"
    status = status_pb2.Status(code=code.value[0], message=message)
    metadata = {"requestId": request_id}
    if error.job_id:
        metadata["jobId"] = error.job_id
    info = error_details_pb2.ErrorInfo(reason=error.code, domain=ERROR_DOMAIN, metadata=metadata)
    status.details.add().Pack(info)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    assert code_pb2.Code.Name(code.value[0])  # the two enums agree
    return code, message, status.SerializeToString()
