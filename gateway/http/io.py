"""HTTP bytes in and out, shared by the Ollama and OpenAI routes.

Bodies are read with a size limit (413 before reading when `Content-Length` says so) and decoded by a
msgspec decoder, so a wrong type fails with its JSON path. Every error goes through the one code → status
table and carries `X-Iris-Error: <code>`; 429 and 503 carry `Retry-After` in whole seconds. An answer is
streamed by `AnswerStream`, which cancels the request the moment the client disconnects.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.forwarding import until_disconnect
from schemas.errors import Cancelled, ErrorCode, InvalidRequest, IrisError, PayloadTooLarge

T = TypeVar("T")
ERROR_HEADER = "X-Iris-Error"
_json = msgspec.json.Encoder()


class ApiFamily(enum.StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    IRIS = "iris"


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status, headers, media_type="application/json")


def retry_after_header(exc: IrisError) -> dict[str, str]:
    if exc.http_status not in (429, 503):
        return {}
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s or 1.0)))}


def error_body(family: ApiFamily, exc: IrisError) -> dict[str, Any]:
    if family is ApiFamily.OPENAI:
        kind = OPENAI_ERROR_TYPES.get(exc.http_status, "server_error")
        return {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code.value}}
    if family is ApiFamily.IRIS:
        return {"error": {"code": exc.code.value, "message": exc.message, "retry_after_s": exc.retry_after_s}}
    return {"error": exc.message}


def error_response(family: ApiFamily, exc: IrisError) -> Response:
    headers = {ERROR_HEADER: exc.code.value, **retry_after_header(exc)}
    return json_response(error_body(family, exc), exc.http_status, headers)


async def read_json(request: Request, decoder: msgspec.json.Decoder[T], max_bytes: int) -> T:
    """The body decoded by `decoder`; `InvalidRequest` names what was wrong, `PayloadTooLarge` the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    if not body.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None


class AnswerStream(Response):
    """A streamed answer that is cancelled (and its Iris request with it) when the client disconnects."""

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        media_type: str,
        on_disconnect: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.on_disconnect = on_disconnect
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await until_disconnect(receive, self._pump(send))
        except Cancelled:
            self.on_disconnect()
        finally:
            await self.body_iterator.aclose()

    async def _pump(self, send: Send) -> None:
        async for part in self.body_iterator:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def ensure_error(exc: Exception) -> IrisError:
    return exc if isinstance(exc, IrisError) else IrisError.from_wire(ErrorCode.INTERNAL, f"internal error: {exc}")
