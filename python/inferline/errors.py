"""Errors raised by inferline, each carrying its gRPC status and HTTP status.

The native core reports failures as a status code (gRPC numbering) and a
message naming the model, version and field at fault; ``from_status`` turns
them into the matching class below. Frontends map errors through
``grpc_code`` / ``http_status`` in one place.
"""

from __future__ import annotations


class InferlineError(Exception):
    """Base class: an error with a gRPC status code name and an HTTP status."""

    grpc_code = "UNKNOWN"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Cancelled(InferlineError):
    grpc_code = "CANCELLED"
    http_status = 499


class InvalidArgument(InferlineError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class DeadlineExceeded(InferlineError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class ModelNotFound(InferlineError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(InferlineError):
    grpc_code = "ALREADY_EXISTS"
    http_status = 409


class ResourceExhausted(InferlineError):
    """The model's queue is full; retry later. The frontends answer it as UNAVAILABLE / 503 (retryable)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 503


class FailedPrecondition(InferlineError):
    grpc_code = "FAILED_PRECONDITION"
    http_status = 400


class Unimplemented(InferlineError):
    grpc_code = "UNIMPLEMENTED"
    http_status = 501


class InternalError(InferlineError):
    grpc_code = "INTERNAL"
    http_status = 500


class Unauthenticated(InferlineError):
    """A state-changing call without the admin bearer token."""

    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(InferlineError):
    """A control call the server's configuration does not allow for anyone (e.g. no admin token set)."""

    grpc_code = "PERMISSION_DENIED"
    http_status = 403


class Unavailable(InferlineError):
    grpc_code = "UNAVAILABLE"
    http_status = 503


class LoadDeferred(Unavailable):
    """A version cannot take traffic yet, and is no failure (a gateway's version whose pool has no
    replica yet): the model manager tries it again at its next poll."""


# gRPC numeric codes -> classes (the core's StatusCode uses the same numbers).
_BY_CODE = {
    1: Cancelled,
    2: InferlineError,
    3: InvalidArgument,
    4: DeadlineExceeded,
    5: ModelNotFound,
    6: AlreadyExists,
    7: PermissionDenied,
    8: ResourceExhausted,
    9: FailedPrecondition,
    12: Unimplemented,
    13: InternalError,
    14: Unavailable,
    16: Unauthenticated,
}


def from_status(code: int, message: str) -> InferlineError:
    """The exception for a non-OK core status."""
    return _BY_CODE.get(code, InferlineError)(message)


def from_core_error(e) -> InferlineError:
    """The exception for a ``_core.CoreError``, the one type the native binding raises
    (it carries ``code`` and ``message``; the binding does not import this module)."""
    return from_status(e.code, e.message)
