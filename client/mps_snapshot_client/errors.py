"""Typed errors for callers: the MPS code from google.rpc.ErrorInfo, not just a status."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class MpsApiError(Exception):
    """A failed call. ``code`` is the MPS error code (``InvalidParameter.ResourceNotFound``)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: grpc.StatusCode,
        *,
        request_id: str = "",
        violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
        job_id: str = "",
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.violations = violations
        self.retry_delay = retry_delay
        #: The job recorded for a failed synchronous snapshot, if any.
        self.job_id = job_id


class InvalidParameterError(MpsApiError):
    """A request field is invalid (INVALID_ARGUMENT)."""


class ResourceNotFoundError(MpsApiError):
    """The input, a bucket, pipeline or job does not exist (NOT_FOUND)."""


class ResourceContentBadError(InvalidParameterError):
    """The input is not a usable video, or the time is past its end."""


class SnapshotTimeOutError(MpsApiError):
    """A synchronous snapshot ran out of time (DEADLINE_EXCEEDED)."""


class ThrottlingError(MpsApiError):
    """A rate limit or queue capacity was hit (RESOURCE_EXHAUSTED); see ``retry_delay``."""


class IncorrectStateError(MpsApiError):
    """The job or pipeline is in a state that does not allow the call (FAILED_PRECONDITION)."""


class PermissionDeniedError(MpsApiError):
    """Access was refused (PERMISSION_DENIED / UNAUTHENTICATED)."""


class UnavailableError(MpsApiError):
    """The server is unavailable or shutting down; retry."""


def _class_for(code: str, status: grpc.StatusCode) -> type[MpsApiError]:
    if code == "InvalidParameter.ResourceContentBad":
        return ResourceContentBadError
    if code == "InvalidParameter.ResourceNotFound" or status == grpc.StatusCode.NOT_FOUND:
        return ResourceNotFoundError
    if code.startswith("InvalidParameter") or status == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidParameterError
    if code == "SnapshotTimeOut" or status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SnapshotTimeOutError
    if code.startswith("Throttling") or status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ThrottlingError
    if status == grpc.StatusCode.FAILED_PRECONDITION:
        return IncorrectStateError
    if status in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDeniedError
    if status == grpc.StatusCode.UNAVAILABLE:
        return UnavailableError
    return MpsApiError


def from_rpc_error(err: grpc.aio.AioRpcError) -> MpsApiError:
    """Decode the rich status in the trailers into a typed error."""
    status = err.code()
    code = {
        grpc.StatusCode.DEADLINE_EXCEEDED: "SnapshotTimeOut",
        grpc.StatusCode.UNAVAILABLE: "ServiceUnavailable",
    }.get(status, "InternalError")
    request_id = ""
    job_id = ""
    violations: list[FieldViolation] = []
    retry: float | None = None
    for key, value in err.trailing_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            request_id = value
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            rich = status_pb2.Status.FromString(value)
            for detail in rich.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    code = info.reason
                    request_id = info.metadata.get("requestId", request_id)
                    job_id = info.metadata.get("jobId", "")
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info_r = error_details_pb2.RetryInfo()
                    detail.Unpack(info_r)
                    retry = info_r.retry_delay.ToNanoseconds() / 1e9
    cls = _class_for(code, status)
    return cls(
        code,
        err.details() or status.name,
        status,
        request_id=request_id,
        violations=tuple(violations),
        retry_delay=retry,
        job_id=job_id,
    )
