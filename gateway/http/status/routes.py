"""The status page's routes: the page (`/status`), its script, style and icon (`/status/static/<name>`),
its event stream (`/status/events`, server-sent events) and one snapshot as JSON (`/status/snapshot`).

A page that sends no Authorization header of its own still gets a key through: where a key is needed the
page and its stream answer 401 with `WWW-Authenticate: Basic`, the browser asks for it once (any user
name, the API key as password) and sends it with the page's own requests; `Bearer <key>` works too, for
curl. The page loads nothing from anywhere but the gateway, and its Content-Security-Policy says so.
"""

from __future__ import annotations

import base64
import binascii
from importlib import resources

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.http.answer import Handler, HttpContext, endpoint
from gateway.http.io import AnswerStream, ApiFamily, json_response
from gateway.http.status.hub import StatusHub
from gateway.identity import KeyRing
from schemas.errors import Unauthorized

STATIC_TYPES = {
    "status.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}
CHALLENGE = {"WWW-Authenticate": 'Basic realm="Iris status", charset="UTF-8"'}


def static_file(name: str) -> bytes:
    return (resources.files("gateway.http.status") / "static" / name).read_bytes()


def check_key(keys: KeyRing, authorization: str | None) -> None:
    """Raise `Unauthorized` unless the caller may see the status: as for every other endpoint, a key where
    keys are required. Basic credentials carry the key as password (or as user name, `curl -u KEY:`)."""
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Basic credentials must be base64 of `user:key`") from None
        user, _, password = decoded.partition(":")
        authorization = f"Bearer {password or user}"
    keys.key_for(authorization)


def status_routes(ctx: HttpContext, hub: StatusHub) -> list[Route]:
    page = static_file("index.html")
    files = {name: static_file(name) for name in STATIC_TYPES}

    async def status_page(request: Request) -> Response:
        check_key(ctx.keys, request.headers.get("authorization"))
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def events(request: Request) -> Response:
        check_key(ctx.keys, request.headers.get("authorization"))
        return AnswerStream(hub.open_stream(), "text/event-stream", lambda: None, STREAM_HEADERS)

    async def snapshot(request: Request) -> Response:
        check_key(ctx.keys, request.headers.get("authorization"))
        return json_response(hub.snapshot(), headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return PlainTextResponse(f"no status file {name[:60]!r}", 404)
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(files[name], media_type=STATIC_TYPES[name], headers=headers)

    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        answer = endpoint(ctx, ApiFamily.IRIS, path)(handler)

        async def challenged(request: Request) -> Response:
            response = await answer(request)
            if response.status_code == 401:
                response.headers.update(CHALLENGE)  # so a browser asks for the key
            return response

        return Route(path, challenged, methods=methods)

    return [
        route("/status", status_page, ["GET", "HEAD"]),
        route("/status/events", events, ["GET"]),
        route("/status/snapshot", snapshot, ["GET"]),
        route("/status/static/{name}", static, ["GET", "HEAD"]),
    ]
