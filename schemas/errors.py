"""Error codes: one enum on the wire, one table to HTTP status, one exception class per code.

`Error{code, message, retry_after_s}` travels on the reply inbox; Python code raises and catches the
matching `IrisError` subclass, built from a wire error by `IrisError.from_wire`.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    MODEL_NOT_FOUND = "model_not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    DEADLINE_UNMEETABLE = "deadline_unmeetable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    WORKER_FAILED = "worker_failed"
    NO_CAPACITY = "no_capacity"
    INTERNAL = "internal"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.DEADLINE_UNMEETABLE: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.WORKER_FAILED: 502,
    ErrorCode.NO_CAPACITY: 503,
    ErrorCode.INTERNAL: 500,
}


class IrisError(Exception):
    """Base of every Iris failure a caller can see; `code` is the wire code."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @staticmethod
    def from_wire(code: ErrorCode, message: str, retry_after_s: float | None = None) -> IrisError:
        cls = _BY_CODE.get(code, InternalError)
        return cls(message, retry_after_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value}: {self.message})"


class InvalidRequest(IrisError):
    code = ErrorCode.INVALID_REQUEST


class DuplicateRequest(InvalidRequest):
    """An admission ticket id was already used inside the dedupe window (a request that reuses its key
    joins the first one instead: `runtime.exchange`)."""


class Unauthorized(IrisError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(IrisError):
    """The credentials are valid but do not allow this (a header asked for more than the key grants)."""

    code = ErrorCode.FORBIDDEN


class ModelNotFound(IrisError):
    code = ErrorCode.MODEL_NOT_FOUND


class PayloadTooLarge(IrisError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(IrisError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class QueueFull(IrisError):
    code = ErrorCode.QUEUE_FULL


class RateLimited(IrisError):
    """The API key used up its requests or tokens per minute; `retry_after_s` says when it may go on."""

    code = ErrorCode.RATE_LIMITED


class DeadlineUnmeetable(IrisError):
    code = ErrorCode.DEADLINE_UNMEETABLE


class DeadlineExceeded(IrisError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Cancelled(IrisError):
    code = ErrorCode.CANCELLED


class WorkerFailed(IrisError):
    code = ErrorCode.WORKER_FAILED


class NoCapacity(IrisError):
    code = ErrorCode.NO_CAPACITY


class InternalError(IrisError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[IrisError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ModelNotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        QueueFull,
        RateLimited,
        DeadlineUnmeetable,
        DeadlineExceeded,
        Cancelled,
        WorkerFailed,
        NoCapacity,
        InternalError,
    )
}
